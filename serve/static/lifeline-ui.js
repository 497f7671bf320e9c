/*! Lifeline client UI v1, docs/CLIENT.md */
// The intervention cards the tracker (lifeline.js) shows: drawn in a shadow DOM, placed
// clear of what the visitor is using, accessible (roles, labels, live region, focus, Esc).
// Loaded on demand by lifeline.js, from beside it (its first intervention to draw, or an
// idle moment after it starts), so the tracker stays within its 8 KB budget; a site that
// draws its own interventions (render: false) never loads it. It reports what the visitor
// does through the tracker's functions, and never throws into the host page.
((W, D) => {
  "use strict";
  const L = W.lifeline;
  L && L._m && L._m("ui", ({ U, safe, str, $, on, fire, report, lastEl, url }) => {
    const root = D.documentElement;
    let shown = [], ui = null, host = null, n = 0, layT = 0;
    const CSS = ":host{all:initial}*{box-sizing:border-box}" +
      ".c{position:fixed;z-index:2147483000;font:14px/1.45 system-ui;color:#223;background:#fff;border-radius:14px;" +
      "box-shadow:0 8px 30px #0003;padding:16px;width:320px;max-width:calc(100vw - 32px);animation:a .2s}" +
      "@keyframes a{from{opacity:0;transform:translateY(8px)}}@media(prefers-reduced-motion){.c{animation:none}}" +
      "h2{margin:0 24px 6px 0;font-size:15px;color:#43c}p{margin:0 0 12px}" +
      "button{font:600 14px system-ui;cursor:pointer;border:0;border-radius:9px;padding:8px 14px;margin-right:8px;background:#43c;color:#fff}" +
      ".s{background:#eef;color:#43c}.x{position:absolute;top:6px;right:0;background:none;color:#667;font-size:20px}" +
      ":focus-visible{outline:3px solid #88f}" +
      ".f{width:340px;padding-right:36px;background:#ffe;border:1px solid #eb5}.f p{margin-bottom:8px}" +
      ".f:before{position:absolute;left:22px;width:12px;height:12px;background:inherit;border:inherit;transform:rotate(45deg)}" +
      // the arrow (content) only for a hint right under (d) or over (u) its field, not beside it or in a corner
      ".d:before{content:'';top:-7px;border-width:1px 0 0 1px}.u:before{content:'';bottom:-7px;border-width:0 1px 1px 0}" +
      ".r{width:auto;right:0;max-width:none;border-radius:16px 16px 0 0}ul{display:flex;gap:10px;overflow:auto;list-style:none;margin:0;padding:2px}" +
      "li a{display:block;min-width:150px;padding:10px;border:1px solid #dde;border-radius:10px;color:inherit;text-decoration:none}" +
      "li span{display:block;color:#43c}.sr{position:absolute;clip:rect(0 0 0 0)}";
    const esc = (s) => str(s, 600).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
    const href = (u) => esc(url(u)); // the tracker's link rule: no javascript: or data: links
    // A card's text as HTML, with the help guide it names as a link: an update's `link` carries
    // the guide's url and title, and the server has put that title into the text (a visitor
    // reads a title, not a path). The guide opens in a new tab, so a half-filled form is not
    // lost; opening it counts as taking the help (data-a: accepted).
    const html = (iv) => {
      const g = iv.link, t = esc(iv.text);
      return g ? t.replace(esc(g.title), `<a data-a href="${href(g.url)}" target=_blank>$&</a>`) : t;
    };
    // kind: [role, heading, accept label, dismiss label]
    const KINDS = {
      help_offer: ["dialog", "We're here to help", "Chat with us", "No thanks"],
      form_hint: ["note", "", "Got it"],
      content_suggestion: ["region", "A suggestion", "Thanks"],
      recommendations: ["region", "You might also like"]
    };
    const remove = (iv) => {
      const el = iv.el;
      if (!el) return;
      iv.el = null;
      shown = shown.filter((x) => x != iv);
      const had = el.contains(host.shadowRoot.activeElement);
      el.remove();
      if (had && iv.prev) try { iv.prev.focus(); } catch (e) { /* gone */ }
      relayout();
    };
    const target = (t) => { try { return t && (D.getElementById(t) || $(t)); } catch (e) { return null; } };
    const render = (iv) => {
      if (iv.el || iv._accepted || iv._dismissed || !D.body) return;
      const f = target(iv.target), k = iv.kind == "form_hint" && !f ? "content_suggestion" : iv.kind; // no field: say it as a nudge
      const [role, title, yes, no] = KINDS[k], id = "ll" + ++n;
      if (!ui) {
        host = D.createElement("div");
        host.setAttribute("data-lifeline-ignore", "");
        host.id = "lifeline-ui";
      U.h = host;
        const sr = host.attachShadow({ mode: "open" }); // styles isolated both ways
        sr.innerHTML = `<style>${CSS}</style><div class=sr aria-live=polite></div><div></div>`;
        ui = sr.lastChild;
      }
      host.isConnected || D.body.appendChild(host);
      shown.filter((o) => o.kind == iv.kind).forEach(remove); // one of each kind at a time: the newer replaces the older
      ui.insertAdjacentHTML("beforeend", `<div class="c ${k[0]}" data-kind=${k} role=${role} aria-describedby=${id}t ` +
        (title ? `aria-labelledby=${id}><h2 id=${id}>${title}</h2>` : "aria-label=Hint>") +
        (k[0] == "r" ? "<ul>" + iv.items.slice(0, 8).map((it) => `<li><a data-a href="${href(it.url)}">${esc(it.name)}` +
          (it.price > 0 ? `<span>${(+it.price).toFixed(2)}</span>` : "") + "</a>").join("") + "</ul>" :
        `<p id=${id}t aria-live=polite>${html(iv)}</p>` + (yes ? `<button data-a>${yes}</button>` : "") + (no ? `<button class=s data-d>${no}</button>` : "")) +
        "<button class=x data-d aria-label=Dismiss>×</button></div>");
      const el = ui.lastChild;
      el.addEventListener("click", safe((e) => { const b = e.target.closest("[data-a],[data-d]"); b && report(iv, b.hasAttribute("data-a") ? "accepted" : "dismissed"); }));
      Object.assign(iv, { el, k, f: k[0] == "f" && f, prev: D.activeElement }); // f: a form hint's field
      shown.push(iv);
      layout();
      ui.previousSibling.textContent = (title || "Hint") + ": " + str(iv.text, 300); // announced by screen readers
      // take focus only when the visitor is not working on anything
      if (role == "dialog" && (!iv.prev || iv.prev == D.body)) $("[data-a]", el).focus({ preventScroll: true });
      fire("render", iv, el);
      report(iv, "shown");
    };
    const rect = (el) => el && el != D.body && el.getBoundingClientRect(); // elements only: the focused one, the clicked one, fields
    const relayout = () => shown.length && !layT && (layT = requestAnimationFrame(safe(() => { layT = 0; layout(); })));
    // Place every card where it covers neither the element in use nor another card: a hint
    // under its field (else above, else beside, else in a corner), and clear of the page's
    // other fields and buttons too (over the field the visitor typed into, or the next one,
    // it hides what it is about; the site's Help button, [data-lifeline-chat], may be
    // covered: the hint is help too, and a form field matters more); with no such place,
    // under its field, which it then still never hides. The strip at the bottom (else the top), the other cards in a bottom
    // corner (else a top corner).
    const layout = () => {
      // taken: what a card must not cover ({} when nothing is in use: it hits nothing)
      const taken = [rect(D.activeElement) || rect(lastEl()) || {}], vw = root.clientWidth, vh = W.innerHeight, ch = D.getElementById("lifeline-chat");
      ch && ch.className == "x" && taken.push(rect(ch)); // the open chat panel, too
      // placed in this order: form_hint, recommendations, help_offer, content_suggestion
      shown.slice().sort((a, b) => "frhc".indexOf(a.k[0]) - "frhc".indexOf(b.k[0])).forEach((iv) => {
        const el = iv.el, fr = rect(iv.f), w = el.offsetWidth, h = el.offsetHeight, R = vw - w - 16;
        const box = ([x, y]) => new DOMRect(x, y, w, h);
        let c = iv.k[0] == "r" ? [[0, vh - h], [0, 0]] : [[R, vh - h - 16], [16, vh - h - 16], [R, 16], [16, 16]];
        if (fr) {
          const x = Math.max(8, Math.min(fr.left, vw - w - 8));
          taken.push(fr, ...Array.from(D.querySelectorAll("button:not([data-lifeline-chat]),input,select,textarea"), rect));
          c = [[x, fr.bottom + 10, "d"], [x, fr.top - h - 10, "u"], [fr.right + 10, fr.top], ...c];
        }
        const best = c.find((p) => { const r = box(p); return r.left >= 0 && r.top >= 0 && r.right <= vw && r.bottom <= vh && !taken.some((t) => r.left < t.right + 8 && t.left < r.right + 8 && r.top < t.bottom + 8 && t.top < r.bottom + 8); }) || c[0];
        el.style.left = best[0] + "px"; el.style.top = best[1] + "px";
        el.className = `c ${iv.k[0]} ${best[2] || ""}`; // + d / u: the arrow's side
        taken.push(box(best));
      });
    };
    on(W, "resize", relayout, 1);
    // Esc dismisses the newest card, unless it was pressed in the chat (which it minimises)
    on(D, "keydown", (e) => e.key == "Escape" && shown.length && e.target.id != "lifeline-chat" && report(shown[shown.length - 1], "dismissed"), 1);
    Object.assign(U, {
      render,
      x: remove,
      r: relayout,
      c: (f) => shown.filter(f).forEach(remove),
      u: (iv, f) => { // an update of a shown card: its new text, or its new items
        const p = $("p", iv.el);
        if (p && typeof f.text == "string") p.innerHTML = html(iv);
        else if (f.items) { remove(iv); render(iv); }
        relayout();
      }
    });
  });
})(window, document);
