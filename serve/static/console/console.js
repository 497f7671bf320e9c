/* Lifeline console: renders a page's view (GET /api/view/{page}) into KPIs, charts, tables and forms.
 * One generic renderer: what a page shows is what its view JSON holds, which the server builds and
 * authorises (serve/console/views.py). The Live and Support pages keep themselves current over
 * server-sent events.
 * State-changing calls send the page's CSRF token; nothing here decides who may do what. */
"use strict";
(function () {
  const main = document.getElementById("main");
  if (!main) return;
  const page = main.dataset.page;
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const statusEl = main.querySelector(".status");
  const charts = {};
  const PALETTE = ["#0b5cad", "#d97706", "#1a7f37", "#b42318", "#6d28d9", "#0e7490", "#be185d", "#57606a"];

  function say(text, bad) { statusEl.textContent = text || ""; statusEl.classList.toggle("bad", !!bad); }
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v; else if (v !== undefined && v !== null) e.setAttribute(k, v);
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k);
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") return Number.isInteger(v) ? v.toLocaleString("en") : v.toLocaleString("en", { maximumFractionDigits: 3 });
    if (Array.isArray(v)) return v.map(fmt).join(", ");
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }
  async function api(method, url, body) {
    const opts = { method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
    if (method !== "GET") { opts.headers["X-CSRF-Token"] = csrf; }
    if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    const r = await fetch(url, opts);
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error((data.code ? data.code + ": " : "") + (data.detail || r.status));
    return data;
  }
  function query() { return new URLSearchParams(location.search); }
  function viewParams() {
    const q = query();
    for (const [k, v] of Object.entries(main.dataset)) if (k !== "page" && k !== "role") q.set(k, v);
    return q;
  }

  // ---- rendering ---------------------------------------------------------------------------
  function section(id) {
    let s = document.getElementById("sec-" + id);
    if (!s) { s = el("section", { id: "sec-" + id }); main.append(s); }
    return s;
  }
  function renderKpis(kpis) {
    const s = section("kpis");
    s.replaceChildren(el("div", { class: "kpis", role: "list" }, ...kpis.map((k) =>
      el("div", { class: "kpi " + (k.state || ""), role: "listitem" },
        el("div", { class: "label", text: k.label }),
        el("div", { class: "value" + (String(k.value).length > 12 ? " long" : ""), text: fmt(k.value) + (k.unit ? " " + k.unit : "") })))));
  }
  function chartConfig(c) {
    return {
      type: c.type === "bar" ? "bar" : "line",
      data: { labels: c.labels, datasets: c.series.map((s, i) => ({
        label: s.name, data: s.values, borderColor: s.color || PALETTE[i % PALETTE.length],
        backgroundColor: (s.color || PALETTE[i % PALETTE.length]) + (c.type === "bar" ? "cc" : "33"),
        borderWidth: 2, pointRadius: c.labels.length > 60 ? 0 : 2, tension: 0.2, stepped: !!s.stepped,
        fill: false, yAxisID: s.axis || "y" })) },
      options: { responsive: true, maintainAspectRatio: false, animation: false,
        interaction: { mode: "index", intersect: false },
        plugins: { legend: { position: "bottom" } },
        scales: Object.assign({ x: { stacked: !!c.stacked, title: { display: !!c.x, text: c.x || "" } },
          y: { stacked: !!c.stacked, beginAtZero: true, suggestedMax: c.ymax, title: { display: !!c.y, text: c.y || "" } } },
          c.y2 ? { y2: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false }, title: { display: true, text: c.y2 } } } : {}) },
    };
  }
  function renderCharts(list) {
    if (!list.length) return;
    const s = section("charts");
    let grid = s.querySelector(".grid");
    if (!grid) { grid = el("div", { class: "grid" }); s.append(grid); }
    for (const c of list) {
      const summary = c.title + ": " + c.series.map((x) => x.name).join(", ") + " over " + c.labels.length + " points";
      if (charts[c.id]) {
        const ch = charts[c.id]; const cfg = chartConfig(c);
        ch.data.labels = cfg.data.labels; ch.data.datasets = cfg.data.datasets; ch.update("none");
        ch.canvas.setAttribute("aria-label", summary);
        continue;
      }
      const canvas = el("canvas", { role: "img", "aria-label": summary });
      const fig = el("figure", { id: "chart-" + c.id }, el("figcaption", { text: c.title }), el("div", { class: "chart" }, canvas));
      grid.append(fig);
      if (window.Chart) charts[c.id] = new window.Chart(canvas, chartConfig(c));
    }
  }
  function cell(row, col) {
    const v = row[col.key];
    const td = el("td", { class: col.num ? "num" : null });
    if (col.link && row[col.link]) td.append(el("a", { href: row[col.link], text: fmt(v) }));
    else td.textContent = fmt(v);
    return td;
  }
  function actionButton(a) {
    const b = el("button", { type: "button", class: a.secondary ? "secondary" : null, text: a.label });
    b.addEventListener("click", async () => {
      if (a.confirm && !window.confirm(a.confirm)) return;
      b.disabled = true;
      try {
        const r = await api(a.method, a.url, a.body || {}); say(a.done || ("Done: " + a.label), false);
        if (a.download) { saveJson(r, a.download); return; }  // a file, fetched by POST (no id in a URL)
        if (r && r.token) say("New token (shown once): " + r.token);
        if (r && r.view) render(r.view); else await load();  // an action that answers the page's view
      }
      catch (e) { say(e.message, true); } finally { b.disabled = false; }
    });
    return b;
  }
  function saveJson(obj, name) {
    const url = URL.createObjectURL(new Blob([JSON.stringify(obj)], { type: "application/json" }));
    const a = el("a", { href: url, download: name });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }
  function renderTables(list) {
    for (const t of list) {
      const s = section("table-" + t.id);
      const head = el("tr", {}, ...t.columns.map((c) => el("th", { scope: "col", class: c.num ? "num" : null, text: c.label })));
      const hasActions = t.rows.some((r) => r._actions && r._actions.length);
      if (hasActions) head.append(el("th", { scope: "col", text: "Actions" }));
      const body = t.rows.map((r) => {
        const tr = el("tr", {}, ...t.columns.map((c) => cell(r, c)));
        if (hasActions) tr.append(el("td", {}, ...(r._actions || []).map(actionButton)));
        return tr;
      });
      const table = el("table", {}, el("caption", { text: t.title }), el("thead", {}, head), el("tbody", {}, ...body));
      const kids = [el("h2", { text: t.title }), el("div", { class: "table-wrap" }, table)];
      if (!t.rows.length) kids.push(el("p", { class: "note", text: t.empty || "Nothing yet." }));
      const mayExport = ["analyst", "admin"].includes(main.dataset.role);  // the server checks too
      if (t.csv !== false && mayExport) {
        const q = viewParams(); const href = "/api/export/" + page + "/" + t.id + ".csv?" + q.toString();
        kids.push(el("a", { class: "csv", href, download: page + "-" + t.id + ".csv", text: "Export " + t.title + " as CSV" }));
      }
      table.querySelector("caption").classList.add("visually-hidden");
      s.replaceChildren(...kids);
    }
  }
  function renderForms(list) {
    for (const f of list) {
      const s = section("form-" + f.id);
      const form = el("form", { "aria-label": f.title });
      for (const fld of f.fields) {
        const id = f.id + "-" + fld.name;
        let input;
        if (fld.type === "select") input = el("select", { id, name: fld.name }, ...fld.options.map((o) => el("option", { value: o, text: o })));
        else if (fld.type === "textarea") { input = el("textarea", { id, name: fld.name, spellcheck: "false" }); input.value = fld.value || ""; }
        else input = el("input", { id, name: fld.name, type: fld.type || "text", value: fld.value || "", autocomplete: fld.type === "password" ? "new-password" : "off" });
        if (fld.value && fld.type === "select") input.value = fld.value;
        form.append(el("label", { for: id, text: fld.label }), input);
      }
      form.append(el("button", { type: "submit", text: f.submit || "Save" }));
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const body = {};
        for (const fld of f.fields) {
          const v = form.elements[fld.name].value;
          body[fld.name] = fld.json ? (() => { try { return JSON.parse(v); } catch (e) { return v; } })() : v;
        }
        const payload = f.body_field ? body[f.body_field] : body;  // a form whose one field is the body
        try {
          const r = await api(f.method, f.url, payload);
          if (f.view) { render(r); return; }  // a form that answers the page's view (the Visitors look-up)
          say(r && r.token ? "New token (shown once): " + r.token : (f.done || "Saved."), false); if (!(r && r.token)) await load();
        }
        catch (e) { say(e.message, true); }
      });
      s.replaceChildren(el("h2", { text: f.title }), el("div", { class: "tools" }, form));
      form.className = "tools";
    }
  }
  function renderFilters(filters) {
    if (!filters || !filters.length) return;
    const s = section("filters");
    if (s.childElementCount) return;
    const q = query();
    const form = el("form", { class: "tools", method: "get", "aria-label": "Filters" });
    for (const fl of filters) {
      const id = "f-" + fl.name;
      let input;
      if (fl.options) input = el("select", { id, name: fl.name }, ...fl.options.map((o) => el("option", { value: o[0], text: o[1] })));
      else input = el("input", { id, name: fl.name, type: fl.type || "text", placeholder: fl.placeholder || "" });
      input.value = q.get(fl.name) || fl.value || "";
      form.append(el("label", { for: id }, fl.label, input));
    }
    form.append(el("button", { type: "submit", text: "Apply" }));
    s.replaceChildren(form);
  }
  function renderImages(list) {
    if (!list.length) return;
    const s = section("images");
    s.replaceChildren(el("h2", { text: "Plots" }), el("div", { class: "grid" }, ...list.map((im) =>
      el("figure", {}, el("figcaption", { text: im.title }), el("img", { src: im.src, alt: im.alt || im.title, loading: "lazy" })))));
  }
  function render(view) {
    renderFilters(view.filters);
    if (view.kpis) renderKpis(view.kpis);
    renderCharts(view.charts || []);
    renderTables(view.tables || []);
    renderForms(view.forms || []);
    renderImages(view.images || []);
    const notes = section("notes");
    notes.replaceChildren(...(view.notes || []).map((n) => el("p", { class: "note", text: n })));
    if (!main.dataset.loaded) main.dataset.loadedAt = String(performance.now());  // page-load figure
    main.dataset.loaded = "1";
  }

  async function load() {
    // A reload clears only its own earlier failure: an action's message stays until the next action.
    try { render(await api("GET", "/api/view/" + page + "?" + viewParams().toString())); if (statusEl.dataset.from === "load") { say(""); delete statusEl.dataset.from; } }
    catch (e) { say("Could not load: " + e.message, true); statusEl.dataset.from = "load"; }
  }
  // A support chat: the chat, its conversation and the reply box first, the session's journey below.
  if (page === "chat") ["kpis", "table-chat", "table-conversation", "form-reply"].forEach((id) => section(id));
  // Pages that keep themselves current: the Live page, the Support queue and one support chat.
  const STREAMS = { live: "/api/live/stream", support: "/api/support/stream", chat: "/api/support/stream" };
  load().then(() => {
    if (!STREAMS[page] || !window.EventSource) return;
    const q = page === "chat" ? "?" + new URLSearchParams({ site: main.dataset.site, sid: main.dataset.sid }).toString() : "";
    const src = new EventSource(STREAMS[page] + q);
    src.onmessage = (m) => { try { render(JSON.parse(m.data)); main.dataset.updates = String(Number(main.dataset.updates || 0) + 1); } catch (e) { say(e.message, true); } };
    src.onerror = () => say("Live updates interrupted; retrying…", true);
    src.onopen = () => say("");
  });
})();
