// Person page: acknowledgements from the lanes, counted as they arrive; confirm before forgetting.
(function () {
  const acks = document.getElementById("acks");
  const form = document.getElementById("forget-form");
  if (form) form.addEventListener("submit", (ev) => {
    if (!confirm(document.getElementById("forget").dataset.confirm)) ev.preventDefault();
  });
  if (!acks) return;
  function poll() {
    fetch(acks.dataset.api, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((r) => r.json())
      .then((p) => {
        if (p.op) {
          const t = p.op === "forget" ? acks.dataset.forgotten : acks.dataset.enrolled;
          acks.textContent = t.replace("{k}", p.k).replace("{n}", p.n);
        }
        for (const tr of document.querySelectorAll("#proof tr[data-lane]")) {
          tr.querySelector(".ack").textContent = p.lanes_done.includes(tr.dataset.lane) ? "✔" : "…";
        }
      })
      .catch(() => {})
      .finally(() => setTimeout(poll, 1000));
  }
  setTimeout(poll, 1000);
})();
