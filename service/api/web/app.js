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
const TINY_NOTE = "tiny test models: untrained, they only find the drawn test figures (python -m pipeline demo-media)";
// The 3D view's element, <model-viewer> (vendor/README.md), loaded on first use: a megabyte that
// a page used only for images never needs. Relative to this script.
const VIEWER_MODULE = "./vendor/model-viewer.min.js";
const GLB_MAGIC = 0x46546c67; // "glTF"
// The viewer plays its clip in a loop, so its last instant is also its first: the view is held a
// hair before it (a tenth of a millisecond; keys are a frame apart).
const CLIP_END_HOLD_S = 1e-4;
// The exports carry no material (glTF's default is white metal, pale on a pale page): the view
// draws the body matte, in a blue of the page.
const BODY_COLOUR = "#5b8fd9";

const ui = {};
const session = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  keyRequired: false,
  jobId: null,
  pollTimer: null,
  objectUrls: [],
  fps: null,
  profile: null, // the service's profile, from /v1/info
  view: null, // the 3D view's track: { trackId, url, motion, loaded, shownAt }
  viewFrame: null, // requestAnimationFrame id while the view follows a playing video
};
let viewerModule = null;

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
  ui.overlayState.hidden = true;
  ui.overlayState.textContent = "";
  delete ui.overlayState.dataset.state;
  ui.tinyNote.hidden = true;
  ui.tracks.hidden = true;
  ui.people.hidden = true;
  ui.tracks.tBodies[0].replaceChildren();
  ui.people.tBodies[0].replaceChildren();
  ui.downloads.replaceChildren();
  closeView3d();
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
  ui.jobState.textContent = job.state;
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

// One poll of the job shown: the job, or null when the page has moved on to another job or the
// fetch failed. A failure is shown (unless `quiet`) and `again` is scheduled later when the
// service may be restarting (no answer, 5xx; any failure when `quiet`).
async function fetchShownJob(jobId, again, quiet = false) {
  session.pollTimer = null;
  if (session.jobId !== jobId) return null;
  try {
    const job = await apiJson(`/v1/jobs/${encodeURIComponent(jobId)}`);
    return session.jobId === jobId ? job : null;
  } catch (err) {
    if (!quiet) showError(err);
    if (quiet || err.status === 0 || err.status >= 500) session.pollTimer = setTimeout(again, 3 * POLL_MS);
    return null;
  }
}

async function poll(jobId) {
  const job = await fetchShownJob(jobId, () => poll(jobId));
  if (!job) return;
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
  ui.view3d.hidden = !summary.tracks.length;

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

  if (job.overlay) {
    await showOverlay(job);
  } else {
    ui.overlayNone.hidden = false;
  }
}

// The overlay video of a render=true job is drawn after the job succeeds (its own state:
// pending, ready, failed): said while it is drawn, polled until it is ready or failed.
async function showOverlay(job) {
  const overlay = job.overlay;
  ui.overlayState.dataset.state = overlay.state;
  if (overlay.state === "pending") {
    ui.overlayState.textContent = "The result is ready; the overlay video is still being drawn…";
    ui.overlayState.hidden = false;
    session.pollTimer = setTimeout(() => pollOverlay(job.id), POLL_MS);
    return;
  }
  if (overlay.state === "failed") {
    const err = overlay.error || { code: "render_failed", message: "the overlay could not be drawn" };
    ui.overlayState.textContent = `No overlay video (${err.code}): ${err.message}. The result above is complete.`;
    ui.overlayState.hidden = false;
    return;
  }
  ui.overlayState.hidden = true;
  const url = `/v1/jobs/${encodeURIComponent(job.id)}/overlay.mp4`;
  addDownload("Overlay MP4", url, `${job.id}-overlay.mp4`, "video/mp4", true);
  // Without a key the browser streams and seeks with range requests; with one it cannot send
  // the header itself, so the file is fetched first.
  ui.video.src = session.key ? objectUrl(await (await api(url)).blob()) : url;
  ui.video.hidden = false;
}

async function pollOverlay(jobId) {
  const job = await fetchShownJob(jobId, () => pollOverlay(jobId), true);
  if (!job || !job.overlay) return;
  try {
    await showOverlay(job);
  } catch (err) {
    showError(err);
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
  showTrack3d(Number(row.dataset.track)).catch(showError);
}

// -- the 3D view ----------------------------------------------------------------------------
// The selected track's GLB export (pipeline/export/gltf.py: a skinned SMPL mesh, its animation
// keyed at the track's detections in seconds from the video start) in <model-viewer>. The
// viewer's own playback stays paused: its time is set from the overlay video's (or, where the
// job has no overlay, from a clock that loops over the track), and the camera orbits the body's
// pelvis at that same time, wherever the body walks.

function loadViewerModule() {
  if (!viewerModule) {
    viewerModule = import(VIEWER_MODULE).catch((exc) => {
      viewerModule = null;
      throw new ApiError("viewer_unavailable", `the 3D viewer did not load (${exc.message})`, 0);
    });
  }
  return viewerModule;
}

// What the view needs from a GLB, read from its JSON chunk and the float arrays of its binary
// chunk: the animation's name, its key times, the root joint's path (translations in metres,
// y up), and the frames the track spans (asset.extras).
function glbMotion(buffer) {
  const data = new DataView(buffer);
  if (buffer.byteLength < 28 || data.getUint32(0, true) !== GLB_MAGIC) {
    throw new ApiError("glb_unreadable", "the track's 3D file is not a GLB", 0);
  }
  const jsonLength = data.getUint32(12, true);
  const doc = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 20, jsonLength)));
  const binStart = 20 + jsonLength + 8; // both chunks start 4-byte aligned, and so does each view
  const floats = (index) => {
    const acc = doc.accessors[index];
    const view = doc.bufferViews[acc.bufferView];
    const width = { SCALAR: 1, VEC3: 3, VEC4: 4 }[acc.type];
    return new Float32Array(buffer, binStart + (view.byteOffset || 0) + (acc.byteOffset || 0), acc.count * width);
  };
  const animation = doc.animations[0];
  const root = doc.skins[0].joints[0];
  const channel = animation.channels.find((c) => c.target.node === root && c.target.path === "translation");
  const sampler = animation.samplers[channel.sampler];
  const extras = doc.asset.extras || {};
  return {
    name: animation.name,
    times: floats(sampler.input),
    root: floats(sampler.output),
    firstFrame: extras.first_frame,
    lastFrame: extras.last_frame,
  };
}

// The clip time of a video time. The overlay video has a constant frame rate (session.fps);
// its frames between the track's first and last are mapped onto the keys' times (the same
// times at a constant rate; a variable-rate video's keys carry the frames' real presentation
// times), and the view holds the first or last pose outside them.
function clipTime(motion, videoTime) {
  const { times, firstFrame, lastFrame } = motion;
  const start = times[0];
  const end = times[times.length - 1];
  if (!session.fps || !(lastFrame > firstFrame)) return start;
  const along = (videoTime * session.fps - firstFrame) / (lastFrame - firstFrame);
  return start + Math.min(Math.max(along, 0), 1) * (end - start);
}

// The root joint's position at clip time t: linear between keys, as the clip's sampler.
function rootAt(motion, t) {
  const { times, root } = motion;
  let hi = 0;
  let lo = times.length - 1;
  if (t <= times[0]) {
    lo = 0;
  } else if (t >= times[lo]) {
    hi = lo;
  } else {
    hi = lo;
    lo = 0;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (times[mid] <= t) lo = mid;
      else hi = mid;
    }
  }
  const w = hi === lo ? 0 : (t - times[lo]) / (times[hi] - times[lo]);
  return [0, 1, 2].map((k) => root[3 * lo + k] * (1 - w) + root[3 * hi + k] * w);
}

function videoClock() {
  return !ui.video.hidden && session.fps;
}

// Without a video: the track's span, over and over, in real time.
function loopTime(view) {
  const { times } = view.motion;
  const start = times[0];
  const span = times[times.length - 1] - start;
  return span > 0 ? start + (((performance.now() - view.shownAt) / 1000) % span) : start;
}

// Puts the viewer at the video's time (or the loop's), the camera on the body.
function syncView3d() {
  const view = session.view;
  if (!view || !view.loaded) return;
  const t = videoClock() ? clipTime(view.motion, ui.video.currentTime) : loopTime(view);
  ui.viewer.currentTime = Math.min(t, Math.max(ui.viewer.duration - CLIP_END_HOLD_S, 0));
  if (videoClock()) {
    const frame = Math.round(ui.video.currentTime * session.fps);
    const { firstFrame, lastFrame } = view.motion;
    const outside = frame < firstFrame ? " (not seen yet: its first pose)" : frame > lastFrame ? " (no longer seen: its last pose)" : "";
    ui.view3dFrame.textContent = `video frame ${frame}; track ${view.trackId} seen in frames ${firstFrame}–${lastFrame}${outside}`;
  }
  const [x, y, z] = rootAt(view.motion, t);
  const target = `${x.toFixed(3)}m ${y.toFixed(3)}m ${z.toFixed(3)}m`;
  if (ui.viewer.cameraTarget !== target) {
    ui.viewer.cameraTarget = target;
    // at once, not eased: an eased camera trails a moving body (or loses a jittery one)
    ui.viewer.jumpCameraToGoal();
  }
}

function followView3d() {
  session.viewFrame = null;
  syncView3d();
  const running = videoClock() ? !ui.video.paused && !ui.video.ended : session.view && session.view.loaded;
  if (running) session.viewFrame = requestAnimationFrame(followView3d);
}

function startFollowing() {
  if (session.viewFrame === null) session.viewFrame = requestAnimationFrame(followView3d);
}

async function showTrack3d(trackId) {
  if (session.view && session.view.trackId === trackId) return;
  closeView3d();
  const view = { trackId, url: null, motion: null, loaded: false, shownAt: 0 };
  session.view = view;
  ui.view3d.hidden = false;
  ui.view3dHint.hidden = true;
  ui.view3dTrack.textContent = `· track ${trackId}`;
  ui.view3dFrame.textContent = "loading the track's mesh…";
  const path = `/v1/jobs/${encodeURIComponent(session.jobId)}/export?format=glb&track=${trackId}`;
  let buffer;
  try {
    // the key travels in the header: the file is fetched here and given to the viewer as a blob
    const [, resp] = await Promise.all([loadViewerModule(), api(path)]);
    buffer = await resp.arrayBuffer();
  } catch (err) {
    if (session.view === view) ui.view3dFrame.textContent = "";
    throw err;
  }
  if (session.view !== view) return; // another track was chosen meanwhile
  view.motion = glbMotion(buffer);
  view.url = URL.createObjectURL(new Blob([buffer], { type: "model/gltf-binary" }));
  ui.viewer.setAttribute("animation-name", view.motion.name);
  ui.viewer.setAttribute("alt", `track ${trackId}'s body, a 3D model`);
  ui.viewer.setAttribute("src", view.url);
  ui.viewer.hidden = false;
}

// The viewer's `load`: the clip is ready; paused, it takes its time from the page.
async function view3dLoaded() {
  const view = session.view;
  if (!view || ui.viewer.getAttribute("src") !== view.url) return;
  view.loaded = true;
  for (const material of ui.viewer.model ? ui.viewer.model.materials : []) {
    material.pbrMetallicRoughness.setBaseColorFactor(BODY_COLOUR);
    material.pbrMetallicRoughness.setMetallicFactor(0);
    material.pbrMetallicRoughness.setRoughnessFactor(0.7);
  }
  ui.viewer.pause();
  view.shownAt = performance.now();
  if (!videoClock()) {
    ui.view3dFrame.textContent = `track ${view.trackId}: frames ${view.motion.firstFrame}–${view.motion.lastFrame}, played in a loop`;
  }
  syncView3d();
  await ui.viewer.updateFraming(); // the camera's distance, for the body where it stands now
  if (session.view !== view) return;
  ui.viewer.dataset.track = String(view.trackId);
  startFollowing();
}

function closeView3d() {
  if (session.viewFrame !== null) {
    cancelAnimationFrame(session.viewFrame);
    session.viewFrame = null;
  }
  const view = session.view;
  session.view = null;
  if (view && view.url) URL.revokeObjectURL(view.url);
  ui.viewer.removeAttribute("src");
  delete ui.viewer.dataset.track;
  ui.viewer.hidden = true;
  ui.view3d.hidden = true;
  ui.view3dHint.hidden = false;
  ui.view3dTrack.textContent = "";
  ui.view3dFrame.textContent = "";
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
    overlayState: $("overlay-state"),
    tinyNote: $("tiny-note"),
    tracks: $("tracks"),
    people: $("people"),
    view3d: $("view3d"),
    view3dTrack: $("view3d-track"),
    view3dHint: $("view3d-hint"),
    view3dFrame: $("view3d-frame"),
    viewer: $("track-viewer"),
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
  ui.viewer.addEventListener("load", () => view3dLoaded().catch(showError));
  ui.viewer.addEventListener("error", (ev) => {
    const detail = ev.detail || {};
    showMessage("viewer_error", `the 3D view could not show the track (${detail.type || "load failed"})`);
  });
  ui.video.addEventListener("play", startFollowing);
  for (const name of ["seeking", "seeked", "timeupdate", "pause", "loadedmetadata"]) {
    ui.video.addEventListener(name, syncView3d);
  }
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
