// Kerrera dashboard: live refresh from server-sent events, the refresh interval, theme,
// selection, search suggestions and keyboard shortcuts. No framework, no inline script.
"use strict";

const body = document.body;
const base = body.dataset.base || "";
const statusEl = document.getElementById("live-status");
const refreshEl = document.getElementById("refresh");

// ---- refresh interval (1/2/5/15/60 s, or off), kept per browser -------------------
function interval() {
  return Number(refreshEl ? refreshEl.value : 2);
}
try {
  const saved = localStorage.getItem("kerrera-refresh");
  if (saved !== null && refreshEl) refreshEl.value = saved;
} catch (e) { /* storage off */ }

// ---- live region: fetch the page's data part again and swap it in -----------------
let lastRefresh = 0;
let pending = null;
let inFlight = false;

async function refreshNow() {
  const live = document.querySelector("[data-live]");
  if (!live || inFlight) return;
  inFlight = true;
  lastRefresh = Date.now();
  try {
    const response = await fetch(location.href, {
      headers: { "X-Kerrera-Partial": "1" }, credentials: "same-origin",
    });
    if (!response.ok) return;
    const html = await response.text();
    const picked = new Set(
      [...live.querySelectorAll('input[name="ids"]:checked')].map((box) => box.value));
    const focused = document.activeElement && document.activeElement.closest("[data-live]")
      ? document.activeElement.name : null;
    if (focused === "limit") return; // someone is typing a limit: do not wipe it
    live.innerHTML = html;
    for (const box of live.querySelectorAll('input[name="ids"]')) {
      if (picked.has(box.value)) box.checked = true;
    }
    live.dispatchEvent(new CustomEvent("kerrera:refreshed", { bubbles: true }));
    body.dataset.refreshed = String(Number(body.dataset.refreshed || 0) + 1);
  } finally {
    inFlight = false;
  }
}

// Debounced by the chosen interval: at most one refresh per interval.
function scheduleRefresh() {
  const every = interval() * 1000;
  if (every <= 0 || pending) return;
  const wait = Math.max(0, lastRefresh + every - Date.now());
  pending = setTimeout(() => { pending = null; refreshNow(); }, wait);
}

// ---- one event stream per tab, closed while the tab is hidden ---------------------
let source = null;
let pollTimer = null;

function setStatus(text, kind) {
  if (!statusEl) return;
  statusEl.textContent = text;
  statusEl.dataset.kind = kind;
}

function openStream() {
  if (source || interval() === 0 || !document.querySelector("[data-live]")) return;
  source = new EventSource(base + "/events");
  source.addEventListener("status", (event) => {
    const live = JSON.parse(event.data).live;
    setStatus(live ? "live" : "polling", live ? "live" : "polling");
  });
  source.addEventListener("changed", scheduleRefresh);
  source.addEventListener("error", () => setStatus("reconnecting…", "down"));
  // While the stream is down the page polls on the chosen interval.
  pollTimer = setInterval(() => {
    if (source && source.readyState !== EventSource.OPEN) scheduleRefresh();
  }, Math.max(interval(), 1) * 1000);
}

function closeStream(text) {
  if (source) { source.close(); source = null; }
  if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  setStatus(document.querySelector("[data-live]") ? text : "", "off");
}

document.addEventListener("visibilitychange", () => {
  if (document.hidden) closeStream("paused");
  else { openStream(); refreshNow(); }
});

if (refreshEl) {
  refreshEl.addEventListener("change", () => {
    try { localStorage.setItem("kerrera-refresh", refreshEl.value); } catch (e) { /* off */ }
    closeStream(interval() === 0 ? "off" : "…");
    openStream();
  });
}
if (!document.querySelector("[data-live]")) setStatus("", "off"); // nothing here to refresh
else if (interval() === 0) setStatus("off", "off");
else openStream();

// ---- selection -------------------------------------------------------------------
document.addEventListener("change", (event) => {
  if (event.target.id === "pick-all") {
    for (const box of document.querySelectorAll('input[name="ids"]')) {
      box.checked = event.target.checked;
    }
  }
});

// ---- theme -----------------------------------------------------------------------
function toggleTheme() {
  const root = document.documentElement;
  const dark = root.dataset.theme === "dark" ||
    (root.dataset.theme === "auto" && matchMedia("(prefers-color-scheme: dark)").matches);
  root.dataset.theme = dark ? "light" : "dark";
  try { localStorage.setItem("kerrera-theme", root.dataset.theme); } catch (e) { /* off */ }
}
const themeButton = document.getElementById("theme");
if (themeButton) themeButton.addEventListener("click", toggleTheme);

// ---- search suggestions: after "field:" offer values seen in recent jobs ---------
const search = document.getElementById("q");
const list = document.getElementById("suggestions");
const FIELDS = ["queues", "workers", "tags", "nodes"];
let suggestTimer = null;
if (search && list) {
  search.addEventListener("input", () => {
    clearTimeout(suggestTimer);
    suggestTimer = setTimeout(async () => {
      const words = search.value.split(" ");
      const last = words[words.length - 1];
      const [field, typed] = last.includes(":") ? last.split(":", 2) : ["", ""];
      list.replaceChildren();
      if (!FIELDS.includes(field)) return;
      const prefix = typed.split(",").pop();
      const url = `${base}/suggest?field=${encodeURIComponent(field)}&prefix=${encodeURIComponent(prefix)}`;
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok) return;
      const head = words.slice(0, -1).concat(last.slice(0, last.length - prefix.length)).join(" ");
      for (const value of (await response.json()).values) {
        const option = document.createElement("option");
        option.value = head + value; // textContent/value: never parsed as HTML
        list.append(option);
      }
    }, 150);
  });
}

// ---- keyboard shortcuts ------------------------------------------------------------
document.addEventListener("keydown", (event) => {
  const tag = event.target.tagName;
  if (event.ctrlKey || event.metaKey || event.altKey || ["INPUT", "TEXTAREA", "SELECT"].includes(tag)) {
    return;
  }
  if (event.key === "/" && search) { event.preventDefault(); search.focus(); search.select(); }
  else if (event.key === "j") location.href = base + "/jobs";
  else if (event.key === "q") location.href = base + "/queues";
  else if (event.key === "e") location.href = base + "/errors";
  else if (event.key === "c") location.href = base + "/charts";
  else if (event.key === "w") location.href = base + "/workflows";
  else if (event.key === "t") toggleTheme();
  else if (event.key === "r") refreshNow();
});
