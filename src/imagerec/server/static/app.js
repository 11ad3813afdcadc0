// imagerec web page: upload images or use the camera; talks to POST /v1/predict on this server only.
"use strict";

const state = {
  key: sessionStorage.getItem("imagerec-key") || "", camera: null, cameraAbort: null, session: null, numClasses: 5,
};
const $ = (id) => document.getElementById(id);
// why an answer is "unknown" (the server's "reason")
const REASONS = { low_confidence: "not sure", out_of_distribution: "unlike the training images" };

// what an answer says: its label, or a multi-label run's label set ("shirt + bag"; "unknown" when empty)
function shownLabel(answer) {
  return Array.isArray(answer.labels) && answer.labels.length ? answer.labels.join(" + ") : answer.label;
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.key) h["X-API-Key"] = state.key;
  return h;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return `${body.error.code}: ${body.error.message}`;
  } catch (_) { /* not JSON */ }
  return `HTTP ${response.status}`;
}

async function loadModel() {
  const response = await fetch("/v1/model", { headers: headers() });
  if (response.status === 401) {
    $("key-section").hidden = false;
    $("model-info").textContent = "Enter the API key to use this server.";
    return;
  }
  if (!response.ok) {
    $("model-info").textContent = `Cannot read model information (${await errorText(response)})`;
    return;
  }
  const info = await response.json();
  state.numClasses = info.num_classes;
  $("top-k").max = String(info.num_classes);
  if (Number($("top-k").value) > info.num_classes) $("top-k").value = String(info.num_classes);
  const acc = info.metrics && info.metrics.test && info.metrics.test.accuracy;
  $("model-info").textContent = `Model ${info.name} (version ${info.version}): ${info.num_classes} classes, ` +
    `input ${info.input_shape.join("×")}` + (acc !== undefined ? `, test accuracy ${(acc * 100).toFixed(1)}%` : "");
}

function renderBars(topK) {
  const list = document.createElement("ol");
  list.className = "bars";
  list.setAttribute("aria-label", "Top classes");
  for (const item of topK) {
    const li = document.createElement("li");
    li.className = "bar";
    const pct = (item.score * 100).toFixed(1);
    li.setAttribute("aria-label", `${item.label}: ${pct} percent`);
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${Math.max(0, Math.min(100, item.score * 100))}%`;
    const name = document.createElement("span");
    name.textContent = item.label;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `${pct}%`;
    li.append(fill, name, score);
    list.append(li);
  }
  return list;
}

async function classifyFile(file) {
  const li = document.createElement("li");
  li.className = "result pending";
  const img = document.createElement("img");
  img.alt = `Preview of ${file.name}`;
  img.src = URL.createObjectURL(file);
  const body = document.createElement("div");
  body.className = "body";
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = file.name;
  const status = document.createElement("div");
  status.className = "label";
  status.textContent = "Classifying…";
  body.append(name, status);
  li.append(img, body);
  $("results").prepend(li);

  const form = new FormData();
  form.append("file", file, file.name);
  const k = Math.max(1, Math.min(state.numClasses, Number($("top-k").value) || 3));
  try {
    const response = await fetch(`/v1/predict?top_k=${k}`, { method: "POST", body: form, headers: headers() });
    if (!response.ok) throw new Error(await errorText(response));
    const result = (await response.json()).predictions[0];
    li.className = "result ok";
    const label = shownLabel(result);
    status.textContent = `${label} (${(result.confidence * 100).toFixed(1)}%)`;
    if (result.reason) status.textContent += ` · ${REASONS[result.reason] || result.reason}`;
    li.setAttribute("aria-label", `${file.name}: ${label}`);
    body.append(renderBars(result.top_k));
  } catch (err) {
    li.className = "result error";
    img.remove();
    URL.revokeObjectURL(img.src);
    status.textContent = "Error";
    const message = document.createElement("div");
    message.className = "message";
    message.setAttribute("role", "alert");
    message.textContent = String(err.message || err);
    body.append(message);
  }
}

function handleFiles(files) {
  for (const file of files) classifyFile(file);
}

function dropLate(result) {
  // counted, so a test (or a curious user in devtools) can see that late answers were ignored
  result.dataset.lateAnswers = String(Number(result.dataset.lateAnswers || 0) + 1);
}

async function cameraLoop(stream, abort) {
  // `stream` is the camera this loop serves: once Stop (or a new Start) replaces state.camera, whatever this loop
  // still receives is a late answer for a camera that is off, and is dropped instead of overwriting "Camera off".
  const video = $("video");
  const canvas = $("frame");
  const result = $("camera-result");
  let frames = 0;
  while (state.camera === stream) {
    if (video.videoWidth > 0) {
      const scale = Math.min(1, 256 / Math.max(video.videoWidth, video.videoHeight));
      canvas.width = Math.round(video.videoWidth * scale);
      canvas.height = Math.round(video.videoHeight * scale);
      canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.85));
      const smooth = $("smooth").value;
      try {
        const response = await fetch(`/v1/predict?top_k=1&session=${state.session}&smooth=${smooth}`, {
          method: "POST", body: blob, headers: headers({ "Content-Type": "image/jpeg" }), signal: abort.signal,
        });
        if (!response.ok) throw new Error(await errorText(response));
        const answer = (await response.json()).predictions[0];
        if (state.camera !== stream) return dropLate(result); // stopped while the answer was on its way
        const shown = answer.smoothed || answer;
        frames += 1;
        result.textContent = `${shownLabel(shown)} ${(shown.confidence * 100).toFixed(0)}%`;
        if (shown.reason) result.textContent += ` · ${REASONS[shown.reason] || shown.reason}`;
        result.dataset.label = shownLabel(shown);
        result.dataset.frames = String(frames);
      } catch (err) {
        if (state.camera !== stream) return dropLate(result); // the abort of Stop, or a late failure
        result.textContent = `Error: ${err.message || err}`;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 150)); // one frame in flight at a time: no backlog
  }
}

async function toggleCamera() {
  const button = $("camera-toggle");
  if (state.camera) {
    state.camera.getTracks().forEach((t) => t.stop());
    state.camera = null;
    if (state.cameraAbort) state.cameraAbort.abort(); // the answer in flight is not wanted any more
    state.cameraAbort = null;
    delete $("camera-result").dataset.label;
    $("video").srcObject = null;
    button.textContent = "Start camera";
    button.setAttribute("aria-pressed", "false");
    $("camera-result").textContent = "Camera off";
    return;
  }
  try {
    state.camera = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (err) {
    $("camera-result").textContent = `Camera unavailable: ${err.message || err}`;
    return;
  }
  state.session = Math.random().toString(36).slice(2, 12);
  $("video").srcObject = state.camera;
  button.textContent = "Stop camera";
  button.setAttribute("aria-pressed", "true");
  $("camera-result").textContent = "Starting…";
  state.cameraAbort = new AbortController();
  cameraLoop(state.camera, state.cameraAbort);
}

function setup() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    handleFiles(e.dataTransfer.files);
  });
  zone.addEventListener("click", (e) => { if (e.target === zone || e.target.id === "drop-help") $("file-input").click(); });
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file-input").click(); } });
  $("file-input").addEventListener("change", (e) => { handleFiles(e.target.files); e.target.value = ""; });
  $("clear").addEventListener("click", () => { $("results").replaceChildren(); });
  $("camera-toggle").addEventListener("click", toggleCamera);
  $("key-save").addEventListener("click", () => {
    state.key = $("api-key").value.trim();
    sessionStorage.setItem("imagerec-key", state.key);
    $("key-section").hidden = true;
    loadModel();
  });
  loadModel();
}

document.addEventListener("DOMContentLoaded", setup);
