// Decisions page: new rows arrive over server-sent events, rendered by the server.
(function () {
  const live = document.getElementById("live");
  const body = document.querySelector("#decisions tbody");
  const src = new EventSource(live.dataset.stream);
  src.addEventListener("decision", (ev) => {
    const tmp = document.createElement("tbody");
    tmp.innerHTML = JSON.parse(ev.data);
    const row = tmp.firstElementChild;
    row.classList.add("new");
    row.dataset.arrived = String(Date.now()); // when it reached the page (scripts/bench_console.py)
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
  });
  src.onerror = () => live.classList.add("off");
  src.onopen = () => live.classList.remove("off");
  body.addEventListener("click", (ev) => {
    const b = ev.target.closest("button.reveal");
    if (!b) return;
    b.disabled = true;
    egPost("/api/reveal", { person: b.dataset.person })
      .then((j) => { const s = document.createElement("strong"); s.className = "revealed"; s.textContent = " " + j.name; b.replaceWith(s); })
      .catch((e) => { b.textContent = e.message; });
  });
})();
