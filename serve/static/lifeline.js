/*! Lifeline client v1, docs/CLIENT.md */
// Guarantees kept by construction (see docs/CLIENT.md, "Privacy"):
//  - nothing is captured, stored or sent before "analytics" consent; Do Not Track
//    and Global Privacy Control switch everything but "necessary" off;
//  - typed values are never read: form events carry field identifiers only;
//    password / credit-card fields and [data-lifeline-ignore] subtrees are never captured;
//  - every listener, timer, frame handler and API call is wrapped: the client
//    never throws into the host page.
((W, D) => {
  "use strict";
  if (W.lifeline && W.lifeline.v) return;
  const N = W.navigator, root = D.documentElement, now = Date.now;
  const IDLE = 18e5; // 30 minutes without activity end a session
  const MAXQ = 1000; // offline buffer bound, in events
  const URGENT = /^(form_e|form_s|add_|purchase|js_|visib|interv)/; // flushed at once (actors/core/events.py URGENT_TYPES)
  let LS, SS;
  try { LS = W.localStorage; SS = W.sessionStorage; } catch (e) { /* storage blocked: memory only */ }

  // ---------------------------------------------------------------- helpers
  const safe = (fn) => function () { try { return fn.apply(this, arguments); } catch (e) { /* never into the host page */ } };
  const later = (fn, ms) => setTimeout(safe(fn), ms);
  const get = (s, k) => { try { return JSON.parse(s.getItem(k)); } catch (e) { return null; } };
  const put = (s, k, v) => { try { v == null ? s.removeItem(k) : s.setItem(k, JSON.stringify(v)); } catch (e) { /* full or blocked */ } };
  // Page listeners: capture phase, passive, active only while tracking is on, never throwing.
  const on = (t, ev, fn, always) => t.addEventListener(ev, safe((e) => (active || always) && fn(e)), { capture: true, passive: true });
  const str = (v, n) => String(v == null ? "" : v).slice(0, n || 200);
  const round = (v, p) => isFinite(v) && v !== "" && v !== null ? Math.round(v * p) / p : undefined;
  const list = (v) => Array.isArray(v) ? v : v ? String(v).split(/[\s,]+/).filter(Boolean) : [];
  const $ = (s, el) => (el || D).querySelector(s);

  // ----------------------------------------------------------------- config
  // From window.lifelineConfig, then the script tag's data-*, then <meta name="lifeline-*">;
  // "ws" and "beacon" may also be spelled "wsUrl" and "beaconUrl".
  // An unfilled "{{...}}" template value counts as absent.
  const S = D.currentScript || $("script[data-site]") || {}, C = { ...S.dataset, ...W.lifelineConfig };
  const meta = (n) => ($(`meta[name="lifeline-${n}"]`) || {}).content;
  const opt = (k, d) => { const v = C[k] ?? meta(k); return v == null || v === "" || /\{\{/.test(v) ? d : v; };
  const site = opt("site"), base = new URL(S.src || location.href);
  const withSite = (u) => /[?&]site=/.test(u) ? u : u + (u.includes("?") ? "&" : "?") + "site=" + encodeURIComponent(site);
  const wsUrl = withSite(opt("ws") || opt("wsUrl") || `ws${base.protocol == "https:" ? "s" : ""}://${base.hostname}:8765/ws`);
  const beaconUrl = withSite(opt("beacon") || opt("beaconUrl") || base.origin + "/beacon");
  const flushMs = +opt("flushMs", 100), deadMs = +opt("deadClickMs", 400), params = list(opt("params"));
  const doRender = String(opt("render", 1)) != "false";

  // ---------------------------------------------------------------- consent
  const CATS = ["necessary", "analytics", "personalization", "marketing"];
  const privacy = N.doNotTrack == "1" || W.doNotTrack == "1" ? "dnt" : N.globalPrivacyControl === true ? "gpc" : "";
  let consent = get(LS, "ll:c") || list(opt("consent"));
  const granted = (c) => c == "necessary" || (!privacy && consent.includes(c));
  const consentList = () => CATS.filter(granted);
  let active = false;

  // ---------------------------------------------------------------- session
  // A session is one tab's visit: its id lives in sessionStorage (kept across pages
  // and reloads of the tab), its unacknowledged events in localStorage (ll:q:<sid>).
  let sid, tok, seq, last, q = [], acked = 0, sentTo = 0, dropped = 0, beaconTo = 0, saveT = 0;
  const qKey = () => "ll:q:" + sid;
  const rid = (p) => p + Array.from(crypto.getRandomValues(new Uint8Array(16)), (x) => (x % 36).toString(36)).join("");
  const fresh = () => {
    sid = rid("s-");
    tok = null; seq = 0; last = now(); q = [];
    acked = sentTo = beaconTo = 0;
  };
  const load = () => {
    const s = get(SS, "ll:s");
    // "ll:live" is cleared on pagehide; still set means this tab was duplicated
    // (sessionStorage copied from a live tab) and must not reuse that tab's session.
    if (!s || now() - s.last > IDLE || get(SS, "ll:live")) fresh();
    else { ({ sid, tok, seq, last } = s); q = (get(LS, qKey()) || {}).e || []; acked = sentTo = beaconTo = 0; }
    put(SS, "ll:live", 1);
    save(1);
  };
  const save = (sync) => {
    if (!sync) return saveT || (saveT = later(() => save(1), 400));
    clearTimeout(saveT); saveT = 0;
    if (!active) return;
    put(SS, "ll:s", { sid, tok, seq, last });
    put(LS, qKey(), q.length ? { l: last, e: q } : null);
  };

  // ------------------------------------------------------------------- emit
  const hooks = {};
  let flushT = 0;
  const fire = (name, a, b) => (hooks[name] || []).reduce((r, h) => { try { return h(a, b) === false ? false : r; } catch (e) { return r; } }, true);
  const emit = (type, f, urgent) => {
    if (!active) return;
    const t = now();
    if (t - last > IDLE) { beacon(); put(LS, qKey()); fresh(); reconnect(); } // 30 idle minutes: a new session
    const ev = { type, seq: ++seq, ts: t };
    for (const k in f) if (f[k] !== undefined) ev[k] = f[k];
    last = t;
    q.push(ev);
    if (q.length > MAXQ) dropped += q.splice(0, q.length - MAXQ).length;
    fire("event", ev);
    save();
    // urgent events go at once (after the current task, so a burst of them shares one frame)
    if (urgent || URGENT.test(type)) clearTimeout(flushT), flushT = later(flush, 0);
    else flushT || (flushT = later(flush, flushMs));
  };

  // ---------------------------------------------------------------- codec
  // msgpack where the page provides a codec (window.MessagePack with encode/decode, e.g.
  // @msgpack/msgpack's browser bundle or the demo's /msgpack.js), JSON otherwise. Not built
  // in: it would cost ~0.7 KB of the 8 KB budget.
  const codec = () => opt("codec") != "json" && W.MessagePack;

  // -------------------------------------------------------------- transport
  let ws = null, ready = false, tries = 0, retryT = 0, resendT = 0, limits = {};
  const send = (f) => ws && ws.readyState == 1 && (ws.send(codec() ? codec().encode(f) : JSON.stringify(f)), true);
  const flush = () => {
    clearTimeout(flushT); flushT = 0;
    if (!ready) return;
    let batch = [], size = 0;
    const out = () => {
      if (batch.length && send({ t: "events", sid, now: now(), events: batch })) sentTo = batch[batch.length - 1].seq;
      batch = []; size = 0;
    };
    for (const ev of q) {
      if (ev.seq <= sentTo) continue;
      const n = JSON.stringify(ev).length;
      if (batch.length >= (limits.batch || 100) || size + n > 48e3) out();
      batch.push(ev); size += n;
    }
    out();
  };
  const ack = (n) => {
    if (!(n > acked)) return;
    acked = n;
    if (seq < n) seq = n; // never reuse a number the server already holds
    if (sentTo < n) sentTo = n;
    while (q.length && q[0].seq <= n) q.shift();
    save();
  };
  // Keep the unacknowledged tail contiguous from the number the server expects next.
  const renumber = (from) => { q.forEach((ev, i) => { ev.seq = from + i; }); seq = from + q.length - 1; };
  const resend = (ms) => { clearTimeout(resendT); resendT = later(() => { sentTo = acked; flush(); }, ms || 30); };
  const connect = () => {
    clearTimeout(retryT); retryT = 0;
    if (ws || !active || !site) return;
    let s;
    try { s = ws = new WebSocket(wsUrl); } catch (e) { ws = null; return retry(); }
    s.binaryType = "arraybuffer";
    s.onopen = safe(() => send({ t: "hello", v: 1, sid, token: tok, consent: consentList(), vid: get(LS, "ll:v"), now: now() }));
    s.onmessage = safe((m) => s === ws && frame(typeof m.data == "string" ? JSON.parse(m.data) : codec().decode(new Uint8Array(m.data))));
    s.onclose = safe((e) => {
      if (s !== ws) return;
      ws = null; ready = false;
      if (e.code == 4403 || !active) return; // site or origin refused: retrying cannot help
      if (e.code == 4409) { save(1); fresh(); } // taken over by a newer connection (another tab): start our own
      retry(e.code == 4429 ? 3e4 : 0);
    });
  };
  const retry = (min) => { // exponential backoff with "equal jitter", capped at 30 s
    if (!active || retryT) return;
    const d = Math.min(3e4, 500 * 2 ** tries++);
    retryT = later(connect, Math.max(min || 0, d / 2 + Math.random() * d / 2));
  };
  const reconnect = () => {
    const s = ws; ws = null; ready = false;
    try { s && s.close(1000); } catch (e) { /* closing */ }
    tries = 0; connect();
  };
  const frame = (f) => {
    const { t, code } = f || {};
    if (f.sid && f.sid != sid) return;
    if (t == "welcome") {
      if (f.token) tok = f.token;
      limits = f.limits || {};
      ready = true; tries = 0;
      ack(f.acked || 0); sentTo = acked;
      flush(); save(1);
      toChat(f); // the chat sends what waited for a connection
    } else if (/^chat_/.test(t)) { /^[awp]/.test(f.state) && need("chat"); toChat(f); } // an open chat_state loads the chat
    else if (t == "ack") ack(f.seq);
    else if (t == "intervention") intervene(f);
    else if (t == "update") update(f);
    else if (t == "error") {
      toChat(f);
      if (/^(bad_(token|sid|vid)|erased)$/.test(code)) { // the server will not resume this session
        code[0] == "e" && put(LS, "ll:v", rid("v-")); // this visitor was erased (in another tab): a new one
        fresh(); reconnect();
      }
      else if (code == "unknown_session") reconnect();
      else if (f.expected || /^(sequence_gap|rate_limited|overloaded)$/.test(code)) {
        // resend everything unacknowledged; if the server expects a number below our oldest
        // (events dropped here when the offline buffer overflowed), close that gap first
        const x = f.expected;
        if (x > acked && q.length && x < q[0].seq) renumber(x);
        resend(code[0] == "s" ? 30 : 1e3 + Math.random() * 2e3);
      } else if (f.seq) dropped++; // that event is refused for good; its number is consumed and the next ack covers it
    }
  };
  // Page hide: the unsent tail leaves by sendBeacon (fetch keepalive as a fallback), under 64 KB in all.
  // What does not fit stays in localStorage for the next page of the session.
  const beacon = () => {
    const chunk = [];
    let size = 200;
    for (const ev of q) if (ev.seq > Math.max(acked, beaconTo) && (size += JSON.stringify(ev).length) < 6e4) chunk.push(ev);
    if (!active || !chunk.length) return;
    const body = JSON.stringify({ sid, token: tok, now: now(), events: chunk });
    let ok;
    try { ok = N.sendBeacon(beaconUrl, body); } catch (e) { /* no sendBeacon */ }
    ok || fetch(beaconUrl, { method: "POST", body, keepalive: true });
    beaconTo = chunk[chunk.length - 1].seq;
  };

  // ---------------------------------------------------------------- capture
  const secret = (el) => el.type == "password" || /^cc-/.test(el.autocomplete) ||
    /pass|card|cc-?(num|csc|cvc|exp)|cvv|cvc|iban|ssn|secret/i.test(el.name + " " + el.id);
  const isField = (el) => /^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName);
  const ignored = (el) => !el || !el.closest || !!el.closest("[data-lifeline-ignore]") || (isField(el) && secret(el));
  const sel = (el) => { // short CSS path: at most 4 steps of tag#id or tag.class.class, stopping at an id or body
    const out = [];
    for (let n = 0; el && el.nodeType == 1 && n < 4 && out[0] != "body"; n++, el = el.parentElement) {
      const id = /^[a-z][\w-]{0,40}$/i.test(el.id), cls = (el.getAttribute("class") || "").match(/(^|\s)[a-z][\w-]{0,30}(?=\s|$)/gi) || [];
      out.unshift(el.localName + (id ? "#" + el.id : cls.slice(0, 2).map((c) => "." + c.trim()).join("")));
      if (id) break;
    }
    return str(out.join(">"));
  };
  const fieldId = (el) => str(el.id || el.name || sel(el));
  const formId = (f) => f ? str(f.id || f.getAttribute("name") || sel(f)) : "-";
  // what was clicked; rage-click detection skips text inputs and steppers
  const kindOf = (el) => el.closest("[type=number],[type=range],[role=spinbutton]") ? "stepper" :
    el.closest("button,[role=button],[type=submit],[type=button],[type=checkbox],[type=radio],summary") ? "button" :
    el.closest("input,textarea,select,[contenteditable]") ? "text_input" : el.closest("a[href]") ? "link" : "other";

  // page views, single-page-app history changes included; only the query parameters named in `params` are kept
  let lastPath = "";
  const pageView = () => {
    let kept = new URLSearchParams(location.search);
    [...kept.keys()].forEach((k) => params.includes(k) || kept.delete(k));
    const path = str(location.pathname + ((kept += "") && "?" + kept), 300);
    if (path == lastPath) return;
    let ref;
    try { ref = !lastPath && D.referrer && new URL(D.referrer); } catch (e) { /* opaque */ }
    lastPath = path;
    emit("page_view", { path, page_type: str(meta("page") || D.body && D.body.dataset.page, 40) || undefined, ref: ref ? str(ref.origin + ref.pathname, 300) : undefined });
  };
  const navigated = () => { reaction(); pageView(); };
  for (const m of ["pushState", "replaceState"]) {
    const orig = history[m];
    history[m] = function () { const r = orig.apply(this, arguments); active && safe(navigated)(); return r; };
  }
  on(W, "popstate", navigated);
  on(W, "hashchange", navigated);

  // Clicks and the dead-click window: did the page react (DOM mutation, navigation,
  // scroll or focus change) within deadMs? A burst of 3+ clicks within 1 s and
  // 30 px (a rage click) is sent at once, after the click's own task, instead of after the window.
  let pend = null, burst = [], lastEl = null, mo = null;
  const settle = (reacted) => {
    const p = pend;
    if (!p) return;
    pend = null; clearTimeout(p.t); mo && mo.disconnect();
    p.f.reacted = !!reacted;
    emit("click", p.f, p.u);
  };
  const reaction = () => settle(true);
  on(D, "click", (e) => {
    const el = e.target;
    if (ignored(el)) return;
    settle(false); // a new click closes the previous one's window
    lastEl = el;
    const t = now(), x = Math.round(e.pageX), y = Math.round(e.pageY);
    burst = burst.filter(([bt, bx, by]) => t - bt < 1e3 && Math.abs(bx - x) < 30 && Math.abs(by - y) < 30);
    burst.push([t, x, y]);
    // in a burst the window is only the current task (synchronous reactions) and the click goes at once
    pend = { f: { selector: sel(el), x, y, target: kindOf(el) }, u: burst.length > 2 };
    pend.t = later(settle, pend.u ? 0 : deadMs);
    mo = mo || new MutationObserver(safe((ms) => ms.some((m) => !U.h || !(U.h.contains(m.target) || m.addedNodes[0] == U.h)) && reaction()));
    mo.observe(root, { childList: true, subtree: true, attributes: true, characterData: true });
  });
  on(D, "focusin", (e) => {
    const f = e.target;
    if (pend && !f.contains(lastEl)) reaction(); // focusing the clicked control itself is no reaction
    if (isField(f) && !ignored(f)) { f._ll = 0; emit("form_focus", { form: formId(f.form), field: fieldId(f) }); }
    U.r();
  });
  on(D, "input", (e) => { const f = e.target; if (isField(f) && !ignored(f)) f._ll = (f._ll || 0) + 1; }); // counted, never read
  on(D, "focusout", (e) => {
    const f = e.target;
    if (f._ll && isField(f) && !ignored(f)) emit("form_input", { form: formId(f.form), field: fieldId(f), count: f._ll });
    f._ll = 0;
  });

  // validation errors: the "invalid" event and aria-invalid="true"
  let errSeen = null; // fields already reported in this task: one failure seen two ways counts once
  const formError = (f, code) => {
    const k = fieldId(f);
    if (!errSeen) { errSeen = new Set(); later(() => { errSeen = null; }, 0); }
    if (errSeen.has(k)) return;
    errSeen.add(k);
    emit("form_error", { form: formId(f.form || f.closest("form")), field: k, code });
  };
  on(D, "invalid", ({ target: f }) => { // code: the ValidityState flag that failed, e.g. "valueMissing", "patternMismatch"
    let code = "customError";
    for (const k in f.validity) if (f.validity[k] && k != "valid") { code = k; break; }
    ignored(f) || formError(f, code);
  });
  new MutationObserver(safe((ms) => active && ms.forEach(({ target: f }) => f.getAttribute("aria-invalid") == "true" && !ignored(f) && formError(f, "aria"))))
    .observe(root, { attributes: true, subtree: true, attributeFilter: ["aria-invalid"] });
  // Our capture listener runs before the site's own validation: the verdict is read once
  // the event has bubbled back up to window (or 30 ms later if the site stopped it).
  let sub = null;
  const submitted = () => {
    const s = sub;
    if (!s) return;
    sub = null; clearTimeout(s.t);
    const bad = [...s.form.querySelectorAll("[aria-invalid=true]")].filter((f) => !ignored(f));
    bad.forEach((f) => formError(f, "aria")); // marked now, or still marked since the last try
    emit("form_submit", { form: formId(s.form), ok: !bad.length && !$(":invalid", s.form) });
  };
  on(D, "submit", (e) => {
    if (ignored(e.target)) return;
    submitted();
    sub = { form: e.target, t: later(submitted, 30) };
  });
  W.addEventListener("submit", safe(submitted));

  // scroll depth (bottom of the viewport, 0..1) and direction, throttled
  let scrollT = 0, lastY = 0, lastDepth = -1, lastDir;
  const scrolled = () => scrollT || (scrollT = later(() => {
    scrollT = 0;
    const y = W.scrollY, depth = round(Math.min(1, (y + W.innerHeight) / root.scrollHeight), 100), dir = y < lastY ? "up" : "down";
    lastY = y;
    if (Math.abs(depth - lastDepth) >= 0.05 || dir != lastDir) emit("scroll", { depth: lastDepth = depth, dir: lastDir = dir });
  }, 250));

  // mouse movement summaries for thrash detection (more than 4 direction changes within 225 ms):
  // sampled at most every 16 ms, one summary per burst of movement (at most 2 s)
  let mv = null, mvT = 0;
  const mouseEnd = () => {
    clearTimeout(mvT);
    const m = mv; mv = null;
    if (m && m.dist >= 20) emit("mouse", { dur: m.lt - m.t0, dist: Math.round(m.dist), turns: m.turns.slice(0, 64) });
  };
  on(D, "mousemove", (e) => {
    const t = now(), { clientX: x, clientY: y } = e;
    if (!mv) mv = { t0: t, lt: t, x, y, dist: 0, dir: 0, turns: [] };
    else if (t - mv.lt < 16) return;
    const dx = x - mv.x, dir = dx > 2 ? 1 : dx < -2 ? -1 : 0;
    mv.dist += Math.hypot(dx, y - mv.y);
    if (dir && mv.dir && dir != mv.dir) mv.turns.push(t - mv.t0); // a horizontal direction change
    if (dir) mv.dir = dir;
    Object.assign(mv, { x, y, lt: t });
    clearTimeout(mvT);
    t - mv.t0 > 2e3 ? mouseEnd() : (mvT = later(mouseEnd, 300));
  });

  // hover dwell (>= 1 s) on interactive elements
  let hov = null;
  const hoverEnd = () => {
    const h = hov, d = h && now() - h.t; hov = null;
    if (d >= 1e3) emit("hover", { selector: sel(h.el), dwell: Math.min(d, 6e5) });
  };
  on(D, "mouseover", (e) => {
    let el = e.target.closest && e.target.closest("a,button,input,select,textarea,img,video,[data-lifeline-hover]");
    if (ignored(el)) el = null;
    if (hov && hov.el == el) return;
    hoverEnd();
    if (el) hov = { el, t: now() };
  });

  // media events of every video/audio element, also ones added later (media events do not bubble: capture)
  const media = (m) => str(m.id || m.currentSrc.split(/[?#]/)[0].split("/").pop() || sel(m));
  const mt = (v) => round(v, 10);
  on(D, "timeupdate", ({ target: m }) => { if (!m.seeking) m._llt = m.currentTime; });
  on(D, "seeking", ({ target: m }) => { if (m._llf == null) m._llf = m._llt || 0; });
  on(D, "seeked", ({ target: m }) => {
    ignored(m) || emit("video_seek", { media: media(m), from: mt(m._llf), to: mt(m.currentTime), dur: mt(m.duration) });
    m._llf = null; m._llt = m.currentTime;
  });
  for (const n of ["play", "pause", "ended", "ratechange"]) on(D, n, ({ target: m }) => {
    if (!/^(VIDEO|AUDIO)$/.test(m.tagName) || ignored(m) || (n == "pause" && m.ended)) return;
    const rate = n == "ratechange";
    emit(rate ? "video_rate" : "video_" + n, { media: media(m), t: mt(m.currentTime), dur: rate ? undefined : mt(m.duration), rate: rate ? m.playbackRate : undefined });
  });

  // JS errors of the page: deduplicated, at most 10 per page
  const errs = new Set();
  const jsError = (msg, src) => {
    const k = (msg = str(msg, 300)) + (src = str(src, 300));
    if (errs.has(k) || errs.size >= 10) return;
    errs.add(k);
    emit("js_error", { msg, src: src || undefined });
  };
  W.addEventListener("error", safe((e) => active && e.message && jsError(e.message, e.filename && e.filename.split(/[?#]/)[0] + ":" + e.lineno)));
  W.addEventListener("unhandledrejection", safe(({ reason: r }) => active && jsError("Rejection: " + (r && r.message || r))));

  // visibility, page hide, network (a page with an open WebSocket is not kept in the back/forward cache)
  let vis = "visible";
  const visibility = (state) => state != vis && emit("visibility", { state: vis = state });
  on(D, "visibilitychange", () => {
    const hidden = D.visibilityState == "hidden";
    if (hidden) { settle(false); mouseEnd(); hoverEnd(); }
    visibility(D.visibilityState);
    if (hidden) { save(1); ready || beacon(); }
  });
  on(W, "pagehide", () => {
    // Chrome fires visibilitychange after pagehide: say "hidden" now, so the tail goes in one beacon
    reaction(); submitted(); mouseEnd(); hoverEnd(); visibility("hidden");
    beacon(); save(1);
    put(SS, "ll:live");
  });
  on(W, "online", () => ws || ((tries = 0), connect()));

  // ---------------------------------------------------------------- modules
  // Code the tracker does not always need loads on demand from beside this script, as
  // lifeline-NAME.js (the option NAME overrides its URL), and installs itself through
  // api._m(NAME, install): the cards ("ui") and the help chat ("chat"). need(NAME, fn)
  // runs fn once the module is here; calls made before wait, in order.
  const mods = {}; // name -> { s: its <script> while loading, w: waiting calls, on: installed }
  const need = (name, fn) => {
    const m = mods[name] || (mods[name] = { w: [] });
    if (m.on) return fn && fn();
    fn && m.w.push(fn);
    if (m.s || !D.head) return;
    m.s = D.createElement("script");
    m.s.src = opt(name) || new URL(`lifeline-${name}.js`, base);
    m.s.onerror = () => { m.s.remove(); m.s = 0; }; // the next call tries again
    D.head.appendChild(m.s);
  };

  // ---------------------------------------------------------- interventions
  // Cards are drawn by lifeline-ui.js (the first intervention to draw, or an idle moment
  // after the start); U holds its functions (render, x: remove, r: relayout, c: remove
  // those matching, u: show an update, h: its host element), no-ops until it is here.
  const ivs = {}, nop = () => {}, U = { r: nop, c: nop };
  const ui = (fn) => need("ui", fn);
  const report = (iv, what) => {
    if (iv["_" + what] || (what != "shown" && (iv._accepted || iv._dismissed))) return;
    iv["_" + what] = 1;
    // "accept" / "dismiss" hooks; an accepted help offer opens the chat, unless a hook returned false
    if (what != "shown") { iv.el && U.x(iv); fire(what.slice(0, -2), iv) && what[0] == "a" && iv.kind == "help_offer" && chat(iv.iid); }
    emit("intervention_" + what, { iid: iv.iid });
  };
  on(W, "scroll", () => { active && (reaction(), scrolled()); U.r(); }, 1); // capture (when on) and placement
  const intervene = (f) => {
    if (!f.iid || ivs[f.iid] || !/^(help_offer|form_hint|content_suggestion|recommendations)$/.test(f.kind) || (f.kind == "recommendations" && !granted("personalization"))) return;
    const iv = ivs[f.iid] = {
      iid: str(f.iid), kind: f.kind, text: f.text, target: f.target, items: f.items || [], score: f.score, reasons: f.reasons || [], seq: f.seq
    };
    let own = !doRender;
    const m = (what) => safe(() => report(iv, what));
    const draw = safe(() => ui(() => U.render(iv)));
    Object.assign(iv, { shown: m("shown"), accept: m("accepted"), dismiss: m("dismissed"), render: draw, preventDefault: () => { own = 1; } });
    fire("intervention", iv) && !own && draw();
  };
  const update = (f) => {
    const iv = ivs[f.iid];
    if (!iv || (f.source == "llm" && !granted("personalization"))) return; // LLM-written text is personalization
    if (typeof f.text == "string") iv.text = f.text, iv.link = f.link; // a new text brings its own link, or none
    if (Array.isArray(f.items) && granted("personalization")) iv.items = f.items;
    fire("update", iv);
    iv.el && U.u(iv, f);
  };
  // ------------------------------------------------------------------- chat
  // The help chat is lifeline-chat.js, loaded when the visitor opens it (an accepted help
  // offer, lifeline.chat.open(), a click on [data-lifeline-chat]) or when the server restores
  // an open chat after a navigation (a chat_state with an open state). CH holds its
  // functions once it is here (f: take a frame, o: open the panel); frames wait until then.
  const CH = {};
  const chat = (iid) => need("chat", () => CH.o(iid));
  const toChat = (f) => mods.chat && need("chat", () => CH.f(f));
  on(D, "click", (e) => e.target.closest && e.target.closest("[data-lifeline-chat]") && chat(), 1);

  // -------------------------------------------------------------- lifecycle
  // Unsent queues in localStorage: all of them, or those of sessions idle past the session timeout.
  const sweep = (all) => {
    try {
      for (let i = LS.length; i--;) { const k = LS.key(i), o = /^ll:q:/.test(k) && get(LS, k); if (o && (all || now() - o.l > IDLE)) LS.removeItem(k); }
    } catch (e) { /* storage blocked */ }
  };
  const start = () => {
    if (active || !site || !granted("analytics")) return;
    active = true;
    get(LS, "ll:v") || put(LS, "ll:v", rid("v-")); // the pseudonymous visitor id: first-party, made with analytics consent
    doRender && later(ui, 2e3); // the cards' code, before the first intervention needs it
    sweep(); // forget queues of sessions that ended (their tail went by beacon when their page was hidden)
    load();
    lastPath = "";
    pageView();
    connect();
  };
  const stop = () => { // analytics consent withdrawn: disconnect, remove our UI, clear local state
    settle(false);
    active = false;
    const s = ws; ws = null; ready = false;
    [retryT, flushT, saveT].forEach(clearTimeout);
    retryT = flushT = saveT = 0;
    try { s && s.close(1000); } catch (e) { /* closing */ }
    U.c(Boolean);
    sweep(1);
    put(SS, "ll:s"); put(SS, "ll:live"); put(LS, "ll:v"); // the next grant is a new visitor
    q = []; sid = null;
  };
  const setConsent = (c) => {
    const prev = consentList().join();
    consent = list(c).filter((x) => CATS.indexOf(x) > 0);
    put(LS, "ll:c", consent); // the choice itself is "necessary" storage
    const cur = consentList();
    if (cur.join() != prev) {
      ready && send({ t: "consent", sid, consent: cur });
      granted("analytics") ? start() : active && stop();
      granted("personalization") || U.c((iv) => iv.kind == "recommendations");
      fire("consent", cur);
    }
    return cur;
  };

  // ------------------------------------------------------------- public API
  const api = {
    v: 1,
    track(name, p) { // conversions: add_to_cart, remove_from_cart, purchase; any other name is a "custom" event
      p = p && typeof p == "object" ? p : {};
      name = str(name, 64);
      if (/^(add_to|remove_from)_cart$/.test(name))
        emit(name, { item: str(p.item || p.id), qty: round(p.qty, 1), price: name[0] == "a" ? round(p.price, 100) : undefined });
      else if (name == "purchase")
        emit(name, { value: round(p.value, 100), items: Array.isArray(p.items) ? p.items.slice(0, 50).map((x) => str(x && (x.id || x.item) || x)) : undefined });
      else emit("custom", { name, props: Object.fromEntries(Object.entries(p).filter(([, v]) => /^[sbn]/.test(typeof v)).slice(0, 20).map(([k, v]) => [str(k, 40), typeof v == "string" ? str(v) : v])) });
    },
    on: (ev, fn) => (hooks[ev] = hooks[ev] || []).push(fn),
    stats: () => ({ sid, seq: seq || 0, acked, queued: q.length, dropped, connected: ready, active, privacy }),
    consent: {
      get: consentList,
      set: setConsent,
      withdraw: (c) => setConsent(c ? consent.filter((x) => !list(c).includes(x)) : [])
    },
    // The visitor's rights (docs/CLIENT.md): a copy of all that is held about them, or its
    // erasure, authenticated by this session's token. After an erasure this visitor starts
    // afresh (a new visitor id and session): the old id is refused from then on.
    privacy: {
      access: () => rights("access"),
      erase: () => rights("erase").then((r) => (r.erased && active && (stop(), start()), r))
    },
    chat: { open: () => chat() },
    // A module (lifeline-ui.js, lifeline-chat.js) installs itself with what it needs of the tracker.
    // url: the one rule for links drawn from server text (http(s) or relative; no javascript: or data:).
    // tx: send a frame for this session once the server welcomed it (false when it cannot).
    _m: (name, install) => {
      const m = mods[name] || (mods[name] = { w: [] });
      install({ U, CH, safe, str, $, on, fire, report, lastEl: () => lastEl, tx: (f) => ready && send({ ...f, sid }), live: () => active,
        url: (u) => /^(https?:|\/|\?)/.test(u) ? u : "#" });
      m.on = 1;
      m.w.splice(0).forEach((f) => safe(f)());
    }
  };
  const rights = (what) => fetch(withSite(base.origin + "/v1/visitor/" + what), { method: "POST", body: JSON.stringify({ sid, token: tok }) }).then((r) => r.json());
  for (const o of [api, api.consent, api.privacy, api.chat]) for (const k in o) if (typeof o[k] == "function") o[k] = safe(o[k]);
  W.lifeline = api;
  // calls queued before the script loaded (hooks first, so they see the first page view):
  // window.lifelineQueue = [["on", "intervention", fn], ["consent.set", ["analytics"]], ["track", "purchase", {...}]]
  const call = safe(([m, ...a]) => { const [x, y] = m.split("."); (y ? api[x][y] : api[x])(...a); });
  (Array.isArray(W.lifelineQueue) ? W.lifelineQueue : []).forEach(call);
  W.lifelineQueue = { push: call };
  safe(start)();
  safe(() => W.dispatchEvent(new Event("lifeline:ready")))();
})(window, document);
