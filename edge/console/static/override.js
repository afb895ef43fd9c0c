// Override page: the lane's own decision (its audit record at the office), shown when it arrives.
(function () {
  const el = document.getElementById("override-outcome");
  if (!el || el.dataset.state !== "waiting") return;
  function poll() {
    fetch(el.dataset.api, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((r) => r.json())
      .then((o) => {
        if (o.state === "grant" || o.state === "deny" || o.state === "unanswered") {
          el.dataset.state = o.state;
          el.className = "acks " + (o.state === "grant" ? "ok" : "bad");
          el.textContent = o.state === "grant" ? el.dataset.grant
            : o.state === "deny" ? el.dataset.deny + " " + o.reason : el.dataset.unanswered;
        } else {
          setTimeout(poll, 500);
        }
      })
      .catch(() => setTimeout(poll, 1000));
  }
  setTimeout(poll, 500);
})();
