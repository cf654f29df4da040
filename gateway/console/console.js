// The t2v console: plain DOM, no framework, no build step. It speaks only to the gateway's own
// API with the signed-in bearer token (kept in sessionStorage: gone when the tab closes).
// Everything the API says is shown with textContent, never as HTML.

const TOKEN_KEY = "t2v.token";
const OIDC_KEY = "t2v.oidc";
const TERMINAL = ["completed", "failed", "canceled"];
const $ = (id) => document.getElementById(id);
/** The contract's bound on an inline image (`MAX_INLINE_IMAGE_BYTES`); larger ones go by URI. */
const MAX_INLINE_IMAGE_BYTES = 48 * 1024;

/** The job the "Video" panel shows, and the stream that follows it. */
let current = { id: null, stream: null };
/** Blob URLs of fetched videos and thumbnails, by API path: freed on sign-out. */
const blobs = new Map();

// ---- the API ----

/** An error the API gave: its own words (`error.message`), else the HTTP status. */
async function apiError(response) {
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch {
    // Not JSON (a proxy's page): the status says enough.
  }
  const error = new Error(message);
  error.status = response.status;
  return error;
}

/** `fetch` with the bearer token; rejects with the API's own message on a non-2xx answer. */
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.set("Authorization", `Bearer ${token}`);
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) throw await apiError(response);
  return response;
}

function showError(error) {
  const box = $("error");
  box.textContent = error ? error.message || String(error) : "";
  box.hidden = !error;
  if (error && error.status === 401) signOut(false);
}

/** A URL the page may use for an artifact: signed links as they are, gateway paths as blobs. */
async function artifactUrl(link) {
  if (!link || !link.url) return null;
  if (!link.url.startsWith("/")) return link.url;
  if (!blobs.has(link.url)) {
    const response = await api(link.url);
    blobs.set(link.url, URL.createObjectURL(await response.blob()));
  }
  return blobs.get(link.url);
}

// ---- signing in ----

function base64(bytes) {
  let text = "";
  for (const b of new Uint8Array(bytes)) text += String.fromCharCode(b);
  return btoa(text);
}

function base64url(bytes) {
  return base64(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomString(n) {
  return base64url(crypto.getRandomValues(new Uint8Array(n)));
}

/** Authorization code + PKCE: the verifier stays in this tab, the gateway builds the URL. */
async function startOidc() {
  const verifier = randomString(32);
  const state = randomString(16);
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  sessionStorage.setItem(OIDC_KEY, JSON.stringify({ verifier, state }));
  const query = new URLSearchParams({ state, code_challenge: base64url(digest) });
  location.assign(`/console/oidc/login?${query}`);
}

/** Back from the identity provider: trade the code for a token through the gateway. */
async function finishOidc(params) {
  history.replaceState(null, "", "/");
  if (params.get("error")) {
    throw new Error(`sign-in failed: ${params.get("error_description") || params.get("error")}`);
  }
  const pending = JSON.parse(sessionStorage.getItem(OIDC_KEY) || "null");
  sessionStorage.removeItem(OIDC_KEY);
  if (!pending || pending.state !== params.get("state")) {
    throw new Error("sign-in answer does not match the request made from this tab — sign in again");
  }
  const response = await api("/console/oidc/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ code: params.get("code"), codeVerifier: pending.verifier }),
  });
  const { accessToken } = await response.json();
  sessionStorage.setItem(TOKEN_KEY, accessToken);
}

/** The caller and today's quota, from `GET /v1/usage` (which also checks the token). */
async function showUsage() {
  const usage = await (await api("/v1/usage")).json();
  $("who").textContent = `Signed in as ${usage.tenant} — ${usage.videos.remaining} of ${usage.videos.limit} videos left today`;
}

/** Checks the token and shows the signed-in console. */
async function signedIn() {
  await showUsage();
  for (const id of ["create", "gallery-section", "sign-out"]) $(id).hidden = false;
  $("sign-in").hidden = true;
  await refreshGallery();
}

function signOut(clearError = true) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (current.stream) current.stream.abort();
  current = { id: null, stream: null };
  for (const url of blobs.values()) URL.revokeObjectURL(url);
  blobs.clear();
  for (const id of ["create", "gallery-section", "sign-out", "job"]) $(id).hidden = true;
  $("sign-in").hidden = false;
  $("who").textContent = "";
  $("gallery").replaceChildren();
  if (clearError) showError(null);
}

// ---- submitting ----

function requestBody(form) {
  const field = (name) => form.elements[name].value.trim();
  const [width, height] = field("size").split("x").map(Number);
  const body = {
    model: field("model"),
    prompt: field("prompt"),
    width,
    height,
    numFrames: Number(field("numFrames")),
    fps: Number(field("fps")),
    numInferenceSteps: Number(field("numInferenceSteps")),
  };
  if (field("negativePrompt")) body.negativePrompt = field("negativePrompt");
  // 64-bit integers travel as strings in the request's JSON form.
  if (field("seed")) body.seed = field("seed");
  return body;
}

// ---- the conditioning image ----

/** A size as people read it: bytes below 1 KiB, else KiB with one decimal. */
function sizeText(bytes) {
  return bytes < 1024 ? `${bytes} bytes` : `${(bytes / 1024).toFixed(1)} KiB`;
}

/** The image format `bytes` start with (what the workers decode), whatever the file is named. */
function imageFormat(bytes) {
  const text = String.fromCharCode(...bytes.slice(0, 12));
  if (text.startsWith("\x89PNG\r\n\x1a\n")) return "PNG";
  if (text.startsWith("\xff\xd8\xff")) return "JPEG";
  if (text.startsWith("RIFF") && text.slice(8, 12) === "WEBP") return "WebP";
  return null;
}

/** A picked file as `{inline}`, refused here with the cause and the fix before anything is sent. */
async function inlineImage(file) {
  const limit = `${MAX_INLINE_IMAGE_BYTES / 1024} KiB (${MAX_INLINE_IMAGE_BYTES} bytes)`;
  if (file.size > MAX_INLINE_IMAGE_BYTES) {
    throw new Error(`The image file ${file.name} is ${sizeText(file.size)} (${file.size} bytes), ` +
      `over the ${limit} limit for an uploaded image — put it in a bucket and give its URI ` +
      `(s3://, gs:// or az://) in the image URI field instead, or pick a smaller file`);
  }
  const bytes = new Uint8Array(await file.arrayBuffer());
  if (!imageFormat(bytes)) {
    throw new Error(`The image file ${file.name} is not a PNG, JPEG or WebP image — ` +
      `convert it to one of those, or pick another file`);
  }
  return { inline: base64(bytes) };
}

/** The form's `image` (a file sent inline, or a URI the gateway checks), or null for none. */
async function requestImage(form) {
  const file = form.elements.imageFile.files[0];
  const uri = form.elements.imageUri.value.trim();
  if (file && uri) {
    throw new Error("Both an image file and an image URI are given — the video takes one image: " +
      "clear the URI field or the file (the \"Clear image\" button clears both)");
  }
  if (uri) return { uri };
  return file ? inlineImage(file) : null;
}

function clearImage() {
  $("image-file").value = "";
  $("image-uri").value = "";
}

/** What the job resource says of its image: a URI as sent, an inline one by size and digest. */
function describeImage(image) {
  if (!image) return "";
  if (image.uri) return `Image: ${image.uri}`;
  return `Image: ${sizeText(Number(image.sizeBytes))}, sha256 ${String(image.sha256).slice(0, 12)}…`;
}

async function submitVideo(form) {
  const body = requestBody(form);
  const image = await requestImage(form);
  if (image) body.image = image;
  const response = await api("/v1/videos", {
    method: "POST",
    // A retried click is the same request, not a second video.
    headers: { "Content-Type": "application/json", "Idempotency-Key": randomString(18) },
    body: JSON.stringify(body),
  });
  const job = await response.json();
  follow(job);
  await Promise.all([refreshGallery(), showUsage()]);
}

// ---- following one job ----

function describe(job) {
  const p = job.progress || {};
  switch (job.state) {
    case "queued":
      return job.queuePosition ? `Queued — position ${job.queuePosition} in the queue` : "Queued";
    case "running":
      return `Running — step ${p.step || 0} of ${p.totalSteps || "?"}` +
        (p.etaMs ? `, about ${Math.ceil(Number(p.etaMs) / 1000)} s left` : "");
    case "completed":
      return `Completed in ${seconds(job.timings && job.timings.totalMs)}`;
    case "failed":
      return `Failed: ${(job.error && job.error.message) || "no reason given"}`;
    case "canceled":
      return "Canceled";
    default:
      return job.state;
  }
}

function seconds(ms) {
  return ms === undefined || ms === null ? "?" : `${(Number(ms) / 1000).toFixed(1)} s`;
}

function percent(job) {
  if (job.state === "completed") return 100;
  const p = job.progress || {};
  if (!p.totalSteps) return 0;
  return Math.min(100, Math.floor((100 * (p.step || 0)) / p.totalSteps));
}

async function render(job) {
  if (job.id !== current.id) return;
  $("job-state").textContent = describe(job);
  $("job-state").dataset.state = job.state;
  const value = percent(job);
  $("progress").value = value;
  $("progress").setAttribute("aria-valuetext", `${value} %`);
  $("progress-text").textContent = `${value} %`;
  $("cancel").hidden = TERMINAL.includes(job.state);
  if (job.state === "completed") {
    const player = $("player");
    player.src = await artifactUrl(job.result && job.result.video);
    player.hidden = false;
    // Muted inline playback may start on its own; a refusal leaves the controls to the user.
    player.play().catch(() => {});
  }
  if (TERMINAL.includes(job.state)) await refreshGallery();
}

/** Shows `job` and follows its events until a terminal state. */
function follow(job) {
  if (current.stream) current.stream.abort();
  current = { id: job.id, stream: new AbortController() };
  $("job").hidden = false;
  $("job-id").textContent = job.id;
  showJobImage(job.settings && job.settings.image);
  $("player").hidden = true;
  $("player").removeAttribute("src");
  render(job).catch(showError);
  if (!TERMINAL.includes(job.state)) streamEvents(job.id, current.stream.signal).catch(showError);
}

function showJobImage(image) {
  const line = $("job-image");
  line.textContent = describeImage(image);
  line.title = image && image.sha256 ? `sha256 ${image.sha256}` : "";
  line.hidden = !image;
}

/**
 * `GET /v1/videos/{id}/events` read with fetch (EventSource cannot send the Authorization header):
 * one JSON job resource per message. Reconnects while the job is not finished.
 */
async function streamEvents(id, signal) {
  let finished = false;
  while (!finished && !signal.aborted) {
    try {
      const response = await api(`/v1/videos/${encodeURIComponent(id)}/events`, {
        headers: { Accept: "text/event-stream" },
        signal,
      });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer = (buffer + value).replace(/\r\n/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:"))
            .map((l) => l.slice(5).trimStart()).join("\n");
          if (!data) continue; // a keep-alive comment
          const job = JSON.parse(data);
          finished = TERMINAL.includes(job.state);
          await render(job);
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error.status && error.status < 500) throw error;
    }
    if (!finished && !signal.aborted) await new Promise((r) => setTimeout(r, 1000));
  }
}

async function cancelCurrent() {
  const response = await api(`/v1/videos/${encodeURIComponent(current.id)}`, { method: "DELETE" });
  const job = await response.json();
  $("job-state").textContent = `${describe(job)} — cancel requested`;
}

// ---- the gallery ----

async function refreshGallery() {
  const { videos } = await (await api("/v1/videos?limit=24")).json();
  const items = await Promise.all(videos.map(galleryItem));
  $("gallery").replaceChildren(...items);
}

async function galleryItem(job) {
  const li = document.createElement("li");
  li.dataset.id = job.id;
  li.dataset.state = job.state;
  const thumb = job.result && job.result.thumbnail;
  if (thumb) {
    const img = document.createElement("img");
    img.alt = `Thumbnail of: ${job.settings.prompt}`;
    img.src = (await artifactUrl(thumb).catch(() => null)) || "";
    li.append(img);
  }
  const text = (content, className) => {
    const p = document.createElement("p");
    p.textContent = content;
    if (className) p.className = className;
    li.append(p);
  };
  text(job.settings.prompt);
  text(job.state, `state state-${job.state}`);
  text(`Submitted ${new Date(job.createdAtUnixMs).toLocaleString()}`);
  if (job.settings.image) text(describeImage(job.settings.image));
  if (job.timings) {
    text(`Queued ${seconds(job.timings.queueWaitMs)}, total ${seconds(job.timings.totalMs)}`);
  }
  const show = document.createElement("button");
  show.type = "button";
  show.className = "secondary";
  show.textContent = "Show";
  show.setAttribute("aria-label", `Show video ${job.id}`);
  show.addEventListener("click", () => follow(job));
  li.append(show);
  return li;
}

// ---- start ----

async function start() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    showError(null);
    signedIn().catch(showError);
  });
  $("video-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const button = $("submit");
    button.disabled = true;
    showError(null);
    submitVideo(event.target).catch(showError).finally(() => { button.disabled = false; });
  });
  $("clear-image").addEventListener("click", clearImage);
  $("cancel").addEventListener("click", () => cancelCurrent().catch(showError));
  $("refresh").addEventListener("click", () => refreshGallery().catch(showError));
  $("sign-out").addEventListener("click", () => signOut());
  $("oidc-sign-in").addEventListener("click", () => startOidc().catch(showError));

  const config = await (await fetch("/console/config.json")).json();
  $("oidc").hidden = !config.oidc;
  $("models").replaceChildren(...config.models.map((name) => new Option(name, name)));
  if (config.models.length) $("model").value = config.models[0];

  const params = new URLSearchParams(location.search);
  if (params.has("code") || params.has("error")) await finishOidc(params);
  if (sessionStorage.getItem(TOKEN_KEY)) await signedIn();
  document.body.dataset.ready = "true";
}

start().catch((error) => {
  showError(error);
  document.body.dataset.ready = "true";
});
