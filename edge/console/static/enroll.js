// Enrollment kiosk: frames from the webcam (or uploaded photos) go to the server, which keeps
// only the face template of a usable frame and answers with quality feedback. No image is kept.
(function () {
  const form = document.getElementById("enroll-form");
  const texts = JSON.parse(document.getElementById("kiosk-texts").textContent);
  const cid = form.dataset.cid, needed = Number(form.dataset.needed), maxKept = 5;
  const video = document.getElementById("camera"), canvas = document.getElementById("grab");
  const publish = document.getElementById("publish");
  const $ = (id) => document.getElementById(id);
  let templates = 0, running = false, busy = false;

  function show(fb) {
    $("fb-faces").textContent = fb.faces;
    $("fb-size").textContent = fb.face_px || "-";
    $("fb-sharp").textContent = fb.sharpness || "-";
    $("fb-templates").textContent = fb.templates;
    templates = fb.templates;
    const adv = $("fb-advice");
    adv.textContent = fb.accepted ? texts.ok : fb.reasons.map((r) => texts[r] || r).join("; ");
    adv.className = "advice " + (fb.accepted ? "ok" : "bad");
    publish.disabled = templates < needed;
  }

  function send(blob, still) {
    return fetch("/api/enroll/frame?cid=" + encodeURIComponent(cid) + (still ? "&still=1" : ""), {
      method: "POST", credentials: "same-origin", body: blob,
      headers: { "X-CSRF-Token": document.body.dataset.csrf, "Content-Type": blob.type || "image/jpeg", Accept: "application/json" },
    }).then((r) => r.json().then((j) => { if (!r.ok) throw new Error(j.error || r.status); return j; }))
      .then(show)
      .catch((e) => { $("fb-advice").textContent = e.message; $("fb-advice").className = "advice bad"; });
  }

  function tick() {
    if (!running) return;
    if (templates >= maxKept) { running = false; return; }
    if (!busy && video.videoWidth) {
      busy = true;
      canvas.width = video.videoWidth; canvas.height = video.videoHeight;
      canvas.getContext("2d").drawImage(video, 0, 0);
      canvas.toBlob((b) => send(b, false).finally(() => { busy = false; }), "image/jpeg", 0.92);
    }
    setTimeout(tick, 300);
  }

  $("start-camera").addEventListener("click", () => {
    navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false })
      .then((stream) => { video.srcObject = stream; running = true; tick(); })
      .catch(() => { $("fb-advice").textContent = texts.camera_error; $("fb-advice").className = "advice bad"; });
  });
  $("upload").addEventListener("change", async (ev) => {
    for (const f of ev.target.files) await send(f, true);
  });
  $("minor").addEventListener("change", (ev) => { $("guardian").required = ev.target.checked; });
  form.addEventListener("submit", () => {
    running = false;
    if (video.srcObject) for (const t of video.srcObject.getTracks()) t.stop();
  });
})();
