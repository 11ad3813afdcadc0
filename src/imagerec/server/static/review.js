// imagerec Review tab: label the pictures of a review queue (imagerec serve RUN --review QUEUE --review-out DATASET).
// Keyboard first: 1-9, 0 = the first ten classes; n = none of these; s = skip; u or Backspace = undo the last label.
// Multi-label runs: the number keys toggle classes, Enter saves the set. Shown only when the server has a queue.
"use strict";

(() => {
  const rv = { items: [], classes: [], multilabel: false, pos: 0, history: [], token: 0, url: null, chosen: new Set() };
  const el = (id) => document.getElementById(id);

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const key = sessionStorage.getItem("imagerec-key") || "";
    if (key) h["X-API-Key"] = key;
    return h;
  }

  async function message(response) {
    try {
      const body = await response.json();
      if (body && body.error) return `${body.error.code}: ${body.error.message}`;
    } catch (_) { /* not JSON */ }
    return `HTTP ${response.status}`;
  }

  function status(text, alert) {
    const s = el("review-status");
    s.textContent = text;
    s.setAttribute("role", alert ? "alert" : "status");
  }

  function nextOpen(from) {
    for (let i = from; i < rv.items.length; i++) if (rv.items[i].decision == null) return i;
    for (let i = 0; i < from; i++) if (rv.items[i].decision == null) return i;
    return rv.items.length;
  }

  function progress() {
    const done = rv.items.filter((it) => it.decision != null).length;
    el("review-progress").textContent = `${done} / ${rv.items.length}`;
  }

  function renderClasses() {
    const list = el("review-classes");
    list.replaceChildren();
    rv.classes.forEach((name, i) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.label = name;
      button.textContent = i < 10 ? `${(i + 1) % 10} · ${name}` : name;
      button.addEventListener("click", () => pick(name));
      li.append(button);
      list.append(li);
    });
  }

  // show the picture at rv.pos; an image that arrives after the reviewer moved on is dropped (token)
  async function show() {
    progress();
    rv.chosen = new Set();
    for (const b of el("review-classes").querySelectorAll("button")) b.setAttribute("aria-pressed", "false");
    const token = ++rv.token;
    const item = rv.items[rv.pos];
    el("review-done").hidden = item !== undefined;
    el("review-card").hidden = item === undefined;
    if (item === undefined) return;
    const pct = item.confidence != null ? ` (${(item.confidence * 100).toFixed(1)}%)` : "";
    const guess = Array.isArray(item.labels) ? item.labels.join(" + ") || "nothing" : item.guess;
    el("review-guess").textContent = `Model's guess: ${guess}${pct}` + (item.why ? ` · ${item.why.replace(/_/g, " ")}` : "");
    try {
      const response = await fetch(`/v1/review/image/${encodeURIComponent(item.id)}`, { headers: headers() });
      if (!response.ok) throw new Error(await message(response));
      const blob = await response.blob();
      if (token !== rv.token) return;
      if (rv.url) URL.revokeObjectURL(rv.url);
      rv.url = URL.createObjectURL(blob);
      el("review-image").src = rv.url;
      el("review-image").dataset.id = item.id;
    } catch (err) {
      if (token === rv.token) status(`Cannot load the picture: ${err.message || err}`, true);
    }
  }

  async function send(index, label) {
    const item = rv.items[index];
    const response = await fetch("/v1/review/label", {
      method: "POST", headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ id: item.id, label }),
    });
    if (!response.ok) throw new Error(await message(response));
    return response.json();
  }

  async function decide(label) {
    const index = rv.pos;
    const item = rv.items[index];
    if (item === undefined) return;
    const before = item.decision;
    item.decision = label;
    rv.history.push(index);
    rv.pos = nextOpen(index + 1);
    show();
    try {
      await send(index, label);
      status(`Saved ${item.id}: ${Array.isArray(label) ? label.join(" + ") || "none" : label}`);
    } catch (err) {
      item.decision = before;
      rv.history = rv.history.filter((i) => i !== index);
      status(`Not saved (${err.message || err})`, true);
      progress();
    }
  }

  function pick(name) {
    if (!rv.multilabel) return decide(name);
    if (rv.chosen.has(name)) rv.chosen.delete(name); else rv.chosen.add(name);
    const button = el("review-classes").querySelector(`button[data-label="${CSS.escape(name)}"]`);
    if (button) button.setAttribute("aria-pressed", String(rv.chosen.has(name)));
  }

  async function undo() {
    const index = rv.history.pop();
    if (index === undefined) return;
    rv.items[index].decision = null;
    rv.pos = index;
    show();
    try {
      await send(index, "undo");
      status(`Undone: ${rv.items[index].id}`);
    } catch (err) {
      status(`Undo failed (${err.message || err})`, true);
    }
  }

  function onKey(e) {
    if (el("review-pane").hidden || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement) return;
    const digit = /^[0-9]$/.test(e.key) ? (Number(e.key) + 9) % 10 : -1;
    if (digit >= 0 && digit < rv.classes.length) pick(rv.classes[digit]);
    else if (e.key === "n") decide(rv.multilabel ? [] : "none");
    else if (e.key === "s") decide("skip");
    else if (e.key === "u" || e.key === "Backspace") undo();
    else if (e.key === "Enter" && rv.multilabel && e.target === document.body) decide([...rv.chosen]);
    else return;
    e.preventDefault();
  }

  function selectTab(name) {
    for (const pane of document.querySelectorAll("[data-pane]")) pane.hidden = pane.dataset.pane !== name;
    el("tab-classify").setAttribute("aria-selected", String(name === "classify"));
    el("tab-review").setAttribute("aria-selected", String(name === "review"));
    if (name === "review") show();
  }

  async function loadQueue() {
    const response = await fetch("/v1/review/queue", { headers: headers() });
    if (!response.ok) return; // 404: this server has no queue; 401: the key is asked for by the page
    const body = await response.json();
    rv.items = body.items;
    rv.classes = body.classes;
    rv.multilabel = body.task === "multilabel";
    rv.pos = nextOpen(0);
    renderClasses();
    el("review-help").textContent = rv.multilabel
      ? "Keys: 1-9, 0 toggle a class, Enter saves; n = none of these; s = skip; u or Backspace = undo."
      : "Keys: 1-9, 0 pick a class; n = none of these; s = skip; u or Backspace = undo.";
    el("review-save").hidden = !rv.multilabel;
    el("tabs").hidden = false;
    progress();
  }

  function setup() {
    el("tab-classify").addEventListener("click", () => selectTab("classify"));
    el("tab-review").addEventListener("click", () => selectTab("review"));
    el("review-none").addEventListener("click", () => decide(rv.multilabel ? [] : "none"));
    el("review-skip").addEventListener("click", () => decide("skip"));
    el("review-undo").addEventListener("click", undo);
    el("review-save").addEventListener("click", () => decide([...rv.chosen]));
    el("key-save").addEventListener("click", loadQueue);
    document.addEventListener("keydown", onKey);
    loadQueue();
  }

  document.addEventListener("DOMContentLoaded", setup);
})();
