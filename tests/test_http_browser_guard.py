"""Web pages cannot drive the server (issue 12, item 1): a Host that is not the server's own is 421 (DNS
rebinding), a state-changing request from another origin, or one a page could send without a CORS
preflight, is 403 and changes nothing; real clients, allowed origins and the browse page keep working.

Over real sockets (uvicorn on 127.0.0.1); the browser cases in a real headless Chromium, with an attacking
page served from a second origin on another loopback port.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from _hypothesis_budget import examples
from conftest import REBOUND_NAME
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

import microblob
from microblob import Blob, Thing, thing_action
from microblob.client import ThingClient
from microblob.http.server import ThingServer


class Counter(Thing):
    """An action whose every run is counted: a page that reached it leaves a trace."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    @thing_action
    def bump(self) -> int:
        self.calls += 1
        return self.calls


@dataclass
class Served:
    base: str
    port: int
    store: microblob.Store
    counter: Counter

    def raw(self, method: str, path: str, headers: dict[str, str] | None = None, content: bytes | None = None,
            host: str | None = None) -> httpx.Response:
        """One request with exactly these headers (and Host, when given) over a fresh connection."""
        with httpx.Client(timeout=30) as http:
            request = http.build_request(method, self.base.rstrip("/") + path, headers=headers, content=content)
            if host is not None:
                request.headers["Host"] = host
            return http.send(request)

    def unchanged(self) -> None:
        """Only the object the fixture stored, at version 0 with its bytes, and the action never ran."""
        assert [o.object_id for o in self.store.blob_object_query({})] == ["obj"]
        obj = self.store.get_blob_object("obj")
        assert (obj.version, obj.data) == (0, b"version 0")
        assert self.counter.calls == 0


@pytest.fixture
def served(tmp_path: Path, make_server: Any, live: Any) -> Iterator[Callable[..., Served]]:
    stores: list[microblob.Store] = []

    def make(**options: Any) -> Served:
        store = microblob.connect(tmp_path / f"store{len(stores)}.db")
        stores.append(store)
        store.save_or_update_object(b"version 0", object_id="obj")
        counter = Counter()
        base = live(make_server({"counter": counter}, store=store, **options))
        return Served(base, int(base.rsplit(":", 1)[1].rstrip("/")), store, counter)

    yield make
    for store in stores:
        store.close()


def refused(r: httpx.Response, status: int, error: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"] == error and body["detail"], body


# --- Host ---------------------------------------------------------------------------------------------


def test_a_host_that_is_not_the_servers_is_421_and_changes_nothing(served: Callable[..., Served]) -> None:
    s = served()
    for host in ("evil.example", f"evil.example:{s.port}", f"{REBOUND_NAME}:{s.port}", "127.0.0.1.evil.example",
                 f"localhost.evil.example:{s.port}", "localhost@evil.example"):
        refused(s.raw("GET", "/objects/", host=host), 421, "MisdirectedRequest")
        refused(s.raw("GET", "/objects/obj/data", host=host), 421, "MisdirectedRequest")
        binary = {"Content-Type": "application/octet-stream"}
        refused(s.raw("POST", "/objects/?object_id=obj", binary, b"rebound", host=host), 421, "MisdirectedRequest")
        refused(s.raw("DELETE", "/objects/obj", host=host), 421, "MisdirectedRequest")
        refused(s.raw("POST", "/counter/bump", {"Content-Type": "application/json"}, b"{}", host=host),
                421, "MisdirectedRequest")
    s.unchanged()
    assert "--allowed-host evil.example" in s.raw("GET", "/", host="evil.example").json()["detail"]


def test_the_servers_own_names_and_addresses_are_served(served: Callable[..., Served]) -> None:
    s = served()
    me = socket.gethostname().lower()
    for host in (f"127.0.0.1:{s.port}", f"localhost:{s.port}", f"LocalHost:{s.port}", "localhost.", f"[::1]:{s.port}",
                 f"pi.localhost:{s.port}", f"192.0.2.7:{s.port}", me, f"{me.split('.')[0]}.local:{s.port}"):
        r = s.raw("GET", "/objects/", host=host)
        assert r.status_code == 200, (host, r.text)
        # links name the server as the client reached it: an accepted Host only
        assert r.json()[0]["url"].startswith(f"http://{host}/"), (host, r.json())


def test_allowed_hosts_add_names_and_wildcards(served: Callable[..., Served]) -> None:
    s = served(allowed_hosts=["pi.lab.example", "*.cams.example"])
    for host in ("pi.lab.example", "PI.LAB.EXAMPLE:8080", "a.cams.example", "b.a.cams.example"):
        assert s.raw("GET", "/objects/", host=host).status_code == 200, host
    for host in ("lab.example", "cams.example", "x.pi.lab.example", "evil.example"):
        refused(s.raw("GET", "/objects/", host=host), 421, "MisdirectedRequest")
    anything = served(allowed_hosts=["*"])
    assert anything.raw("GET", "/objects/", host="whatever.example").status_code == 200


def test_serve_accepts_the_name_it_was_told_to_listen_on(make_server: Any) -> None:
    app = make_server({})
    app.allow_host("pi.lab.example")
    app.allow_host("0.0.0.0")  # an address: accepted anyway, nothing to add
    assert app.allowed_hosts == ["pi.lab.example"]


# --- cross-site writes --------------------------------------------------------------------------------

FORGEABLE_BODIES = [  # what a page can send cross-origin without asking first
    ({"Content-Type": "text/plain"}, b'{"a": 1}'),
    ({"Content-Type": "text/plain;charset=UTF-8"}, b"x"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"a=1"),
    ({"Content-Type": "multipart/form-data; boundary=zz"}, b"--zz--\r\n"),
    ({"Content-Type": "TEXT/PLAIN"}, b"x"),
    ({}, b"a fetch() of a Blob without a type sends no Content-Type"),
    ({}, None),
]


def test_writes_a_page_could_forge_are_403_and_lose_nothing(served: Callable[..., Served]) -> None:
    s = served()
    for headers, body in FORGEABLE_BODIES:
        # re-uploading to an existing id without control_version would free version 0's bytes
        refused(s.raw("POST", "/objects/?object_id=obj", headers, body), 403, "CrossOriginRequest")
        refused(s.raw("POST", "/objects/?object_id=new", headers, body), 403, "CrossOriginRequest")
        refused(s.raw("POST", "/counter/bump", headers, body), 403, "CrossOriginRequest")
        refused(s.raw("POST", "/blobs", headers, body), 403, "CrossOriginRequest")
    s.unchanged()
    assert "X-Requested-With" in s.raw("POST", "/counter/bump").json()["detail"]


def test_writes_from_another_origin_are_403_whatever_their_type(served: Callable[..., Served]) -> None:
    s = served()
    other = f"http://127.0.0.1:{s.port + 1 if s.port < 65535 else s.port - 1}"
    json_type = {"Content-Type": "application/json", "X-Requested-With": "x"}
    for origin_headers in ({"Origin": other}, {"Origin": "null"}, {"Origin": f"https://127.0.0.1:{s.port}"},
                           {"Origin": f"http://localhost:{s.port}"}, {"Origin": "http://[::1"},
                           {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
        refused(s.raw("POST", "/counter/bump", {**json_type, **origin_headers}, b"{}"), 403, "CrossOriginRequest")
        refused(s.raw("DELETE", "/objects/obj", origin_headers), 403, "CrossOriginRequest")
        refused(s.raw("POST", "/objects/?object_id=obj", {"Content-Type": "image/png", **origin_headers}, b"png"),
                403, "CrossOriginRequest")
    s.unchanged()


def test_real_clients_and_same_origin_pages_still_write(served: Callable[..., Served]) -> None:
    s = served()
    own = f"http://127.0.0.1:{s.port}"
    same_origin_page = {"Content-Type": "text/plain", "Origin": own}
    assert s.raw("POST", "/objects/?object_id=a", same_origin_page, b"a").status_code == 201
    assert s.raw("POST", "/objects/?object_id=b", {"Content-Type": "text/plain", "Sec-Fetch-Site": "same-origin",
                                                   "X-Requested-With": "x"}, b"b").status_code == 201
    assert s.raw("POST", "/objects/?object_id=c", {"Content-Type": "application/octet-stream"}, b"c").status_code == 201
    assert s.raw("POST", "/counter/bump", {"Content-Type": "application/json"}, b"{}").status_code in (200, 201)
    assert s.raw("DELETE", "/objects/a").status_code == 204  # no browser sends a cross-origin DELETE unasked
    assert s.counter.calls == 1
    assert sorted(o.object_id for o in s.store.blob_object_query({})) == ["b", "c", "obj"]
    # microblob's own client uploads a text/plain Blob (the form type) and says it is no page
    with ThingClient.from_url(s.base + "counter/") as client:
        link = client.upload(Blob.from_bytes(b"notes", "text/plain"))
    assert httpx.get(link["url"]).content == b"notes"


def test_a_token_is_asked_for_before_the_forgery_check(served: Callable[..., Served]) -> None:
    s = served(token="sesame")
    refused(s.raw("POST", "/counter/bump", {"Content-Type": "text/plain"}, b"{}"), 401, "Unauthorized")
    ok = s.raw("POST", "/counter/bump", {"Content-Type": "text/plain", "Authorization": "Bearer sesame"}, b"{}")
    assert ok.status_code in (200, 201), ok.text  # a page cannot send Authorization without a preflight
    assert s.counter.calls == 1


def test_cors_origins_may_call_and_are_told_so(served: Callable[..., Served]) -> None:
    page = "http://localhost:8000"
    s = served(cors_origins=[page + "/"])
    pre = s.raw("OPTIONS", "/counter/bump", {"Origin": page, "Access-Control-Request-Method": "POST",
                                             "Access-Control-Request-Headers": "content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == page
    r = s.raw("POST", "/counter/bump", {"Origin": page, "Content-Type": "application/json"}, b"{}")
    assert r.status_code in (200, 201) and r.headers["access-control-allow-origin"] == page
    assert s.counter.calls == 1
    refused(s.raw("OPTIONS", "/counter/bump", {"Origin": "http://evil.example", "Access-Control-Request-Method":
                                               "POST"}), 400, "PreflightRefused")
    refused(s.raw("POST", "/counter/bump", {"Origin": "http://evil.example", "Content-Type": "application/json"},
                  b"{}"), 403, "CrossOriginRequest")
    assert s.counter.calls == 1


@pytest.mark.parametrize("option, value", [
    ("allowed_hosts", ["http://pi.lab.example/"]), ("allowed_hosts", [""]), ("allowed_hosts", ["a*b.example"]),
    ("allowed_hosts", [7]), ("cors_origins", ["localhost:8000"]), ("cors_origins", ["ftp://x.example"]),
    ("cors_origins", ["http://x.example/path"]), ("cors_origins", ["http://x.example:99999"]),
])
def test_bad_guard_options_are_typed_errors(option: str, value: Any) -> None:
    with pytest.raises(microblob.InvalidArgument):
        ThingServer({}, **{option: value})


def test_any_host_and_origin_get_an_answer_not_a_500(asgi: Any, make_server: Any) -> None:
    client = asgi(make_server({"counter": Counter()}))

    @settings(max_examples=examples(300), deadline=None, database=None)
    @given(host=st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=60),
           origin=st.one_of(st.none(), st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60)),
           fetch_site=st.one_of(st.none(), st.sampled_from(["cross-site", "same-site", "same-origin", "none", "ü"])))
    def check(host: str, origin: str | None, fetch_site: str | None) -> None:
        headers = [(b"Host", host.encode("latin-1")), (b"Content-Type", b"application/json")]
        if origin is not None:
            headers.append((b"Origin", origin.encode("latin-1")))
        if fetch_site is not None:
            headers.append((b"Sec-Fetch-Site", fetch_site.encode("latin-1")))
        for method in ("GET", "POST"):
            r = client.request(method, "/counter/bump", headers=headers, content=b"{}")
            assert r.status_code < 500, (host, origin, r.status_code, r.text)
            if r.status_code in (400, 403, 421):
                assert r.json()["detail"]

    check()


# --- in a real browser ----------------------------------------------------------------------------------

ATTACK_PAGE = """<!doctype html><title>attacking</title>
<iframe name="sink"></iframe>
<form id="form" method="POST" enctype="text/plain" target="sink" action="{target}objects/?object_id=by-form">
  <input name='{{"a":"' value='1"}}'>
</form>
<img id="img" src="{target}objects/obj/data">
<script>
const target = {target_json};
const results = [];
async function attempt(name, url, options) {{
  try {{ const r = await fetch(url, options); results.push([name, r.type, r.status]); }}
  catch (e) {{ results.push([name, "error", String(e)]); }}
}}
(async () => {{
  await attempt("no-cors text/plain action", target + "counter/bump", {{method: "POST", mode: "no-cors",
    headers: {{"Content-Type": "text/plain"}}, body: "{{}}"}});
  await attempt("no-cors untyped blob upload", target + "objects/?object_id=by-fetch", {{method: "POST",
    mode: "no-cors", body: new Blob(["evil"])}});
  await attempt("no-cors re-upload of obj", target + "objects/?object_id=obj", {{method: "POST",
    mode: "no-cors", body: "overwritten"}});
  await attempt("cors json action", target + "counter/bump", {{method: "POST",
    headers: {{"Content-Type": "application/json"}}, body: "{{}}"}});
  await attempt("cors read", target + "objects/", {{}});
  await new Promise(done => {{ document.querySelector("iframe").onload = done; form.submit(); }});
  const img = document.getElementById("img");
  if (!img.complete) await new Promise(done => {{ img.onload = img.onerror = done; }});
  document.title = "done " + JSON.stringify(results);
}})();
</script>"""


def attacker(target: str) -> Starlette:
    page = ATTACK_PAGE.format(target=target, target_json=json.dumps(target))
    return Starlette(routes=[Route("/", lambda request: HTMLResponse(page))])


def finished(driver: Any, timeout: float = 30.0) -> list[list[Any]]:
    deadline = time.monotonic() + timeout
    while not driver.title.startswith("done "):
        assert time.monotonic() < deadline, f"the page did not finish: {driver.title!r}"
        time.sleep(0.05)
    return json.loads(driver.title[len("done "):])


def test_a_page_of_another_origin_cannot_write_or_run_actions(rebinding_browser: Any, served: Callable[..., Served],
                                                              live: Any) -> None:
    s = served()
    evil = live(attacker(s.base)).replace("127.0.0.1", "localhost")  # another origin, another loopback port
    rebinding_browser.get(evil)
    results = {name: (kind, status) for name, kind, status in finished(rebinding_browser)}
    s.unchanged()
    # the harness did reach the server: the no-cors requests got (opaque) answers, the CORS ones were blocked
    assert results["no-cors text/plain action"][0] == "opaque", results
    assert results["cors read"][0] == "error" and results["cors json action"][0] == "error", results


def test_an_allowed_origin_can_call_from_the_browser(rebinding_browser: Any, served: Callable[..., Served],
                                                     live: Any) -> None:
    from _live import live_server

    # the page's origin must be known before the server starts: serve the page first, on its own port
    holder: dict[str, str] = {}
    app = Starlette(routes=[Route("/", lambda request: HTMLResponse(holder["page"]))])
    with live_server(app) as evil:
        page_origin = evil.rstrip("/").replace("127.0.0.1", "localhost")
        s = served(cors_origins=[page_origin])
        holder["page"] = ATTACK_PAGE.format(target=s.base, target_json=json.dumps(s.base))
        rebinding_browser.get(page_origin + "/")
        results = {name: (kind, status) for name, kind, status in finished(rebinding_browser)}
    assert results["cors json action"] == ("cors", 201) or results["cors json action"] == ("cors", 200), results
    assert results["cors read"] == ("cors", 200), results
    assert s.counter.calls >= 1


def test_a_rebound_name_gets_nothing_and_the_browse_page_still_works(rebinding_browser: Any,
                                                                    served: Callable[..., Served]) -> None:
    s = served()
    rebinding_browser.get(f"http://{REBOUND_NAME}:{s.port}/objects/")
    text = rebinding_browser.find_element("tag name", "body").text
    assert "MisdirectedRequest" in text and "version 0" not in text
    for name in ("127.0.0.1", "localhost"):
        rebinding_browser.get(f"http://{name}:{s.port}/")
        deadline = time.monotonic() + 30
        while "obj" not in rebinding_browser.find_element("tag name", "body").text:
            assert time.monotonic() < deadline, "the browse page did not list the object"
            time.sleep(0.05)
