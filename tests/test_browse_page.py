"""The browse page at `GET /`, in a real headless Chromium (Debian's `chromium` + `chromium-driver`,
driven by selenium) against a real ThingServer over uvicorn on 127.0.0.1.

Without Chromium these tests skip on a developer's machine and fail in CI (`CI` set): `.ci/run` installs
it. `python tests/screenshot.py` saves pictures of the page for a person to look at.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import httpx
import pytest
from _browser import chromium, find_chromium, screenshot, wait_settled
from screenshot import XSS_ID, XSS_TEXT, camera_thing, fill_demo_store, make_png

import microblob
from microblob.cli import _short_time
from microblob.http.browse import STATIC_FILES
from microblob.store.sizes import human_size as _human_size

ROOT = Path(__file__).resolve().parents[1]

ROWS = "return Array.from(document.querySelectorAll('#objects tbody tr')).map(r => r.dataset.objectId);"


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    found = find_chromium()
    if isinstance(found, str):
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the browser tests, but {found}", pytrace=False)
        pytest.skip(found)
    with chromium() as driver:
        yield driver


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """The browser, its console log drained before the test."""
    browser.get("about:blank")
    browser.get_log("browser")
    yield browser


@pytest.fixture
def demo(tmp_path: Path, make_server: Any, live: Any) -> Iterator[dict[str, Any]]:
    """A store in a temporary LMDB file with the screenshot's demo objects, served with the camera."""
    store = microblob.connect(tmp_path / "store.db")
    ids = fill_demo_store(store)
    base = live(make_server({"camera": camera_thing()}, store=store))
    yield {"store": store, "base": base, **ids}
    store.close()


def wait_for(driver: Any, condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def load(driver: Any, url: str) -> None:
    driver.get(url)
    wait_settled(driver)


def errors(driver: Any) -> list[dict[str, Any]]:
    """The console's errors since the last call (failed requests, CSP violations, exceptions)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def rows(driver: Any) -> list[str]:
    return driver.execute_script(ROWS)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------ the list


def test_page_loads_without_console_errors_and_lists_newest_first(page: Any, demo: dict[str, Any]) -> None:
    load(page, demo["base"])
    assert errors(page) == []
    expected = [o.object_id for o in demo["store"].blob_object_query({}, sort=[("updated_at", -1), ("object_id", 1)])]
    assert rows(page) == expected and len(expected) == 10
    row = page.execute_script(
        "const r = document.querySelector('#objects tbody tr[data-object-id=\"segmenter\"]');"
        "return Array.from(r.cells).map(c => c.textContent.trim());")
    # thumbnail | object + content type | type | size | version | workflow | task | updated
    assert row[1] == "segmenterapplication/x-safetensors" and row[2] == "ml_model"
    assert row[3] == "1.0 MiB" and row[4] == "1" and row[6] == "train"
    assert row[5].endswith("…") and demo["store"].get_blob_object("segmenter").workflow_id.startswith(row[5][:-1])
    # One convention with the CLI: UTC with its zone, binary units with one decimal.
    segmenter = demo["store"].get_blob_object("segmenter")
    assert row[7] == _short_time(segmenter.updated_at) and row[7].endswith("Z")
    assert row[3] == _human_size(segmenter.size)
    cells = page.execute_script(
        "return Array.from(document.querySelectorAll('#objects tbody tr'))"
        ".map(r => [r.dataset.objectId, r.cells[3].textContent.trim(), r.cells[7].textContent.trim()]);")
    shown = {oid: (size, when) for oid, size, when in cells}
    assert shown == {o.object_id: (_human_size(o.size), _short_time(o.updated_at))
                     for o in demo["store"].blob_object_query({})}
    assert "10 objects, newest first." in page.find_element("id", "objects-status").text


def test_png_thumbnail_loads(page: Any, demo: dict[str, Any]) -> None:
    load(page, demo["base"])
    script = ("const i = document.querySelector('#objects tbody tr[data-object-id=\"scan-001\"] img.thumb');"
              "if (i) i.scrollIntoView(); return i && [i.complete, i.naturalWidth, i.naturalHeight, i.currentSrc];")
    thumb = wait_for(page, lambda: page.execute_script(script), what="a thumbnail for an image/png object")
    thumb = wait_for(page, lambda: (t := page.execute_script(script))[0] and t, what="the thumbnail to load")
    complete, width, height, src = thumb
    assert complete and (width, height) == (160, 120)
    assert src == f"{demo['base']}objects/scan-001/data?version=0"
    # objects that are not images get a label, not a broken <img>
    label = page.execute_script(
        "return document.querySelector('#objects tbody tr[data-object-id=\"focus-curve\"] td').textContent;")
    assert label == "csv"
    assert errors(page) == []


def test_filters_narrow_the_list(page: Any, demo: dict[str, Any]) -> None:
    store = demo["store"]
    load(page, demo["base"])
    assert len(rows(page)) == 10
    page.find_element("id", "filter-type").send_keys("calibration")
    page.find_element("css selector", "#filters button[type=submit]").click()
    wait_for(page, lambda: len(rows(page)) == 3, what="the type filter")
    assert set(rows(page)) == {"dark-frame-0", "dark-frame-1", "dark-frame-2"}
    assert page.current_url.endswith("#/?type=calibration")
    assert "(filtered)" in page.find_element("id", "objects-status").text

    page.find_element("id", "filter-clear").click()
    wait_for(page, lambda: len(rows(page)) == 10, what="clearing the filters")

    # a workflow cell is a link to the list filtered by that workflow
    workflow = store.get_blob_object("scan-001").workflow_id
    page.find_element("css selector", '#objects tbody tr[data-object-id="scan-001"] a.mono').click()
    in_workflow = sorted(o.object_id for o in store.blob_object_query({"workflow_id": workflow}))
    wait_for(page, lambda: sorted(rows(page)) == in_workflow, what="the workflow filter")
    assert len(in_workflow) == 6
    assert page.find_element("id", "filter-workflow").get_attribute("value") == workflow

    # type and workflow together, through the URL (links to a filtered list work)
    load(page, f"{demo['base']}#/?type=image&workflow={workflow}")
    wait_for(page, lambda: sorted(rows(page)) == ["scan-000", "scan-001", "scan-002", "scan-003"], what="both filters")

    # a MongoDB filter as JSON, and a friendly message for a bad one
    load(page, demo["base"] + "#/?q=" + quote(json.dumps({"custom_metadata.exposure_ms": {"$lt": 20}})))
    wait_for(page, lambda: sorted(rows(page)) == ["scan-001", "scan-002", "scan-003"], what="the JSON filter")
    load(page, demo["base"] + "#/?type=nothing-has-this")
    wait_for(page, lambda: "No objects match this filter." in page.find_element("id", "objects-status").text,
             what="the empty result")
    assert errors(page) == []
    page.get(demo["base"] + "#/?q=" + quote("{not json"))
    box = wait_for(page, lambda: page.find_element("id", "error").is_displayed() and page.find_element("id", "error"),
                   what="the error box")
    assert "not valid JSON" in box.text


def test_more_pages_through_the_objects(page: Any, tmp_path: Path, make_server: Any, live: Any) -> None:
    store = microblob.connect(tmp_path / "store.db")
    try:
        for n in range(120):
            store.save_or_update_object(b"%d" % n, object_id=f"obj-{n:03d}", type="small")
        load(page, live(make_server({}, store=store)))
        assert len(rows(page)) == 50
        more = page.find_element("id", "more")
        for expected in (100, 120):
            assert more.is_displayed()
            more.click()
            wait_for(page, lambda n=expected: len(rows(page)) == n, what=f"{expected} rows")
        assert not more.is_displayed()
        listed = rows(page)
        assert len(set(listed)) == 120
        assert listed == [o.object_id for o in store.blob_object_query({}, sort=[("updated_at", -1), ("object_id", 1)])]
        assert errors(page) == []
    finally:
        store.close()


def test_more_follows_a_server_page_smaller_than_the_pages(page: Any, tmp_path: Path, make_server: Any,
                                                          live: Any) -> None:
    """A server whose max_page_size is below the page's 50 still lists everything: its next link says more
    objects match."""
    store = microblob.connect(tmp_path / "store.db")
    try:
        for n in range(25):
            store.save_or_update_object(b"%d" % n, object_id=f"obj-{n:03d}", type="small")
        load(page, live(make_server({}, store=store, max_page_size=10)))
        assert len(rows(page)) == 10
        more = page.find_element("id", "more")
        for expected in (20, 25):
            assert more.is_displayed()
            more.click()
            wait_for(page, lambda n=expected: len(rows(page)) == n, what=f"{expected} rows")
        assert not more.is_displayed()
        assert sorted(rows(page)) == [f"obj-{n:03d}" for n in range(25)]
        assert errors(page) == []
    finally:
        store.close()


# ------------------------------------------------------------------------------------------ the detail view


def test_detail_lists_every_version_with_its_download(page: Any, demo: dict[str, Any]) -> None:
    store, base = demo["store"], demo["base"]
    load(page, base)
    page.find_element("css selector", '#objects tbody tr[data-object-id="scan-000"] td.id a').click()
    wait_for(page, lambda: page.find_elements("css selector", "#detail tr[data-version]"), what="the history")
    wait_settled(page)
    assert page.current_url == f"{base}#/objects/scan-000"
    assert page.find_element("css selector", "#detail h1").text == "scan-000"
    history = store.get_object_history("scan-000")
    versions = [int(v) for v in page.execute_script(
        "return Array.from(document.querySelectorAll('#detail tr[data-version]')).map(r => r.dataset.version);")]
    assert versions == [h["version"] for h in history] == [3, 2, 1, 0]
    links = page.execute_script(
        "return Array.from(document.querySelectorAll('#detail tr[data-version]'))"
        ".map(r => [r.dataset.version, r.querySelector('a.download').href, r.querySelector('a.download').download]);")
    with httpx.Client() as http:
        for version, href, filename in links:
            r = http.get(href)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            expected = store.get_blob_object("scan-000", int(version))
            assert sha256_hex(r.content) == expected.sha256 == sha256_hex(expected.data)
            assert filename == f"scan-000-v{version}.png"
        # the latest version's link in the summary, too
        latest = page.find_element("css selector", "#detail dl.meta a.download").get_attribute("href")
        assert sha256_hex(http.get(latest).content) == store.get_blob_object("scan-000").sha256
    # every version's thumbnail loaded (lazily: scroll to the end), and the metadata is shown
    page.execute_script("window.scrollTo(0, document.body.scrollHeight);")
    script = ("const imgs = Array.from(document.querySelectorAll('#detail img'));"
              "return imgs.every(i => i.complete) && imgs.map(i => i.naturalWidth);")
    sizes = wait_for(page, lambda: page.execute_script(script), what="the history's thumbnails")
    assert sizes == [160] * 5  # the preview and one per version
    text = page.find_element("id", "detail").text
    assert '"exposure_ms": 27.5' in text and "recapture-3" in text and "3 (previous: 2)" in text
    assert store.get_blob_object("scan-000", 0).sha256[:12] in text
    assert errors(page) == []
    # back to the list
    page.find_element("css selector", "#detail a.back").click()
    wait_for(page, lambda: len(rows(page)) == 10, what="the list again")


def test_download_link_saves_the_file(page: Any, demo: dict[str, Any], tmp_path: Path) -> None:
    """Clicking a version's link downloads exactly that version's bytes (a real browser download)."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    page.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    load(page, f"{demo['base']}#/objects/scan-000")
    wait_for(page, lambda: page.find_elements("css selector", '#detail tr[data-version="1"] a.download'),
             what="the history")
    page.find_element("css selector", '#detail tr[data-version="1"] a.download').click()
    saved = downloads / "scan-000-v1.png"
    wait_for(page, saved.exists, what="the download")
    wait_for(page, lambda: not list(downloads.glob("*.crdownload")), what="the download to finish")
    assert sha256_hex(saved.read_bytes()) == demo["store"].get_blob_object("scan-000", 1).sha256


def test_unknown_object_says_so(page: Any, demo: dict[str, Any]) -> None:
    page.get(demo["base"] + "#/objects/no-such-object")
    box = wait_for(page, lambda: page.find_element("id", "error").is_displayed() and page.find_element("id", "error"),
                   what="the error box")
    assert "ObjectNotFound" in box.text and "no-such-object" in box.text


# ------------------------------------------------------------------------------------------ Things


def test_things_with_their_actions_and_properties(page: Any, demo: dict[str, Any]) -> None:
    load(page, demo["base"])
    card = page.find_element("css selector", '#things article[data-thing="camera"]')
    actions = [a.get_attribute("data-action") for a in card.find_elements("css selector", "li[data-action]")]
    assert actions == ["capture_raw_image", "convert_raw_to_jpeg", "capture_image"]
    text = card.text
    assert "convert_raw_to_jpeg(raw: RAWBlob (image/x-raw)) → JPEGBlob (image/jpeg)" in text
    assert "Demosaic a RAW frame" in text and "A simulated camera" in text
    props = [p.get_attribute("data-property") for p in card.find_elements("css selector", "li[data-property]")]
    assert props == ["exposure", "frames_captured"]
    assert "frames_captured: integer (read-only)" in text
    card.find_element("css selector", 'li[data-property="exposure"] button').click()
    wait_for(page, lambda: card.find_element("css selector", 'li[data-property="exposure"] output').text == "1",
             what="the property value")
    assert errors(page) == []


def test_server_without_a_store_shows_its_things(page: Any, make_server: Any, live: Any) -> None:
    load(page, live(make_server({"camera": camera_thing()})))
    assert page.find_element("id", "no-store").is_displayed()
    assert not page.find_element("id", "store-ui").is_displayed()
    assert page.find_elements("css selector", '#things article[data-thing="camera"]')
    assert errors(page) == []  # and it never asked for /objects/ (that would be a 404 in the log)


def test_store_without_things(page: Any, make_server: Any, live: Any) -> None:
    store = microblob.connect("memory://")
    try:
        base = live(make_server({}, store=store))
        load(page, base)
        assert "No Things on this server." in page.find_element("id", "things").text
        assert "No objects in the store yet." in page.find_element("id", "objects-status").text
        store.save_or_update_object(make_png(8, 8), object_id="first", content_type="image/png")
        load(page, base)
        assert rows(page) == ["first"]
        assert errors(page) == []
    finally:
        store.close()


# ------------------------------------------------------------------------------------------ user data is text


def test_hostile_ids_and_metadata_render_as_text(page: Any, demo: dict[str, Any]) -> None:
    base = demo["base"]
    load(page, base)
    assert XSS_ID in rows(page)
    link = page.execute_script(
        "return Array.from(document.querySelectorAll('#objects td.id a'))"
        ".find(a => a.textContent.includes('onerror'));")
    assert link.text == XSS_ID
    cells = page.execute_script(
        "const r = Array.from(document.querySelectorAll('#objects tbody tr')).find(r => r.dataset.objectId.includes("
        "'onerror')); return [r.cells[2].textContent, r.cells[6].textContent];")
    assert cells == [XSS_TEXT, XSS_TEXT]
    link.click()
    wait_for(page, lambda: page.find_elements("css selector", "#detail tr[data-version]"), what="the detail view")
    assert page.find_element("css selector", "#detail h1").text == XSS_ID
    assert XSS_TEXT in page.find_element("id", "detail").text
    assert page.current_url == base + "#/objects/" + quote(XSS_ID, safe="!'()*")  # encodeURIComponent
    pwned = page.execute_script("return [window.__pwned, document.querySelectorAll('img[src=\"x\"], script').length];")
    assert pwned == [None, 1]  # only the page's own script
    href = page.find_element("css selector", "#detail tr[data-version] a.download").get_attribute("href")
    r = httpx.get(href)
    assert r.content == demo["store"].get_blob_object(XSS_ID).data
    assert r.headers["content-security-policy"] == "sandbox"
    assert errors(page) == []
    # the stored HTML itself, opened from its link: sandboxed, its script does not run as the app's origin
    page.get(href)
    assert page.execute_script("return window.__pwned;") is None


# ------------------------------------------------------------------------------------------ token


def test_token_page_and_routes(page: Any, tmp_path: Path, make_server: Any, live: Any) -> None:
    store = microblob.connect(tmp_path / "store.db")
    try:
        png = make_png(40, 30, 3)
        store.save_or_update_object(png, object_id="pic", content_type="image/png", type="image")
        base = live(make_server({"camera": camera_thing()}, store=store, token="s3cret"))
        with httpx.Client() as http:
            r = http.get(base)
            assert r.status_code == 401 and "/?token=" in r.json()["detail"]
            assert http.get(base + "?token=wrong").status_code == 401
            # only the page takes ?token=: every other route still wants the header
            assert http.get(base + "objects/?token=s3cret").status_code == 401
            assert http.get(base + "objects/pic/data?token=s3cret").status_code == 401
            assert http.get(base + "things/?token=s3cret").status_code == 401
        load(page, base + "?token=s3cret")
        assert rows(page) == ["pic"]
        width = page.execute_script(
            "const i = document.querySelector('#objects img.thumb'); return [i.naturalWidth, i.currentSrc];")
        assert width[0] == 40 and width[1].startswith("blob:")  # fetched with the header
        assert page.find_elements("css selector", '#things article[data-thing="camera"]')
        assert errors(page) == []
        # the download link is the real URL (with the header it returns the bytes) ...
        load(page, base + "?token=s3cret#/objects/pic")
        wait_for(page, lambda: page.find_elements("css selector", "#detail tr[data-version] a.download"),
                 what="the history")
        href = page.find_element("css selector", "#detail tr[data-version] a.download").get_attribute("href")
        assert httpx.get(href).status_code == 401
        assert httpx.get(href, headers={"Authorization": "Bearer s3cret"}).content == png
        # ... and a click downloads through fetch() with the header
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        page.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        page.find_element("css selector", "#detail tr[data-version] a.download").click()
        saved = downloads / "pic-v0.png"
        wait_for(page, lambda: saved.exists() and not list(downloads.glob("*.crdownload")), what="the download")
        assert saved.read_bytes() == png
        assert errors(page) == []
    finally:
        store.close()


# ------------------------------------------------------------------------------------------ the page itself


def test_page_loads_nothing_from_elsewhere(asgi: Any, make_server: Any) -> None:
    """Offline: no CDN, fonts or other origins; the CSP allows only the page's own inline blocks."""
    r = asgi(make_server({}, store=microblob.connect("memory://"))).get("/")
    csp = r.headers["content-security-policy"]
    assert "http" not in csp and "unsafe" not in csp and "default-src 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
    assert "http://" not in r.text and "https://" not in r.text
    assert r.text.count("<script") == 1 and "src=" not in r.text.split("<script", 1)[1].split(">", 1)[0]


def test_static_files_are_package_data(tmp_path: Path) -> None:
    """A non-editable `pip install .` ships the page: install into a directory and serve it from there."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".*")
    for name in ("microblob",):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-cache-dir",
                           "--target", str(target), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in STATIC_FILES:
        installed = target / "microblob" / "static" / name
        assert installed.read_bytes() == (ROOT / "microblob" / "static" / name).read_bytes()
    code = (
        "import microblob, sys\n"
        "from microblob import ThingServer\n"
        "from microblob.testing import in_process_client\n"
        f"assert microblob.__file__.startswith({str(target)!r}), microblob.__file__\n"
        "with in_process_client(ThingServer({})) as c:\n"
        "    r = c.get('/')\n"
        "assert r.status_code == 200 and 'loadObjects' in r.text and 'table-wrap' in r.text, r.text[:200]\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env=env)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr


def test_screenshot_helper(page: Any, demo: dict[str, Any], tmp_path: Path) -> None:
    path = screenshot(page, demo["base"], tmp_path / "shots" / "home.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    width, height = struct.unpack(">II", data[16:24])
    assert width == 1280 and height >= 900  # the whole page, not only the first screen
    detail = screenshot(page, urljoin(demo["base"], "#/objects/scan-000"), tmp_path / "shots" / "detail.png")
    assert detail.stat().st_size > 10_000
    assert errors(page) == []


def test_sync_status_line(page: Any, tmp_path: Path, make_server: Any, live: Any) -> None:
    """Where the store syncs to and what is still only here; hidden for a store that syncs nowhere."""
    store = microblob.connect(tmp_path / "store.db")
    try:
        base = live(make_server({}, store=store))
        store.save_or_update_object(b"first", object_id="first")
        load(page, base)
        assert not page.find_element("id", "sync-status").is_displayed()
        dst = tmp_path / "server.db"
        microblob.sync(store, dst)
        store.save_or_update_object(b"x" * 2048, object_id="second")
        load(page, base)
        line = wait_for(page, lambda: page.find_element("id", "sync-status").text, what="the sync line")
        assert f"Sync to {dst}: 1 object pending (2.0 KiB), oldest saved" in line, line
        microblob.sync(store, dst)
        load(page, base)
        line = wait_for(page, lambda: page.find_element("id", "sync-status").text, what="the sync line")
        assert f"Sync to {dst}: up to date; last round" in line, line
        assert "evicted" not in line
        assert microblob.evict(store, max_size=0, destination=dst).evicted_files == 2
        load(page, base)
        wait_for(page, lambda: "evicted" in page.find_element("id", "sync-status").text, what="the evicted counts")
        line = page.find_element("id", "sync-status").text
        assert "up to date; last round" in line and "evicted here: 2 versions (2 files, 2.0 KiB freed)" in line, line
        assert errors(page) == []
    finally:
        store.close()
