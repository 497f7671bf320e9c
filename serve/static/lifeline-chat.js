/*! Lifeline help chat v1, docs/CLIENT.md */
// The help chat panel: a conversation with the site's assistant, or a person who takes over,
// over the tracker's WebSocket (frames chat_*: docs/PROTOCOL.md, "Help chat"). Loaded on
// demand by lifeline.js, from beside it, when the visitor opens the chat (an accepted help
// offer, lifeline.chat.open(), a click on [data-lifeline-chat]) or when the server restores
// an open chat after a navigation; a visit without a chat never loads it.
//  - Drawn in its own shadow root (host #lifeline-chat, [data-lifeline-ignore]: the tracker
//    captures nothing in it), as a dialog: labelled, focus moved in and kept in (Tab wraps),
//    Esc minimises and gives focus back, answers announced once through a live region
//    (never every streamed piece), a bottom sheet on narrow screens.
//  - The only typed text it sends is what the visitor types into its own boxes; it never
//    reads the page's fields. Messages wait (shown as "sending") until the server echoes
//    them by their mid; a message the server did not get is resent after a reconnect.
//  - Open or minimised is remembered per tab in sessionStorage["ll:chat"] (only with
//    consent); the turns themselves come back from the server (chat_state after welcome).
// Limits: one chat per tab's session; text is plain (no markup), links only in citations.
((W, D) => {
  "use strict";
  const L = W.lifeline;
  L && L._m && L._m("chat", ({ CH, safe, str, tx, live, url }) => {
    let SS;
    try { SS = W.sessionStorage; } catch (e) { /* storage blocked: not remembered */ }
    // "o" open, "m" minimised, "e" ended here but not yet heard by the server
    const mem = (v) => { try { live() && v ? SS.setItem("ll:chat", v) : SS.removeItem("ll:chat"); } catch (e) { /* blocked */ } };
    const recall = () => { try { return SS.getItem("ll:chat"); } catch (e) { return null; } };
    const OPEN = (s) => /^(assistant|waiting_for_person|person)$/.test(s);
    const MAX = 1000; // characters in one message (actors/core/chat.py ChatLimits.max_chars)
    // Error codes (docs/PROTOCOL.md) as the visitor reads them; codes not listed are not the chat's.
    const SAY = {
      not_open: "This chat had ended. Starting a new one…",
      empty_message: "Type a message first.",
      message_too_long: `That message is too long: at most ${MAX} characters.`,
      rate_limited: "You're sending messages quickly. Please wait a moment and try again.",
      wrong_state: "That can't be done right now.",
      chat_unavailable: "The chat isn't available right now. Please try again in a little while.",
      consent: "The chat needs your permission: allow help in this site's privacy choices."
    };
    // Open (.x), the panel is above the cards (2147483000): on a phone a hint must not cover the sheet.
    const CSS = ":host{all:initial;position:fixed;right:16px;bottom:16px;z-index:2147482999;font:14px/1.45 system-ui,sans-serif;color:#223}:host(.x){z-index:2147483001}" +
      "*{box-sizing:border-box}[hidden]{display:none!important}" +
      ".p{width:370px;height:min(580px,calc(100vh - 32px));display:flex;flex-direction:column;background:#fff;border-radius:14px;" +
      "box-shadow:0 8px 30px #0003;overflow:hidden;animation:a .2s}@keyframes a{from{opacity:0;transform:translateY(8px)}}" +
      "@media(prefers-reduced-motion){.p{animation:none}}" +
      "header{display:flex;align-items:center;gap:6px;padding:10px 10px 10px 16px;background:#43c;color:#fff}" +
      ".h{flex:1;min-width:0}h2{margin:0;font-size:16px}.w{margin:0;font-size:13px;opacity:.92}" +
      "button{font:600 14px system-ui,sans-serif;cursor:pointer;border:0;border-radius:9px;padding:8px 14px;min-height:40px;background:#43c;color:#fff}" +
      "header button{background:#ffffff26;color:#fff;padding:6px 12px}.s{background:#eef;color:#43c}" +
      ".cf{display:flex;flex-wrap:wrap;gap:8px;align-items:center;padding:10px 14px;background:#fff7e6}.cf span{flex:1 0 100%}" +
      "ol{flex:1;overflow:auto;list-style:none;margin:0;padding:14px;display:flex;flex-direction:column;gap:8px}" +
      "ol>li{max-width:86%;padding:8px 12px;border-radius:12px;background:#f1f2f8;white-space:pre-wrap;overflow-wrap:anywhere;align-self:flex-start}" +
      "ol>.visitor{align-self:flex-end;background:#43c;color:#fff}.pending{opacity:.6}" +
      "ol>.system{align-self:center;background:none;color:#556;font-size:13px;text-align:center}" +
      "ol>li>b{display:block;font-size:12px;color:#43c}ol>.operator{background:#e8f6f0}ol>.operator>b{color:#0b6e4f}" +
      "li ul{margin:2px 0 0;padding:0 0 0 16px;white-space:normal}li a{color:#33b}small{display:block;margin-top:6px;font-size:12px;color:#556}" +
      ".note,.err{margin:0 14px 8px;font-size:13px}.note{color:#445}.err{color:#b42318}.err:empty{display:none}" +
      ".ps{margin:0 14px 8px;align-self:flex-start}.ps.o{background:#43c;color:#fff}" +
      "form{display:flex;gap:8px;padding:10px 12px;border-top:1px solid #e3e6ee;flex-wrap:wrap}form label{flex:1 0 100%;font-weight:600}" +
      "textarea{flex:1;min-width:0;font:16px/1.35 system-ui,sans-serif;padding:9px 10px;border:1px solid #b9bfcf;border-radius:9px;resize:none;height:42px;max-height:120px;color:inherit}" +
      ".ln{box-shadow:0 6px 20px #0003;border-radius:999px;padding:10px 18px}" +
      ".n{display:inline-block;min-width:20px;margin-left:8px;border-radius:10px;background:#fff;color:#43c;font-size:12px}.n:empty{display:none}" +
      ":focus-visible{outline:3px solid #88f;outline-offset:2px}" +
      ".sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}" +
      // under ~600 px: a full-width bottom sheet
      "@media(max-width:600px){:host(.x){left:0;right:0;bottom:0}.p{width:100%;height:85vh;border-radius:16px 16px 0 0}}";

    let host, sr, P, log, ta, who, note, err, person, launch, ann, leave, conf;
    let st = "closed", agent = null, expanded = false, prev = null, want, conn = 1, unread = 0, offer = false, left = false, closing = false;
    const pend = new Map(); // mid -> { text, li, c: the connection it was sent on (0: not yet) }
    const byId = new Map(); // turn id -> its <li>
    const $ = (s) => sr.querySelector(s);
    const el = (tag, cls, text) => { const e = D.createElement(tag); cls && (e.className = cls); text && (e.textContent = text); return e; };

    const build = () => {
      if (host) return host.isConnected || D.body.appendChild(host);
      host = el("div");
      host.id = "lifeline-chat";
      host.setAttribute("data-lifeline-ignore", ""); // nothing in the chat is captured as page activity
      sr = host.attachShadow({ mode: "open" }); // styles isolated both ways
      sr.innerHTML = `<style>${CSS}</style><div class=p role=dialog aria-modal=true aria-labelledby=t aria-describedby=w hidden>` +
        "<header><div class=h><h2 id=t>Help chat</h2><p id=w class=w></p></div>" +
        "<button data-k=min aria-label='Minimise chat' title=Minimise>—</button><button data-k=end>End</button></header>" +
        "<div class=cf role=group aria-label='End the chat?' hidden><span>End this chat?</span><button data-k=yes>End chat</button><button class=s data-k=no>Keep chatting</button></div>" +
        "<ol aria-label=Conversation></ol><p class=note hidden></p><p class=err role=alert></p>" +
        "<button class='s ps' data-k=person hidden>Talk to a person</button>" +
        `<form data-k=send><label for=i class=sr>Your message</label><textarea id=i maxlength=${MAX} placeholder='Type your question' autocomplete=off></textarea><button>Send</button></form>` +
        `<form data-k=leave hidden><label for=l>Leave a message for our team</label><textarea id=l maxlength=${MAX}></textarea><button>Leave message</button></form>` +
        "</div><button class=ln data-k=launch aria-label='Open help chat' hidden>Help chat<span class=n></span></button>" +
        "<div class='sr live' aria-live=polite></div>"; // outside the panel: replies are announced while it is minimised too
      [P, log, ta, who, note, err, person, launch, ann, leave, conf] = [".p", "ol", "#i", ".w", ".note", ".err", ".ps", ".ln", ".live", "[data-k=leave]", ".cf"].map($);
      sr.addEventListener("click", safe((e) => { const b = e.target.closest("button[data-k]"); b && act[b.dataset.k](); }));
      sr.addEventListener("submit", safe((e) => { e.preventDefault(); (e.target == leave ? leaveMessage : sendMessage)(); }));
      sr.addEventListener("keydown", safe(keys));
      D.body.appendChild(host);
    };

    // ------------------------------------------------------------- showing
    const setErr = (code) => { err && (err.textContent = SAY[code] || ""); };
    const status = () => {
      const name = agent && str(agent.name, 60);
      who.textContent = st == "person" ? `${name || "A person"} is answering` :
        st == "assistant" ? `${name || "Our assistant"} (automated) is answering` :
        st == "waiting_for_person" ? "Waiting for a person…" : st == "ended" ? "Chat ended" : "Connecting…";
      const w = +P.dataset.wait;
      // wait_s: the site's wait limit, after which the server says no one came
      note.textContent = !live() ? SAY.consent : st == "waiting_for_person" ? "A person will join as soon as one is free" +
        (w > 0 ? `; if no one can within ${w < 90 ? Math.round(w) + " seconds" : Math.round(w / 60) + " minutes"}, we'll tell you.` : ".") :
        st == "ended" ? "This chat has ended. Send a message to start a new one." : "";
      note.hidden = !note.textContent;
      person.hidden = st != "assistant";
      person.classList.toggle("o", offer); // the assistant offered a person: shown prominently
      leave.hidden = !(st == "assistant" && P.dataset.leave == "1" && !left);
      launch.lastChild.textContent = unread || "";
      launch.setAttribute("aria-label", "Open help chat" + (unread ? `, ${unread} new` : ""));
    };
    const bottom = () => { log.scrollTop = log.scrollHeight; };
    const turn = (t) => { // a turn's <li>, replacing the one already drawn for its id
      const role = /^(visitor|assistant|operator|system)$/.test(t.role) ? t.role : "system";
      const li = el("li", role);
      role != "system" && li.append(el("b", role == "visitor" ? "sr" : "", role == "visitor" ? "You" : role == "operator" ? str(t.by, 60) || "Support" : "Assistant"));
      li.append(el("span", "", str(t.text, 4 * MAX)));
      const cites = Array.isArray(t.citations) ? t.citations.slice(0, 5) : [];
      if (cites.length) {
        const ul = el("ul");
        ul.setAttribute("aria-label", "Sources");
        li.append(el("small", "", "Sources"));
        cites.forEach((c) => {
          const a = el("a", "", str(c && (c.title || c.url), 200));
          a.href = url(c && c.url);
          a.target = "_blank"; // a half-filled form on the page stays as it is
          a.rel = "noopener";
          const item = el("li");
          item.append(a);
          ul.append(item);
        });
        li.append(ul);
      }
      const id = t.id != null && String(t.id), old = id && byId.get(id);
      old && old.isConnected ? old.replaceWith(li) : log.append(li);
      id && byId.set(li.dataset.id = id, li);
      if (role == "assistant") offer = !!t.offer_person;
      return li;
    };
    const announce = (t) => {
      if (t.role == "visitor") return;
      ann.textContent = (t.role == "operator" ? str(t.by, 60) || "Support" : t.role == "assistant" ? "Assistant" : "Notice") + ": " + str(t.text, 600);
      expanded || unread++;
    };
    const focusIn = () => ta.focus({ preventScroll: true });
    const expand = (restored) => {
      build();
      if (!expanded) prev = D.activeElement;
      expanded = true; unread = 0;
      P.hidden = false; launch.hidden = true; host.className = "x";
      mem("o");
      status(); bottom();
      // focus moves in, unless a restored panel would take it from what the visitor is doing
      (!restored || !prev || prev == D.body) && focusIn();
    };
    const minimise = (restored) => {
      build();
      expanded = false;
      P.hidden = true; conf.hidden = true; launch.hidden = false; host.className = "";
      mem("m");
      status();
      // focus goes back where it was before the chat opened (else to the launcher)
      const back = prev && prev.isConnected && prev != D.body && !/^lifeline-/.test(prev.id) ? prev : launch;
      restored || back.focus({ preventScroll: true });
    };

    // -------------------------------------------------------------- sending
    const ask = () => want !== undefined && tx(want ? { t: "chat_open", iid: str(want, 64) } : { t: "chat_open" }) && (want = undefined);
    const flush = () => { // send what waits: the open first, then messages not yet sent on this connection
      if (!OPEN(st)) return pend.size && want === undefined && (want = null), ask();
      pend.forEach((p, mid) => p.c != conn && tx({ t: "chat_send", text: p.text, mid }) && (p.c = conn));
    };
    const sendMessage = () => {
      const text = ta.value.trim();
      if (!text) return setErr("empty_message");
      if (text.length > MAX) return setErr("message_too_long");
      const mid = "m" + Date.now().toString(36) + Math.random().toString(36).slice(2, 10); // <= 32 chars
      ta.value = "";
      setErr();
      const li = turn({ role: "visitor", text });
      li.classList.add("pending");
      li.title = "Sending…";
      pend.set(mid, { text, li, c: 0 });
      bottom();
      flush();
    };
    const leaveMessage = () => {
      const box = $("#l"), text = box.value.trim();
      if (!text) return setErr("empty_message");
      if (tx({ t: "chat_leave", text: text.slice(0, MAX), mid: "l" + Date.now().toString(36) })) {
        box.value = ""; left = true; setErr();
        turn({ role: "system", text: "Thanks: your message was left for our team." });
        status(); bottom(); focusIn();
      } else setErr("chat_unavailable");
    };
    const end = () => {
      closing = true;
      mem(tx({ t: "chat_close" }) ? null : "e"); // "e": said again once the server can hear it
      P.hidden = launch.hidden = conf.hidden = true; expanded = false; host.className = "";
      const back = prev && prev.isConnected && prev != D.body && !/^lifeline-/.test(prev.id) ? prev : null;
      back && back.focus({ preventScroll: true });
    };
    const act = {
      min: () => minimise(),
      launch: () => expand(),
      end: () => { conf.hidden = false; $("[data-k=yes]").focus(); }, // ending asks once: the turns are not shown again
      yes: end,
      no: () => { conf.hidden = true; focusIn(); },
      person: () => { setErr(tx({ t: "chat_person" }) ? "" : "chat_unavailable"); offer = false; status(); }
    };
    const keys = (e) => {
      if (!expanded) return;
      if (e.key == "Escape") {
        e.preventDefault(); e.stopPropagation();
        conf.hidden ? minimise() : act.no();
      } else if (e.key == "Tab") { // keep focus in the panel: Tab wraps around
        const f = [...P.querySelectorAll("button,textarea,a[href]")].filter((x) => x.getClientRects().length);
        const i = f.indexOf(sr.activeElement), n = f.length;
        if (e.shiftKey ? i <= 0 : i == n - 1 || i < 0) { e.preventDefault(); f[e.shiftKey ? n - 1 : 0].focus(); }
      } else if (e.key == "Enter" && !e.shiftKey && !e.isComposing && e.target == ta) { e.preventDefault(); sendMessage(); }
    };

    // ------------------------------------------------------------- receiving
    const state = (f) => {
      if (!OPEN(f.state)) closing = false;
      if (OPEN(f.state) && (closing || recall() == "e")) return tx({ t: "chat_close" }) && mem(); // ended here: the server hears it now
      st = String(f.state); agent = f.agent || null;
      if (!host && !OPEN(st)) return; // nothing to restore
      build();
      P.dataset.wait = f.wait_s || "";
      P.dataset.leave = f.leave_message ? "1" : "";
      // the whole conversation as the server holds it; answers still streaming and messages
      // not yet echoed stay, after it
      const streaming = [...log.querySelectorAll("[aria-busy]")];
      log.textContent = ""; byId.clear(); offer = false;
      (Array.isArray(f.turns) ? f.turns : []).forEach((t) => {
        if (!t || typeof t != "object") return;
        t.mid && pend.has(t.mid) && pend.delete(t.mid); // stored: not sent again
        turn(t);
      });
      streaming.forEach((li) => byId.has(li.dataset.id) || (log.append(li), byId.set(li.dataset.id, li)));
      pend.forEach((p) => log.append(p.li));
      if (OPEN(st)) P.hidden && launch.hidden ? recall() == "m" ? minimise(1) : expand(1) : mem(expanded ? "o" : "m"); // restored after a navigation
      if (OPEN(st) && err.textContent == SAY.not_open) setErr(); // reopened
      status(); bottom();
      flush();
    };
    const frame = (f) => {
      const { t } = f;
      // a new connection: a waiting open goes now; messages not echoed go after the chat_state that follows
      if (t == "welcome") { conn++; return host && (status(), ask()); }
      if (t == "chat_state") return state(f);
      if (!host) return;
      if (t == "chat_delta") { // a piece of an answer, appended as it arrives; announced once, when complete
        if (f.id == null) return;
        let li = byId.get(String(f.id));
        if (!li) { li = turn({ id: f.id, role: "assistant", text: "" }); li.setAttribute("aria-busy", "true"); }
        li.hasAttribute("aria-busy") && (li.lastChild.textContent += str(f.text, MAX)); // none after the final text
        bottom();
      } else if (t == "chat_turn" && f.turn && typeof f.turn == "object") {
        const x = f.turn, p = x.mid && pend.get(x.mid);
        if (p) { pend.delete(x.mid); p.li.remove(); } // our message, echoed: sent
        turn(x); announce(x); setErr();
        status(); bottom();
      } else if (t == "error" && SAY[f.code]) {
        // a refused message (named by its mid, else the newest sent) goes back into the box: nothing typed is lost
        const sent = [...pend.entries()].filter(([, p]) => p.c);
        const [mid, p] = (f.mid && pend.has(f.mid) ? [[f.mid, pend.get(f.mid)]] : sent).pop() || [];
        if (f.code == "rate_limited" && !p) return; // the tracker's events were limited, not the chat
        if (f.code == "not_open") { st = "closed"; pend.forEach((x) => { x.c = 0; }); status(); flush(); } // reopen, then resend
        else if (p) { pend.delete(mid); p.li.remove(); ta.value || (ta.value = p.text); }
        setErr(f.code);
      }
    };
    const open = (iid) => {
      closing = false;
      build();
      expand();
      OPEN(st) || want !== undefined || (want = iid || null);
      ask();
      status();
    };
    L.on("consent", (c) => { // analytics withdrawn: the chat goes, and what it remembered
      if (c.includes("analytics")) return host && status();
      host && host.remove();
      host = null; st = "closed"; expanded = false; pend.clear(); byId.clear(); want = undefined;
      mem();
    });
    Object.assign(CH, { f: frame, o: open });
  });
})(window, document);
