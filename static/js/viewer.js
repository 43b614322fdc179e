// Infection-map viewer and demo.
//
// #viewer[data-mode="image"]  fetches GET data-api (a stored image's analysis) on load;
// #viewer[data-mode="upload"] posts the file chosen in #demo-form to data-api (POST /api/infer/)
// and shows the answer without a reload. Both answers have one shape: detection, maximum
// probability, severity, and the CXR, infection map and Grad-CAM as PNG data URLs.
const root = document.getElementById("viewer");
const $ = (id) => document.getElementById(id);
const statusEl = $("viewer-status");
const results = $("viewer-results");
const opacity = $("opacity");
const opacityValue = $("opacity-value");
const toggle = $("toggle-map");
const mapImage = $("map-image");
const hasLungs = root.dataset.hasLungs === "1";

// Truncated, not rounded: a maximum of 0.4996 must not read "0.500" beside "no pixel reaches 0.5".
const prob3 = (x) => (Math.floor(x * 1000) / 1000).toFixed(3);
const pct = (x, digits = 1) => (x === null || x === undefined ? "—" : `${(x * 100).toFixed(digits)} %`);

function setStatus(message, kind = "notice") {
  statusEl.hidden = !message;
  statusEl.className = kind;
  statusEl.textContent = message || "";
}

function el(tag, textContent, className) {
  const node = document.createElement(tag);
  if (textContent !== undefined) node.textContent = textContent;
  if (className) node.className = className;
  return node;
}

// ---------------------------------------------------------------- map opacity and toggle

function applyOpacity() {
  const shown = toggle.getAttribute("aria-pressed") === "true";
  mapImage.style.opacity = shown ? String(Number(opacity.value) / 100) : "0";
  opacityValue.textContent = `${opacity.value} %`;
  toggle.firstChild.textContent = shown ? "Map shown " : "Map hidden ";
  opacity.disabled = !shown;
}

opacity.addEventListener("input", applyOpacity);
toggle.addEventListener("click", () => {
  toggle.setAttribute("aria-pressed", String(toggle.getAttribute("aria-pressed") !== "true"));
  applyOpacity();
});
document.addEventListener("keydown", (event) => {
  const typing = event.target.closest("input:not([type=range]), textarea, select");
  if (event.key.toLowerCase() === "m" && !typing && !event.ctrlKey && !event.metaKey && !event.altKey) {
    if (!results.hidden) toggle.click();
  }
});

// ---------------------------------------------------------------- results

function severityRows(s, validated) {
  const rows = [["Infected area", `${pct(s.infected_fraction)} of the image`]];
  if (s.lung_fraction !== null) {
    // A severity grade reads as a finding: only a validated network's output gets one.
    rows.push(["Infected lung area", validated ? `${pct(s.lung_fraction)} — grade ${s.grade} (${s.label})` : pct(s.lung_fraction)]);
    rows.push(["Patient's right lung", pct(s.right_lung_fraction)]);
    rows.push(["Patient's left lung", pct(s.left_lung_fraction)]);
    if (s.lung_split === "midline") rows.push(["Note", "the lungs touch in the lung mask; they were split at the image's middle"]);
  } else {
    const why = root.dataset.mode === "upload" ? "an upload has none" : hasLungs ? "this image's could not be used" : "this image has none";
    rows.push(["Per-lung severity", `needs a lung mask; ${why}`]);
  }
  return rows;
}

function modelName(m) {
  const c = m.card || {};
  const parts = [`model v${m.id}`, `round ${m.round}`];
  if (c.preset) parts.push(`${c.preset} preset`);
  if (m.input_size) parts.push(`${m.input_size} px`);
  if (c.encoder_frozen !== undefined && c.encoder_frozen !== null) parts.push(c.encoder_frozen ? "frozen encoder" : "fine-tuned encoder");
  if (c.train_masks !== undefined) parts.push(`${c.train_masks} training masks`);
  parts.push(c.held_out_images ? `${c.held_out_images} held-out images` : "not measured on held-out images");
  return `${m.arch} · ${m.encoder} (${parts.join(", ")})`;
}

// A validated ensemble reports the study's detection; an unvalidated one only its output, in
// neutral words: a red "detected" from a toy network would be read as a finding.
function showDetection(r) {
  const detection = $("detection");
  const validated = r.validation ? r.validation.validated : true;
  detection.dataset.validated = validated ? "1" : "0";
  if (!validated) {
    detection.replaceChildren(
      el("span", "Not validated", "badge warn"),
      el("span", `The model's output is shown for testing; it is not a diagnosis and reports no finding. Highest pixel probability ${prob3(r.max_probability)}.`),
    );
    $("findings-title").textContent = "Network output (not a finding)";
    return;
  }
  detection.replaceChildren(
    el("span", r.detected ? "COVID-19 detected" : "No COVID-19 detected", `badge ${r.detected ? "danger" : "ok"}`),
    el("span", r.detected
      ? `some pixel ≥ ${r.threshold} (max ${prob3(r.max_probability)})`
      : `no pixel reaches ${r.threshold} (max ${prob3(r.max_probability)})`, "muted"),
  );
  $("findings-title").textContent = "Findings";
}

let fullMap = "";
let lungMap = null;
const lungsOnly = $("lungs-only");
lungsOnly.addEventListener("change", () => {
  mapImage.src = lungsOnly.checked && lungMap ? lungMap : fullMap;
});

function show(r) {
  showDetection(r);
  const rows = [["Maximum probability", prob3(r.max_probability)], ...severityRows(r.severity, !r.validation || r.validation.validated), ["Image", `${r.width}×${r.height} px`]];
  $("findings").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  $("models-title").textContent = r.models.length === 1 ? "Network" : `Ensemble of ${r.models.length} networks (mean probability)`;
  $("model-list").replaceChildren(...r.models.map((m) => el("li", modelName(m))));

  for (const frame of document.querySelectorAll(".mapview-frame")) frame.style.setProperty("--aspect", `${r.width} / ${r.height}`);
  $("cxr-image").src = r.cxr;
  fullMap = r.map;
  lungMap = r.map_lungs || null;
  $("lungs-only-label").hidden = !lungMap;
  mapImage.src = lungsOnly.checked && lungMap ? lungMap : fullMap;
  const cam = r.gradcam !== null;
  $("gradcam-frame").hidden = !cam;
  $("gradcam-scale").hidden = !cam;
  $("gradcam-unavailable").hidden = cam;
  if (cam) {
    $("gradcam-image").src = r.gradcam;
    $("gradcam-caption").textContent = `${r.classifier.encoder} classifier (model v${r.classifier.id}), COVID-19 class`;
  } else {
    const encoder = r.models.length ? r.models[0].encoder : "this encoder";
    $("gradcam-caption").textContent = "";
    $("gradcam-unavailable").textContent = `Grad-CAM is not available: the final round trained no ${encoder} classifier.`;
  }
  results.hidden = false;
  applyOpacity();
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body.detail) return body.detail;
    const first = Object.entries(body)[0];
    if (first) return `${first[0]}: ${[].concat(first[1]).join(" ")}`;
  } catch {
    // not JSON: fall through to the status
  }
  return `the server answered ${response.status} ${response.statusText}`.trim();
}

// ---------------------------------------------------------------- a stored image

async function loadImage() {
  const started = performance.now();
  let response;
  try {
    response = await fetch(root.dataset.api, { headers: { Accept: "application/json" } });
  } catch (err) {
    return setStatus(`Could not reach the server: ${err.message}`, "error");
  }
  if (!response.ok) return setStatus(`No infection map: ${await errorMessage(response)}`, "error");
  show(await response.json());
  setStatus(`Computed in ${((performance.now() - started) / 1000).toFixed(1)} s.`, "muted");
}

// ---------------------------------------------------------------- an upload (the demo)

function upload(file) {
  const form = $("demo-form");
  const button = $("demo-submit");
  const data = new FormData();
  data.append("file", file);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", root.dataset.api);
  xhr.setRequestHeader("X-CSRFToken", form.querySelector("[name=csrfmiddlewaretoken]").value);
  xhr.setRequestHeader("Accept", "application/json");
  xhr.responseType = "text";
  const started = performance.now();
  button.disabled = true;
  setStatus(`Uploading ${file.name}…`);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) setStatus(`Uploading ${file.name}: ${Math.round((e.loaded / e.total) * 100)} %`);
  };
  xhr.upload.onload = () => setStatus(`Running the networks on ${file.name}…`);
  xhr.onerror = () => {
    button.disabled = false;
    setStatus("Could not reach the server; check the connection and try again.", "error");
  };
  xhr.onload = async () => {
    button.disabled = false;
    const response = new Response(xhr.responseText, { status: xhr.status, statusText: xhr.statusText });
    if (xhr.status !== 200) {
      results.hidden = true;
      return setStatus(`${file.name} could not be analysed: ${await errorMessage(response)}`, "error");
    }
    show(await response.json());
    statusEl.scrollIntoView({ block: "start", behavior: "smooth" });
    setStatus(`${file.name}: analysed in ${((performance.now() - started) / 1000).toFixed(1)} s. Nothing was stored.`, "success");
  };
  xhr.send(data);
}

function setupUpload() {
  const form = $("demo-form");
  const input = $("demo-file");
  const zone = $("drop-zone");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!input.files.length) return setStatus("Choose a PNG, JPEG or DICOM file first.", "error");
    upload(input.files[0]);
  });
  input.addEventListener("change", () => {
    if (input.files.length) upload(input.files[0]);
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) upload(file);
  });
}

if (root.dataset.mode === "upload") setupUpload();
else loadImage();
