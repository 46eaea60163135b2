// Applies the saved theme before the page paints (an external script: the page's
// Content-Security-Policy allows no inline script).
(function () {
  var saved = null;
  try { saved = localStorage.getItem("kerrera-theme"); } catch (e) { /* storage off */ }
  if (saved === "light" || saved === "dark") document.documentElement.dataset.theme = saved;
})();
