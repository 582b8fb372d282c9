// The pose-service page: a client of the public HTTP API and nothing else. The client key, when
// the service wants one, is typed in once and kept in this tab's session storage; it travels in
// the Authorization header only, never in a URL (media and downloads are fetched with it and
// handed to the browser as blobs).
"use strict";

const KEY_STORAGE = "pose-service.key";
const POLL_MS = 1000;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const VIDEO_EXT = /\.(mp4|m4v|mov|avi|mkv|webm|mpe?g|wmv|flv|3gp|ts)$/i;
// Shown when the service runs the tiny profile and a result has no one in it: the same sentence
// as pipeline/tiny/__init__.py:TINY_NOTE, which the command line logs.
const TINY_NOTE = "tiny test models: random weights, they only find the drawn test figures (python -m pipeline demo-media)";

const ui = {};
const session = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  keyRequired: false,
  jobId: null,
  pollTimer: null,
  objectUrls: [],
  fps: null,
  profile: null, // the service's profile, from /v1/info
};

function $(id) {
  return document.getElementById(id);
}

// -- talking to the API ---------------------------------------------------------------------

class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

function authHeaders() {
  return session.key ? { Authorization: `Bearer ${session.key}` } : {};
}

async function errorOf(resp) {
  let body = null;
  try {
    body = await resp.json();
  } catch (_) {
    // not JSON (a proxy's page): the status says enough
  }
  const err = body && body.error ? body.error : {};
  return new ApiError(err.code || `http_${resp.status}`, err.message || resp.statusText || "request failed", resp.status);
}

async function api(path, options = {}) {
  const headers = { ...authHeaders(), ...(options.headers || {}) };
  let resp;
  try {
    resp = await fetch(path, { ...options, headers });
  } catch (exc) {
    throw new ApiError("network_error", `the service did not answer (${exc.message})`, 0);
  }
  if (!resp.ok) {
    throw await errorOf(resp);
  }
  return resp;
}

async function apiJson(path, options) {
  return (await api(path, options)).json();
}

// An upload with progress (fetch cannot report upload progress): multipart, one file field.
function uploadForm(path, field, file, onProgress, responseType = "json") {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [name, value] of Object.entries(authHeaders())) {
      xhr.setRequestHeader(name, value);
    }
    xhr.responseType = responseType;
    xhr.upload.onprogress = (ev) => {
      if (ev.lengthComputable) {
        onProgress(ev.loaded, ev.total);
      }
    };
    xhr.onerror = () => reject(new ApiError("network_error", "the upload was cut off", 0));
    xhr.onload = async () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(xhr.response);
        return;
      }
      let body = xhr.response;
      if (body instanceof Blob) {
        try {
          body = JSON.parse(await body.text());
        } catch (_) {
          body = null;
        }
      }
      const err = body && body.error ? body.error : {};
      reject(new ApiError(err.code || `http_${xhr.status}`, err.message || xhr.statusText || "upload refused", xhr.status));
    };
    const form = new FormData();
    form.append(field, file, file.name);
    xhr.send(form);
  });
}

// -- small view helpers ---------------------------------------------------------------------

function showMessage(code, text) {
  ui.messageCode.textContent = code;
  ui.messageText.textContent = text;
  ui.message.hidden = false;
}

function showError(err) {
  showMessage(err.code || "error", err.message || String(err));
}

function clearMessage() {
  ui.message.hidden = true;
  ui.messageCode.textContent = "";
  ui.messageText.textContent = "";
}

function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) {
    return "";
  }
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = s % 60;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${rest} s`;
  return `${rest} s`;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function forgetObjectUrls() {
  for (const url of session.objectUrls) {
    URL.revokeObjectURL(url);
  }
  session.objectUrls = [];
}

function objectUrl(blob) {
  const url = URL.createObjectURL(blob);
  session.objectUrls.push(url);
  return url;
}

function stopPolling() {
  if (session.pollTimer !== null) {
    clearTimeout(session.pollTimer);
    session.pollTimer = null;
  }
}

// What the tiny profile's models are, said where they found no one.
function showTinyNote(nobody) {
  ui.tinyNote.textContent = TINY_NOTE;
  ui.tinyNote.hidden = !(nobody && session.profile === "tiny");
}

function resetViews() {
  stopPolling();
  forgetObjectUrls();
  clearMessage();
  session.jobId = null;
  session.fps = null;
  ui.job.hidden = true;
  ui.result.hidden = true;
  ui.video.hidden = true;
  ui.video.removeAttribute("src");
  ui.video.load();
  ui.image.hidden = true;
  ui.image.removeAttribute("src");
  ui.overlayNone.hidden = true;
  ui.tinyNote.hidden = true;
  ui.tracks.hidden = true;
  ui.people.hidden = true;
  ui.tracks.tBodies[0].replaceChildren();
  ui.people.tBodies[0].replaceChildren();
  ui.downloads.replaceChildren();
}

// -- the key --------------------------------------------------------------------------------

function showKeyForm(show) {
  ui.keyForm.hidden = !show;
  ui.keyForget.hidden = show || !session.key;
  if (show) {
    ui.keyInput.focus();
  }
}

async function useKey(key) {
  session.key = key;
  try {
    await loadInfo();
  } catch (err) {
    session.key = "";
    sessionStorage.removeItem(KEY_STORAGE);
    if (err.status === 401) {
      showMessage(err.code, "that key was not accepted");
      showKeyForm(true);
      return;
    }
    throw err;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  clearMessage();
  showKeyForm(false);
  await loadJobs();
}

async function loadInfo() {
  const info = await apiJson("/v1/info");
  session.profile = info.profile || null;
  const parts = [`profile ${info.profile || "?"}`];
  if (info.version) parts.push(`v${info.version}`);
  ui.serviceInfo.textContent = parts.join(" · ");
  return info;
}

// -- uploads --------------------------------------------------------------------------------

function isVideo(file) {
  if (file.type) {
    return file.type.startsWith("video/");
  }
  return VIDEO_EXT.test(file.name);
}

function uploadProgress(loaded, total) {
  ui.uploadBar.max = total;
  ui.uploadBar.value = loaded;
  const pct = total ? Math.round((100 * loaded) / total) : 0;
  ui.uploadText.textContent = loaded >= total ? "uploaded, waiting for the service…" : `uploading ${pct} %`;
}

async function submitFile(file) {
  if (!file) return;
  resetViews();
  ui.uploadProgress.hidden = false;
  uploadProgress(0, file.size || 1);
  try {
    if (isVideo(file)) {
      const query = ui.optRender.checked ? "?render=true" : "";
      const job = await uploadForm(`/v1/videos${query}`, "video", file, uploadProgress);
      ui.uploadText.textContent = "uploaded";
      showJob(job);
      await loadJobs();
    } else {
      await submitImage(file);
    }
  } catch (err) {
    ui.uploadText.textContent = "not accepted";
    showError(err);
  }
}

async function submitImage(file) {
  const result = await uploadForm("/v1/images", "image", file, uploadProgress);
  ui.uploadText.textContent = `${result.people.length} ${result.people.length === 1 ? "person" : "people"} found`;
  ui.result.hidden = false;
  const body = ui.people.tBodies[0];
  if (!result.people.length) {
    const row = document.createElement("tr");
    const td = cell(row, "no one was found in this image");
    td.colSpan = 3;
    td.className = "muted";
    body.appendChild(row);
  }
  showTinyNote(!result.people.length);
  result.people.forEach((person) => {
    const row = document.createElement("tr");
    cell(row, String(person.person_index));
    cell(row, person.score === null ? "given" : person.score.toFixed(3));
    cell(row, person.bbox.map((v) => v.toFixed(0)).join(", "));
    body.appendChild(row);
  });
  ui.people.hidden = false;
  const json = new Blob([JSON.stringify(result, null, 2)], { type: "application/json" });
  addDownload("JSON", objectUrl(json), `${file.name}.json`, "application/json", false);
  const png = await uploadForm("/v1/images?format=png", "image", file, () => {}, "blob");
  const pngUrl = objectUrl(png);
  ui.image.src = pngUrl;
  ui.image.hidden = false;
  addDownload("Overlay PNG", pngUrl, `${file.name}.overlay.png`, "image/png", false);
}

// -- a video job ----------------------------------------------------------------------------

function showJob(job) {
  session.jobId = job.id;
  ui.job.hidden = false;
  ui.jobId.textContent = job.id;
  renderJob(job);
  if (TERMINAL.has(job.state)) {
    finished(job);
  } else {
    session.pollTimer = setTimeout(() => poll(job.id), POLL_MS);
  }
}

function renderJob(job) {
  ui.jobState.textContent = job.cancel_requested && job.state === "running" ? "stopping" : job.state;
  ui.jobState.dataset.state = job.state;
  const { frames_done: done, frames_total: total } = job.progress;
  if (total) {
    ui.jobBar.max = total;
    ui.jobBar.value = Math.min(done, total);
    ui.jobFrames.textContent = `${done} / ${total} frames`;
  } else {
    ui.jobBar.removeAttribute("value");
    ui.jobFrames.textContent = done ? `${done} frames` : "";
  }
  const end = job.finished_at || Date.now() / 1000;
  const since = job.started_at || job.created_at;
  ui.jobElapsed.textContent = `elapsed ${duration(end - since)}`;
  const fraction = job.progress.fraction;
  if (job.state === "running" && fraction && fraction > 0 && fraction < 1 && job.started_at) {
    const running = Date.now() / 1000 - job.started_at;
    ui.jobEta.textContent = `· about ${duration((running * (1 - fraction)) / fraction)} left`;
  } else {
    ui.jobEta.textContent = job.state === "queued" ? "· waiting for a worker" : "";
  }
  ui.cancel.hidden = TERMINAL.has(job.state);
}

async function poll(jobId) {
  session.pollTimer = null;
  if (session.jobId !== jobId) return;
  let job;
  try {
    job = await apiJson(`/v1/jobs/${encodeURIComponent(jobId)}`);
  } catch (err) {
    showError(err);
    if (err.status === 0 || err.status >= 500) {
      session.pollTimer = setTimeout(() => poll(jobId), 3 * POLL_MS); // the service may be restarting
    }
    return;
  }
  if (session.jobId !== jobId) return;
  renderJob(job);
  if (TERMINAL.has(job.state)) {
    await finished(job);
  } else {
    session.pollTimer = setTimeout(() => poll(jobId), POLL_MS);
  }
}

async function finished(job) {
  if (job.state === "failed") {
    const err = job.error || { code: "failed", message: "the job failed" };
    showMessage(err.code, err.message);
  } else if (job.state === "cancelled") {
    showMessage("cancelled", "the job was cancelled before it finished");
  } else {
    try {
      await showVideoResult(job);
    } catch (err) {
      showError(err);
    }
  }
  await loadJobs();
}

async function cancelJob() {
  const jobId = session.jobId;
  if (!jobId) return;
  ui.cancel.disabled = true;
  try {
    const job = await apiJson(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
    if (session.jobId !== jobId) return;
    renderJob(job);
    if (TERMINAL.has(job.state)) {
      stopPolling();
      await finished(job);
    } // a running job stops at its next chunk: the polling sees it end
  } catch (err) {
    showError(err);
  } finally {
    ui.cancel.disabled = false;
  }
}

async function showVideoResult(job) {
  const base = `/v1/jobs/${encodeURIComponent(job.id)}`;
  ui.result.hidden = false;
  const summary = await apiJson(`${base}/summary`);
  session.fps = summary.video.fps;
  const body = ui.tracks.tBodies[0];
  body.replaceChildren();
  for (const track of summary.tracks) {
    const row = document.createElement("tr");
    row.tabIndex = 0;
    row.dataset.track = String(track.track_id);
    row.dataset.first = String(track.first_frame);
    row.setAttribute("aria-selected", "false");
    cell(row, String(track.track_id));
    cell(row, String(track.first_frame));
    cell(row, String(track.last_frame));
    cell(row, String(track.num_frames));
    body.appendChild(row);
  }
  if (!summary.tracks.length) {
    const row = document.createElement("tr");
    const td = cell(row, "no one was tracked in this video");
    td.colSpan = 4;
    td.className = "muted";
    body.appendChild(row);
  }
  showTinyNote(!summary.tracks.length);
  ui.tracks.hidden = false;

  addDownload("JSON", `${base}/result`, `${job.id}.json`, "application/json", true);
  addDownload("JSON Lines", `${base}/result?format=jsonl`, `${job.id}.jsonl`, "application/jsonl", true);
  addDownload("NPZ", `${base}/result?format=npz`, `${job.id}.npz`, "application/octet-stream", true);
  if (job.options && job.options.vertices) {
    addDownload("NPZ with vertices", `${base}/result?format=npz&vertices=true`, `${job.id}-vertices.npz`, "application/octet-stream", true);
  }
  if (summary.tracks.length) {
    addDownload("AMASS (zip)", `${base}/export?format=amass`, `${job.id}-amass.zip`, "application/zip", true);
    addDownload("BVH (zip)", `${base}/export?format=bvh`, `${job.id}-bvh.zip`, "application/zip", true);
    addDownload("glTF (zip)", `${base}/export?format=glb`, `${job.id}-glb.zip`, "application/zip", true);
  }
  addDownload("MOT", `${base}/export?format=mot`, `${job.id}-mot.txt`, "text/plain", true);

  if (job.results.includes("overlay")) {
    const overlay = `${base}/overlay.mp4`;
    addDownload("Overlay MP4", overlay, `${job.id}-overlay.mp4`, "video/mp4", true);
    // Without a key the browser streams and seeks with range requests; with one it cannot send
    // the header itself, so the file is fetched first.
    ui.video.src = session.key ? objectUrl(await (await api(overlay)).blob()) : overlay;
    ui.video.hidden = false;
  } else {
    ui.overlayNone.hidden = false;
  }
}

function selectTrack(row) {
  for (const other of ui.tracks.tBodies[0].rows) {
    other.setAttribute("aria-selected", other === row ? "true" : "false");
  }
  const first = Number(row.dataset.first);
  if (!ui.video.hidden && session.fps && Number.isFinite(ui.video.duration)) {
    ui.video.currentTime = Math.min(first / session.fps, ui.video.duration);
  }
}

// A link a person can open or save; ``api``: the href is an API path, fetched with the key when
// there is one (the browser would send none).
function addDownload(label, href, filename, type, isApi) {
  const item = document.createElement("li");
  const link = document.createElement("a");
  link.textContent = label;
  link.href = href;
  link.download = filename;
  link.type = type;
  if (isApi) {
    link.dataset.api = "true";
    link.addEventListener("click", (ev) => {
      if (!session.key) return; // a plain link does it
      ev.preventDefault();
      downloadWithKey(href, filename);
    });
  }
  item.appendChild(link);
  ui.downloads.appendChild(item);
}

async function downloadWithKey(href, filename) {
  try {
    const blob = await (await api(href)).blob();
    const url = URL.createObjectURL(blob);
    const temp = document.createElement("a");
    temp.href = url;
    temp.download = filename;
    document.body.appendChild(temp);
    temp.click();
    temp.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (err) {
    showError(err);
  }
}

// -- recent jobs ----------------------------------------------------------------------------

async function loadJobs() {
  let list;
  try {
    list = await apiJson("/v1/jobs?limit=20");
  } catch (err) {
    if (err.code === "videos_unavailable" || err.code === "data_dir_unavailable") {
      ui.jobList.replaceChildren();
      const item = document.createElement("li");
      item.className = "muted";
      item.textContent = `video jobs are off here (${err.code}); images still work`;
      ui.jobList.appendChild(item);
      return;
    }
    throw err;
  }
  ui.jobList.replaceChildren();
  if (!list.jobs.length) {
    const item = document.createElement("li");
    item.className = "muted";
    item.textContent = "no jobs yet";
    ui.jobList.appendChild(item);
    return;
  }
  for (const job of list.jobs) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.job = job.id;
    const id = document.createElement("code");
    id.textContent = job.id;
    const state = document.createElement("span");
    state.className = `state-${job.state}`;
    state.textContent = job.state;
    const when = document.createElement("span");
    when.className = "muted";
    when.textContent = new Date(job.created_at * 1000).toLocaleString();
    button.append(id, state, when);
    button.addEventListener("click", () => openJob(job.id));
    item.appendChild(button);
    ui.jobList.appendChild(item);
  }
}

async function openJob(jobId) {
  resetViews();
  ui.uploadProgress.hidden = true;
  try {
    showJob(await apiJson(`/v1/jobs/${encodeURIComponent(jobId)}`));
  } catch (err) {
    showError(err);
  }
}

// -- wiring ---------------------------------------------------------------------------------

function wire() {
  Object.assign(ui, {
    serviceInfo: $("service-info"),
    keyForm: $("key-form"),
    keyInput: $("key-input"),
    keyForget: $("key-forget"),
    message: $("message"),
    messageCode: $("message-code"),
    messageText: $("message-text"),
    dropZone: $("drop-zone"),
    fileInput: $("file-input"),
    optRender: $("opt-render"),
    uploadProgress: $("upload-progress"),
    uploadBar: $("upload-bar"),
    uploadText: $("upload-text"),
    job: $("job"),
    jobId: $("job-id"),
    jobState: $("job-state"),
    jobBar: $("job-bar"),
    jobFrames: $("job-frames"),
    jobElapsed: $("job-elapsed"),
    jobEta: $("job-eta"),
    cancel: $("cancel-button"),
    result: $("result"),
    video: $("overlay-video"),
    image: $("overlay-image"),
    overlayNone: $("overlay-none"),
    tinyNote: $("tiny-note"),
    tracks: $("tracks"),
    people: $("people"),
    downloads: $("downloads"),
    jobList: $("job-list"),
    refreshJobs: $("refresh-jobs"),
  });

  ui.keyForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    useKey(ui.keyInput.value.trim()).catch(showError);
    ui.keyInput.value = "";
  });
  ui.keyForget.addEventListener("click", () => {
    session.key = "";
    sessionStorage.removeItem(KEY_STORAGE);
    resetViews();
    ui.jobList.replaceChildren();
    showKeyForm(true);
  });
  ui.fileInput.addEventListener("change", () => {
    const file = ui.fileInput.files[0];
    ui.fileInput.value = ""; // the same file can be chosen again
    submitFile(file);
  });
  for (const name of ["dragenter", "dragover"]) {
    ui.dropZone.addEventListener(name, (ev) => {
      ev.preventDefault();
      ui.dropZone.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    ui.dropZone.addEventListener(name, () => ui.dropZone.classList.remove("over"));
  }
  ui.dropZone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    submitFile(ev.dataTransfer.files[0]);
  });
  ui.cancel.addEventListener("click", cancelJob);
  ui.refreshJobs.addEventListener("click", () => loadJobs().catch(showError));
  ui.tracks.tBodies[0].addEventListener("click", (ev) => {
    const row = ev.target.closest("tr");
    if (row && row.dataset.track) selectTrack(row);
  });
  ui.tracks.tBodies[0].addEventListener("keydown", (ev) => {
    const row = ev.target.closest("tr");
    if (!row || !row.dataset.track) return;
    if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      selectTrack(row);
    } else if (ev.key === "ArrowDown" && row.nextElementSibling) {
      ev.preventDefault();
      row.nextElementSibling.focus();
    } else if (ev.key === "ArrowUp" && row.previousElementSibling) {
      ev.preventDefault();
      row.previousElementSibling.focus();
    }
  });
}

async function start() {
  wire();
  const health = await apiJson("/healthz");
  session.keyRequired = health.key_required;
  if (session.keyRequired && !session.key) {
    showKeyForm(true);
    return;
  }
  if (session.key) {
    await useKey(session.key);
  } else {
    await loadInfo();
    await loadJobs();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  start().catch(showError);
});
