// The browse page of a microblob ThingServer: plain DOM, no dependencies, no build step.
// Everything shown comes from the server's JSON routes and is user data, so it only ever enters the page
// as text (textContent, setAttribute), never as HTML.
"use strict";

(() => {
  const PAGE = 50; // objects per request
  const THUMB_MAX = 16 * 1024 * 1024; // larger images get no thumbnail (it would download them whole)
  const BROWSER_IMAGES = /^image\/(png|jpeg|pjpeg|gif|webp|avif|bmp|svg\+xml|x-icon|vnd\.microsoft\.icon|apng)$/i;

  // A server with a token serves this page only to `/?token=...`; every request the page makes then sends
  // it as `Authorization: Bearer`, like any other client of the server's routes.
  const token = new URLSearchParams(window.location.search).get("token");
  const hasStore = document.body.dataset.store === "yes";
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------------------------------ helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function authHeaders() {
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  // Requests in flight, as <html data-pending="N">: "0" once the page has everything it asked for.
  let pending = 0;
  const busy = (delta) => {
    pending += delta;
    document.documentElement.dataset.pending = String(pending);
  };

  async function api(url, onResponse) {
    busy(+1);
    try {
      return await request(url, onResponse);
    } finally {
      busy(-1);
    }
  }

  async function request(url, onResponse) {
    const response = await fetch(url, { headers: { Accept: "application/json", ...authHeaders() } });
    if (onResponse) onResponse(response);
    if (!response.ok) {
      let detail = `${response.status} ${response.statusText}`;
      try {
        const body = await response.json();
        if (body && body.detail) detail = `${body.error || response.status}: ${body.detail}`;
      } catch (e) {
        // not JSON: keep the status line
      }
      throw new Error(`${url}: ${detail}`);
    }
    return response.json();
  }

  function showError(err) {
    const box = $("error");
    box.textContent = err instanceof Error ? err.message : String(err);
    box.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  function humanSize(n) {
    if (typeof n !== "number") return "—";
    if (n < 1024) return `${n} B`;
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let value = n;
    let i = -1;
    do {
      value /= 1024;
      i += 1;
    } while (value >= 1024 && i < units.length - 1);
    return `${value.toFixed(1)} ${units[i]}`; // as the CLI prints sizes: 47.7 MiB
  }

  const pad = (n) => String(n).padStart(2, "0");

  // Times in UTC with their zone, to the second, exactly as the CLI prints them (2026-12-07T08:41:22Z):
  // the same object reads the same on the Pi, on the laptop and in `microblob ls`.
  function when(iso) {
    if (!iso) return el("span", { class: "muted" }, "—");
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return el("span", {}, String(iso));
    const date = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
    const time = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}Z`;
    return el("time", { datetime: iso, title: iso, class: "when" }, el("span", {}, date), "T",
      el("span", { class: "clock" }, time));
  }

  function short(id, n = 8) {
    const s = String(id);
    return s.length > n + 1 ? `${s.slice(0, n)}…` : s;
  }

  const baseType = (ct) => String(ct || "").split(";")[0].trim().toLowerCase();
  const isImage = (ct) => BROWSER_IMAGES.test(baseType(ct));

  function objectHash(id) {
    return `#/objects/${encodeURIComponent(id)}`;
  }

  function listHash(filters) {
    const q = new URLSearchParams();
    for (const [key, value] of Object.entries(filters)) if (value) q.set(key, value);
    const s = q.toString();
    return s ? `#/?${s}` : "#/";
  }

  function dataUrl(id, version) {
    return `objects/${encodeURIComponent(id)}/data?version=${encodeURIComponent(version)}`;
  }

  // Images: without a token, the browser loads them itself (lazily). With one, an <img> cannot send the
  // header, so each image is fetched when it scrolls into view and shown from a blob: URL.
  const lazyAuthed = token && "IntersectionObserver" in window
    ? new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (!entry.isIntersecting) continue;
        lazyAuthed.unobserve(entry.target);
        loadAuthed(entry.target);
      }
    }, { rootMargin: "200px" })
    : null;

  async function loadAuthed(img) {
    busy(+1);
    try {
      const response = await fetch(img.dataset.src, { headers: authHeaders() });
      if (!response.ok) throw new Error(`${response.status}`);
      const url = URL.createObjectURL(await response.blob());
      img.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
      img.src = url;
    } catch (e) {
      img.alt = "(image not loaded)";
    } finally {
      busy(-1);
    }
  }

  function image(url, cls, alt) {
    const img = el("img", { class: cls, alt: alt || "", decoding: "async" });
    if (!token) {
      img.loading = "lazy";
      img.src = url;
    } else {
      img.dataset.src = url;
      if (lazyAuthed) lazyAuthed.observe(img);
      else loadAuthed(img);
    }
    return img;
  }

  const LABELS = { "text/plain": "text", "application/octet-stream": "bin", "application/x-safetensors": "tensors",
    "application/json": "json", "image/x-raw": "raw", "image/tiff": "tiff" };

  function fileLabel(contentType) {
    const ct = baseType(contentType);
    if (LABELS[ct]) return LABELS[ct];
    const sub = (ct.split("/")[1] || "data").replace(/^(x-|vnd\.)/, "").split(/[.+;-]/)[0];
    return sub.slice(0, 7) || "data";
  }

  function thumbnail(obj) {
    if (isImage(obj.content_type) && (obj.size || 0) <= THUMB_MAX) {
      return image(obj.data_url || dataUrl(obj.object_id, obj.version), "thumb", `thumbnail of ${obj.object_id}`);
    }
    return el("span", { class: "filetag", title: obj.content_type || "" }, fileLabel(obj.content_type));
  }

  function filename(id, version, contentType) {
    const ext = { "image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp",
      "text/plain": ".txt", "text/csv": ".csv", "application/json": ".json", "application/pdf": ".pdf",
      "application/x-safetensors": ".safetensors" }[baseType(contentType)] || "";
    const safe = String(id).replace(/[^A-Za-z0-9._-]+/g, "_").slice(0, 100) || "object";
    return `${safe}-v${version}${ext}`;
  }

  // A download link: a real href (copy it, or fetch it with any HTTP client); with a token, a click
  // downloads through fetch() so that the header goes along.
  function downloadLink(url, name, text) {
    const a = el("a", { href: url, download: name, class: "download" }, text);
    if (token) {
      a.addEventListener("click", async (event) => {
        event.preventDefault();
        try {
          const response = await fetch(url, { headers: authHeaders() });
          if (!response.ok) throw new Error(`${url}: ${response.status} ${response.statusText}`);
          const blobUrl = URL.createObjectURL(await response.blob());
          const tmp = el("a", { href: blobUrl, download: name });
          document.body.append(tmp);
          tmp.click();
          tmp.remove();
          setTimeout(() => URL.revokeObjectURL(blobUrl), 60000);
        } catch (err) {
          showError(err);
        }
      });
    }
    return a;
  }

  // ------------------------------------------------------------------------------------------ objects

  const list = {
    filters: { type: "", workflow: "", q: "" },
    skip: 0,
    seen: new Set(),
    types: new Set(),
    workflows: new Set(),
    generation: 0, // a newer listing makes older responses stale
  };

  function filterDocument(filters) {
    let flt = {};
    if (filters.q) {
      try {
        flt = JSON.parse(filters.q);
      } catch (e) {
        throw new Error(`the filter is not valid JSON: ${e.message}`);
      }
      if (flt === null || typeof flt !== "object" || Array.isArray(flt)) {
        throw new Error("the filter must be a JSON object, e.g. {\"type\": \"image\"}");
      }
    }
    const parts = [flt];
    if (filters.type) parts.push({ type: filters.type });
    if (filters.workflow) parts.push({ workflow_id: filters.workflow });
    const nonEmpty = parts.filter((p) => Object.keys(p).length);
    if (nonEmpty.length === 0) return {};
    return nonEmpty.length === 1 ? nonEmpty[0] : { $and: nonEmpty };
  }

  function suggest(datalistId, values) {
    const dl = $(datalistId);
    dl.replaceChildren(...[...values].sort().map((v) => el("option", { value: v })));
  }

  function objectRow(obj) {
    const id = String(obj.object_id);
    const typeCell = obj.type
      ? el("a", { class: "chip", href: listHash({ ...list.filters, type: obj.type }),
        title: `${obj.type} (show only this type)` }, obj.type)
      : el("span", { class: "muted" }, "—");
    const wfCell = obj.workflow_id
      ? el("a", { class: "mono", href: listHash({ ...list.filters, workflow: obj.workflow_id }),
        title: `${obj.workflow_id} (show only this workflow)` }, short(obj.workflow_id))
      : el("span", { class: "muted" }, "—");
    return el("tr", { "data-object-id": id },
      el("td", {}, el("a", { href: objectHash(id), tabindex: -1 }, thumbnail(obj))),
      el("td", { class: "id" }, el("a", { href: objectHash(id) }, id),
        el("span", { class: "sub" }, obj.content_type || "")),
      el("td", {}, typeCell),
      el("td", { class: "num nowrap", title: `${obj.size} bytes` }, humanSize(obj.size)),
      el("td", { class: "num" }, String(obj.version)),
      el("td", {}, wfCell),
      el("td", {}, obj.task_id ? el("span", { class: "mono clip", title: String(obj.task_id) }, String(obj.task_id))
        : el("span", { class: "muted" }, "—")),
      el("td", {}, when(obj.updated_at)));
  }

  async function loadObjects(reset) {
    const generation = reset ? ++list.generation : list.generation;
    if (reset) {
      list.skip = 0;
      list.seen.clear();
      $("objects").tBodies[0].replaceChildren();
    }
    const status = $("objects-status");
    const more = $("more");
    more.hidden = true;
    let flt;
    try {
      flt = filterDocument(list.filters);
    } catch (err) {
      status.textContent = "";
      showError(err);
      return;
    }
    status.textContent = "Loading…";
    const params = new URLSearchParams({ sort: "-updated_at,object_id", limit: String(PAGE + 1),
      skip: String(list.skip) });
    if (Object.keys(flt).length) params.set("filter", JSON.stringify(flt));
    let objects;
    let nextPage = false; // the server caps pages (max_page_size): its Link header says whether more match
    try {
      objects = await api(`objects/?${params}`, (r) => {
        nextPage = /rel="next"/.test(r.headers.get("Link") || "");
      });
    } catch (err) {
      if (generation === list.generation) {
        status.textContent = "";
        showError(err);
      }
      return;
    }
    if (generation !== list.generation) return;
    const hasMore = objects.length > PAGE || nextPage;
    objects = objects.slice(0, PAGE);
    list.skip += objects.length;
    const body = $("objects").tBodies[0];
    for (const obj of objects) {
      if (list.seen.has(obj.object_id)) continue; // updated between two pages: already listed
      list.seen.add(obj.object_id);
      if (obj.type) list.types.add(String(obj.type));
      if (obj.workflow_id) list.workflows.add(String(obj.workflow_id));
      body.append(objectRow(obj));
    }
    suggest("types", list.types);
    suggest("workflows", list.workflows);
    const filtered = Object.keys(flt).length > 0;
    const n = body.rows.length;
    if (n === 0) status.textContent = filtered ? "No objects match this filter." : "No objects in the store yet.";
    else status.textContent = `${n} object${n === 1 ? "" : "s"}${hasMore ? " shown" : ""}, newest first` +
      `${filtered ? " (filtered)" : ""}.`;
    more.hidden = !hasMore;
  }

  function readFilters(query) {
    const q = new URLSearchParams(query);
    return { type: q.get("type") || "", workflow: q.get("workflow") || "", q: q.get("q") || "" };
  }

  // ------------------------------------------------------------------------------------------ things

  function schemaText(schema) {
    if (!schema || typeof schema !== "object") return "any";
    if (schema.contentMediaType) return `${schema.title || "Blob"} (${schema.contentMediaType})`;
    if (Array.isArray(schema.anyOf) || Array.isArray(schema.oneOf)) {
      return (schema.anyOf || schema.oneOf).map(schemaText).join(" | ");
    }
    if (Array.isArray(schema.enum)) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
    if (schema.const !== undefined) return JSON.stringify(schema.const);
    const types = Array.isArray(schema.type) ? schema.type : [schema.type || "any"];
    return types.map((t) => {
      if (t === "array") return `array[${schemaText(schema.items)}]`;
      if (t === "object" && schema.title) return schema.title;
      return t;
    }).join(" | ");
  }

  function actionSignature(name, action) {
    const input = action.input || {};
    const props = input.properties || {};
    const required = new Set(input.required || []);
    const params = Object.entries(props).map(([param, schema]) => {
      let text = `${param}: ${schemaText(schema)}`;
      if (!required.has(param) && schema && schema.default !== undefined) text += ` = ${JSON.stringify(schema.default)}`;
      return text;
    });
    const output = action.output ? schemaText(action.output) : "null";
    return [el("span", { class: "name" }, name), `(${params.join(", ")}) → ${output}`];
  }

  function thingCard(name, tdUrl, td) {
    const actions = Object.entries(td.actions || {});
    const props = Object.entries(td.properties || {});
    const base = td.base || tdUrl;
    const card = el("article", { class: "thing", "data-thing": name },
      el("h2", {}, el("a", { href: tdUrl, title: "Thing Description (JSON)" }, name),
        td.title && td.title !== name ? el("span", { class: "muted" }, ` ${td.title}`) : null),
      td.description ? el("p", {}, td.description) : null);
    if (actions.length) {
      card.append(el("h3", {}, "Actions"), el("ul", { class: "affordances actions" },
        actions.map(([action, info]) => el("li", { "data-action": action },
          el("span", { class: "sig" }, actionSignature(action, info)),
          info.description ? el("span", { class: "desc" }, info.description) : null))));
    }
    if (props.length) {
      card.append(el("h3", {}, "Properties"), el("ul", { class: "affordances properties" },
        props.map(([prop, info]) => {
          const out = el("output", {});
          const read = el("button", { type: "button", title: "read the current value" }, "read");
          read.addEventListener("click", async () => {
            out.textContent = "…";
            try {
              out.textContent = JSON.stringify(await api(new URL(prop, base).href));
            } catch (err) {
              out.textContent = "";
              showError(err);
            }
          });
          return el("li", { "data-property": prop },
            el("span", { class: "sig" }, el("span", { class: "name" }, prop), `: ${schemaText(info)}`,
              info.readOnly ? el("span", { class: "muted" }, " (read-only)") : null),
            read, out,
            info.description ? el("span", { class: "desc" }, info.description) : null);
        })));
    }
    if (!actions.length && !props.length) card.append(el("p", {}, "No actions or properties."));
    return card;
  }

  let thingsLoaded = false;

  async function loadThings() {
    if (thingsLoaded) return;
    thingsLoaded = true;
    const box = $("things");
    try {
      const things = Object.entries(await api("things/"));
      if (!things.length) {
        box.replaceChildren(el("p", { class: "note" }, "No Things on this server."));
        return;
      }
      const tds = await Promise.all(things.map(([, url]) => api(url)));
      box.replaceChildren(...things.map(([name, url], i) => thingCard(name, url, tds[i])));
    } catch (err) {
      box.replaceChildren();
      showError(err);
    }
  }

  // ------------------------------------------------------------------------------------------ detail

  function metaList(pairs) {
    return el("dl", { class: "meta" }, pairs.flatMap(([k, v]) => [el("dt", {}, k),
      el("dd", {}, v === null || v === undefined || v === "" ? el("span", { class: "muted" }, "—") : v)]));
  }

  function json(value) {
    return el("pre", {}, JSON.stringify(value, null, 2));
  }

  async function showDetail(id) {
    const box = $("detail");
    box.replaceChildren(el("p", { class: "note" }, "Loading…"));
    if (!hasStore) {
      box.replaceChildren(el("p", { class: "note" }, "This server has no store."));
      return;
    }
    const enc = encodeURIComponent(id);
    let obj;
    let history;
    try {
      [obj, history] = await Promise.all([api(`objects/${enc}`), api(`objects/${enc}/history`)]);
    } catch (err) {
      box.replaceChildren(el("a", { class: "back", href: "#/" }, "← all objects"));
      showError(err);
      return;
    }
    document.title = `${id} · microblob`;
    const latestLink = downloadLink(obj.data_url, filename(id, obj.version, obj.content_type),
      `download v${obj.version}`);
    const summary = el("div", { class: "summary" },
      isImage(obj.content_type) && (obj.size || 0) <= THUMB_MAX
        ? image(obj.data_url, "preview", `version ${obj.version} of ${id}`) : null,
      metaList([
        ["version", `${obj.version}${obj.prev_version !== null && obj.prev_version !== undefined
          ? ` (previous: ${obj.prev_version})` : ""}`],
        ["type", obj.type], ["content type", obj.content_type],
        ["size", obj.size === undefined ? null : `${humanSize(obj.size)} (${obj.size} bytes)`],
        ["workflow", obj.workflow_id ? el("a", { class: "mono", href: listHash({ workflow: obj.workflow_id }) },
          obj.workflow_id) : null],
        ["task", obj.task_id], ["tags", (obj.tags || []).length ? (obj.tags || []).join(", ") : null],
        ["created", when(obj.created_at)], ["updated", when(obj.updated_at)],
        ["storage", obj.storage], ["sha256", el("span", { class: "mono" }, obj.sha256 || "")],
        ["data", latestLink],
      ]));
    const rows = history.map((entry) => ({ ...entry, content_type: entry.content_type ?? obj.content_type }))
      .map((h) => el("tr", { class: h.version === obj.version ? "current" : null,
      "data-version": h.version },
    el("td", { class: "num" }, String(h.version)),
    el("td", {}, isImage(h.content_type) && (h.size || 0) <= THUMB_MAX
      ? image(dataUrl(id, h.version), "thumb", `version ${h.version}`) : null),
    el("td", {}, when(h.updated_at || h.created_at)),
    el("td", { class: "num nowrap", title: `${h.size} bytes` }, humanSize(h.size)),
    el("td", {}, h.type ? el("span", { class: "chip" }, h.type) : el("span", { class: "muted" }, "—")),
    el("td", { class: "mono" }, h.task_id ? String(h.task_id) : ""),
    el("td", { class: "mono", title: h.sha256 || "" }, short(h.sha256 || "", 12)),
    el("td", { class: "compact" }, h.custom_metadata && Object.keys(h.custom_metadata).length
      ? el("code", {}, JSON.stringify(h.custom_metadata)) : ""),
    el("td", {}, downloadLink(dataUrl(id, h.version), filename(id, h.version, h.content_type),
      "download"))));
    box.replaceChildren(
      el("div", { class: "card" },
        el("a", { class: "back", href: "#/" }, "← all objects"),
        el("h1", {}, id),
        summary,
        el("h2", {}, "Custom metadata"),
        obj.custom_metadata && Object.keys(obj.custom_metadata).length
          ? json(obj.custom_metadata) : el("p", { class: "note" }, "none")),
      el("div", { class: "card" },
        el("h2", {}, `History (${history.length} version${history.length === 1 ? "" : "s"})`),
        history.length
          ? el("table", { class: "history" },
            el("thead", {}, el("tr", {}, ["version", "", "updated", "size", "type", "task", "sha256",
              "custom metadata", ""].map((h, i) => el("th", { class: i === 0 || i === 3 ? "num" : null }, h)))),
            el("tbody", {}, rows))
          : el("p", { class: "note" }, "No stored versions.")));
  }

  // ------------------------------------------------------------------------------------------ routing

  function route() {
    clearError();
    const hash = window.location.hash.replace(/^#/, "") || "/";
    const detail = hash.match(/^\/objects\/(.+)$/);
    $("home").hidden = Boolean(detail);
    $("detail").hidden = !detail;
    if (detail) {
      let id;
      try {
        id = decodeURIComponent(detail[1]);
      } catch (e) {
        id = detail[1];
      }
      showDetail(id);
      return;
    }
    document.title = "microblob";
    loadThings();
    if (!hasStore) return;
    const [, query = ""] = hash.split("?");
    list.filters = readFilters(query);
    $("filter-type").value = list.filters.type;
    $("filter-workflow").value = list.filters.workflow;
    $("filter-query").value = list.filters.q;
    loadObjects(true);
    loadSync();
  }

  // One line per sync destination (GET sync/): what is still only here, and when it last went well.
  async function loadSync() {
    const line = $("sync-status");
    let destinations;
    try {
      destinations = await api("sync/");
    } catch (err) {
      line.hidden = true; // an older server, or no store: the list below says what matters
      return;
    }
    if (!destinations.length) {
      line.hidden = true;
      return;
    }
    line.replaceChildren(...destinations.map((d, i) => {
      const parts = [i ? " · " : "", `Sync to ${d.destination}: `];
      if (d.pending_objects) {
        parts.push(`${d.pending_objects} object${d.pending_objects === 1 ? "" : "s"} pending ` +
          `(${humanSize(d.pending_bytes)}), oldest saved `, when(d.oldest_pending));
      } else {
        parts.push("up to date");
      }
      parts.push("; last round ", d.last_round_at ? when(d.last_round_at) : "never");
      if (d.last_error) parts.push(el("span", { class: "sync-error" }, `; last error: ${d.last_error}`));
      if (d.problems.length) parts.push(`; ${d.problems.length} left alone (changed at both ends)`);
      if (d.evicted_versions) {
        parts.push(el("span", { class: "sync-evicted" },
          `; evicted here: ${d.evicted_versions} version${d.evicted_versions === 1 ? "" : "s"} ` +
          `(${d.evicted_files} file${d.evicted_files === 1 ? "" : "s"}, ${humanSize(d.evicted_bytes)} freed)`));
      }
      return el("span", { class: "sync-destination" }, ...parts);
    }));
    line.hidden = false;
  }

  function init() {
    busy(0);
    $("where").textContent = window.location.host;
    if (!hasStore) {
      $("no-store").hidden = false;
      $("store-ui").hidden = true;
      $("home").classList.add("no-store");
    }
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      const filters = { type: $("filter-type").value.trim(), workflow: $("filter-workflow").value.trim(),
        q: $("filter-query").value.trim() };
      const target = listHash(filters);
      if (window.location.hash === target) route();
      else window.location.hash = target;
    });
    $("filter-clear").addEventListener("click", () => {
      if (window.location.hash === "#/" || window.location.hash === "") route();
      else window.location.hash = "#/";
    });
    $("more").addEventListener("click", () => loadObjects(false));
    window.addEventListener("hashchange", route);
    route();
  }

  init();
})();
