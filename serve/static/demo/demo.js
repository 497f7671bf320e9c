// Lifeline demo shop: shared page code (header, catalog, cart, consent banner).
// The help chat is Lifeline's own (lifeline-chat.js, docs/CLIENT.md): accepting a help offer
// opens it, and so does the header's Help button, marked data-lifeline-chat.
// The shop's own state (the cart) lives in localStorage under "demo-cart"; everything
// Lifeline does goes through its public API (docs/CLIENT.md).
"use strict";

// Calls made before /lifeline.js has loaded (it loads async) wait in this queue.
window.lifelineQueue = window.lifelineQueue || [];
function ll(method, ...args) {
  window.lifelineQueue.push([method, ...args]);
}

const money = (n) => "$" + Number(n).toFixed(2);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");

let catalogPromise = null;
function catalog() {
  catalogPromise = catalogPromise || fetch("/catalog.json").then((r) => r.json());
  return catalogPromise;
}

const cart = {
  items() {
    try { return JSON.parse(localStorage.getItem("demo-cart")) || []; } catch (e) { return []; }
  },
  save(items) {
    localStorage.setItem("demo-cart", JSON.stringify(items));
    renderCount();
  },
  add(product, qty) {
    const items = cart.items();
    const line = items.find((l) => l.id === product.id);
    if (line) line.qty += qty; else items.push({ id: product.id, name: product.name, price: product.price, qty });
    cart.save(items);
    ll("track", "add_to_cart", { item: product.id, qty, price: product.price });
  },
  remove(id) {
    const line = cart.items().find((l) => l.id === id);
    cart.save(cart.items().filter((l) => l.id !== id));
    if (line) ll("track", "remove_from_cart", { item: id, qty: line.qty });
  },
  total() { return cart.items().reduce((s, l) => s + l.price * l.qty, 0); },
  clear() { localStorage.removeItem("demo-cart"); renderCount(); }
};

function renderCount() {
  const el = document.querySelector(".cart-count");
  if (el) el.textContent = String(cart.items().reduce((s, l) => s + l.qty, 0));
}

function header() {
  const here = location.pathname;
  const link = (href, text) => `<a href="${href}"${here === href ? ' aria-current="page"' : ""}>${text}</a>`;
  document.body.insertAdjacentHTML("afterbegin", `<header class="top"><div class="in">
    <a class="logo" href="/">Ridgeline <span>Outfitters</span></a>
    <nav aria-label="Main">${link("/", "Shop")}${link("/calculator.html", "Financing")}${link("/cart.html", "Cart<span class=\"cart-count\">0</span>")}</nav>
    <button class="btn secondary help" type="button" data-lifeline-chat>Help</button>
  </div></header>`);
  document.body.insertAdjacentHTML("beforeend", `<footer><div class="in">Ridgeline Outfitters is the demo shop of
    Lifeline. Nothing here is for sale. <a href="/privacy.html">Your data</a></div></footer>`);
  renderCount();
}

// Consent banner: Lifeline sends nothing until the visitor allows analytics.
function consentBanner() {
  let choice = null;
  try { choice = localStorage.getItem("ll:c"); } catch (e) { /* blocked */ }
  if (choice !== null) return;
  const box = document.createElement("div");
  box.className = "consent";
  box.setAttribute("role", "region");
  box.setAttribute("aria-label", "Privacy choices");
  box.innerHTML = `<div class="in"><p><strong>Can we help when you get stuck?</strong> With your permission we watch how the
    pages behave for you (never what you type) and offer help if something goes wrong.</p>
    <div class="row"><button class="btn" data-c="all">Allow help &amp; suggestions</button>
    <button class="btn secondary" data-c="analytics">Help only</button>
    <button class="btn secondary" data-c="none">No thanks</button></div></div>`;
  ll("on", "consent", () => box.remove()); // answered some other way (lifeline.consent.set)
  box.addEventListener("click", (e) => {
    const c = e.target.closest("[data-c]");
    if (!c) return;
    const v = c.dataset.c;
    ll("consent.set", v === "all" ? ["analytics", "personalization"] : v === "analytics" ? ["analytics"] : []);
    box.remove();
  });
  document.querySelector("header.top").after(box); // in the flow, above the page: it never covers it
}

// Product pictures: initials on a colour per category (no image files to ship).
const initials = (name) => name.split(/\s+/).filter((w) => /^[A-Z]/.test(w)).slice(0, 2).map((w) => w[0]).join("");

function productCard(p) {
  return `<a class="card" href="${esc(p.url)}"><div class="thumb ${esc(p.category)}" aria-hidden="true">${initials(p.name)}</div>
    <div class="body"><h3>${esc(p.name)}</h3><div class="muted">${esc(p.category)}</div>
    <div class="price">${money(p.price)}</div></div></a>`;
}

header();
consentBanner();
