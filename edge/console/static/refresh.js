// Reload a status page every data-refresh seconds (lanes): the server renders, the page follows.
(function () {
  const el = document.querySelector("[data-refresh]");
  if (!el) return;
  setTimeout(() => location.reload(), 1000 * Number(el.dataset.refresh));
})();
