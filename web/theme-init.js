// Applies the saved theme before the first paint, so the page never flashes the other one.
try {
  const t = localStorage.getItem("rllama.theme");
  if (t === "light" || t === "dark") document.documentElement.dataset.theme = t;
} catch (_) {
  /* storage disabled: follow the system */
}
