// Shared by the page scripts: POST JSON with the session's CSRF token.
window.egPost = function (url, body) {
  return fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": document.body.dataset.csrf, "Accept": "application/json" },
    body: JSON.stringify(body),
  }).then((r) => r.json().then((j) => { if (!r.ok) throw new Error(j.error || r.status); return j; }));
};
