// Lane screen: show each notice the gate sends, in every configured language, then go idle.
(function () {
  const cfg = JSON.parse(document.getElementById("screen-config").textContent);
  const lines = document.getElementById("lines"), nameEl = document.getElementById("name");
  const symbol = document.getElementById("symbol");
  document.getElementById("lane").textContent = cfg.lane;
  let idleTimer = null;

  function setLines(byLang) {
    lines.replaceChildren(...cfg.languages.map((l) => {
      const p = document.createElement("p");
      p.lang = l; p.dataset.lang = l; p.textContent = byLang[l];
      return p;
    }));
  }
  function idle() {
    document.body.className = "idle";
    symbol.textContent = ""; nameEl.textContent = "";
    setLines(cfg.idle);
    document.body.dataset.notice = "";
  }
  function show(n) {
    const kind = n.decision === "grant" ? "grant" : n.decision === "deny" ? "deny" : "guide";
    document.body.className = kind;
    document.body.dataset.notice = n.notice;
    symbol.textContent = kind === "grant" ? "✔" : kind === "deny" ? "✖" : "!";
    setLines(cfg.texts[n.notice] || cfg.texts.see_staff);
    // a function, not a string: "$&" or "$'" in a name are letters of the name, not patterns
    nameEl.textContent = n.name ? cfg.languages.map((l) => cfg.greeting[l].replace("{name}", () => n.name)).join(" · ") : "";
    clearTimeout(idleTimer);
    idleTimer = setTimeout(idle, 1000 * cfg.hold_s);
    // When the words are on the glass: for the latency measurement (scripts/bench_console.py).
    requestAnimationFrame(() => { window.egShown = { seq: n.seq, notice: n.notice, t: n.t, shown: Date.now() }; });
  }
  idle();
  // A stream the browser gives up on (an answer other than 200, e.g. 503 while the screen is
  // busy) is opened again after a pause: the kiosk page is never left deaf.
  function connect() {
    const src = new EventSource("/events");
    src.onmessage = (ev) => show(JSON.parse(ev.data));
    src.onopen = () => { document.body.dataset.live = "1"; };
    src.onerror = () => {
      document.body.dataset.live = "0";
      if (src.readyState === EventSource.CLOSED) { setTimeout(connect, 2000); }
    };
  }
  connect();
})();
