// Blind review of candidate masks (templates/annotation/review.html).
//
// The candidates of one item are shown as translucent overlays on the same chest X-ray, either
// side by side (one panel per label) or one at a time. Zoom and pan are shared by all panels.
// The page knows candidates only by their label, in the order the server gives: nothing here
// may hint at where a candidate came from.
//
// While the reader looks at one item, the next one is fetched and decoded, so after a pick it
// is swapped in at once and the address bar follows with history.replaceState.
//
// Both items are leased to this MD (nobody else is handed them past the round's quota). The
// leases expire unless renewed, so the page renews them every minute while it is visible; one
// that was lost meanwhile (the page slept past its expiry) moves the page on to another item.
//
// Plain ES2020, no dependencies: the app runs offline.

import { clamp, csrfToken, errorText, networkMessage, readJsonScript, setWindowLevelFilter } from "./common.js";

const MAX_ZOOM = 64;
const CLICK_SLOP_PX = 4; // a press that moves less than this is a click, not a pan

const root = document.getElementById("review-app");
const config = {
  decisionUrl: root.dataset.decisionUrl,
  nextApiUrl: root.dataset.nextApiUrl,
  queueUrl: root.dataset.queueUrl || "/",
  leaseUrl: root.dataset.leaseUrl || "", // the first item's; empty when adjudicating
  skipUrl: root.dataset.skipUrl || "", // the first item's; empty when adjudicating
  itemApiUrl: root.dataset.itemApiUrl || "", // the first item's JSON
  firstItemId: (readJsonScript("review-item", null) || {}).id || "",
  filterQuery: root.dataset.filterQuery || "", // the MD's queue filter, e.g. "?class=covid19"
};

/** An item page's URL with the MD's queue filter kept, so that the next item honours it. */
const withFilter = (url) => (url && config.filterQuery ? url + (url.includes("?") ? "&" : "?") + config.filterQuery.slice(1) : url);
const LEASE_RENEW_MS = 60 * 1000; // well inside the server's lease (5 minutes by default)
const FLASH_MS = 4000; // how long "Saved — next item" and the like stay up
const FLASH_KEY = "maskloop:review-flash"; // a message that outlives a page load (after undo)

/** One of the first item's URLs, for another item. */
const urlFor = (template, id) => (template ? template.replace(config.firstItemId, id) : "");

const $ = (selector) => root.querySelector(selector);
const stage = $(".review-stage");
const panelsBox = $(".review-panels");
const loadingBox = $(".review-loading");
const banner = $(".review-banner");
const shortcuts = $(".review-shortcuts");
const controls = {
  modeButtons: Array.from(root.querySelectorAll("[data-mode]")),
  picks: $(".pick-group"),
  none: $("#pick-none"),
  skip: $("#skip"),
  undo: $("#undo"),
  flash: $("#review-flash"),
  opacity: $("#overlay-opacity"),
  status: $("#status"),
  selection: $("#selection-readout"),
  zoom: $("#zoom-readout"),
  help: $("#shortcuts-toggle"),
};

// ---------------------------------------------------------------------------------------------
// Helpers

// The first item's smallest copies come with the page as data: URIs, keyed by their URLs.
const carried = new Map(Object.entries(readJsonScript("review-first-images", {})));

function loadImage(url) {
  const src = carried.get(url) || url;
  carried.delete(url); // used once: the memory goes with the item
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.decoding = "async";
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("An image of this item could not be loaded."));
    img.src = src;
  });
}

// ---------------------------------------------------------------------------------------------
// Loading an item: its data (with the page, or from the API for the next ones), then the CXR and
// every candidate's overlay, decoded.

async function getJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
  if (response.status === 204) return null;
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

/** The next item other than `afterId` (the one on screen), or null when the queue is empty. */
function fetchNextItem(afterId) {
  if (!config.nextApiUrl) return Promise.resolve(null); // no queue to follow, e.g. adjudication
  const url = new URL(config.nextApiUrl, window.location.href);
  if (afterId) url.searchParams.set("after", afterId);
  return getJson(url.toString());
}

// Resolution levels. The server keeps cached downscaled copies of the CXR and of every overlay
// (`?max=512|1024|1536|2048`, overlays from nearest-neighbour masks). The page's first item
// starts from the smallest copies, which come with the page; a prefetched
// item from the smallest copy that gives every device pixel a source pixel in the current
// layout. A sharper one is fetched only when the view needs it (zooming in, one at a time),
// and the full-resolution files only when zoomed in past the largest copy.

const DISPLAY_SIZES = [512, 1024, 1536, 2048];

function withMax(url, max) {
  if (!max) return url;
  const u = new URL(url, window.location.href);
  u.searchParams.set("max", String(max));
  return u.pathname + u.search;
}

/** Levels from coarse to full: {max (0 = the original file), k (level px per image px)}. */
function levelsFor(width, height) {
  const side = Math.max(width, height);
  const levels = DISPLAY_SIZES.filter((m) => m < side).map((max) => ({ max, k: max / side }));
  levels.push({ max: 0, k: 1 });
  return levels;
}

/** The coarsest level with at least `need` level px per image px (the full one otherwise). */
function levelFor(levels, need) {
  const i = levels.findIndex((level) => level.k >= need * 0.999);
  return i < 0 ? levels.length - 1 : i;
}

/** Loads one level of an item: the CXR and every candidate's overlay at once. The server
 * colours the overlays (translucent fill, opaque outline), so they are drawn as they come. */
async function loadLevel(item, level) {
  const [image, ...overlays] = await Promise.all([
    loadImage(withMax(item.image_url, level.max)),
    ...item.candidates.map((c) => loadImage(withMax(c.overlay_url, level.max))),
  ]);
  // Decode them in parallel, off the main thread where the browser can.
  await Promise.all([image, ...overlays].map((img) => (img.decode ? img.decode().catch(() => {}) : null)));
  for (const overlay of overlays) {
    if (overlay.naturalWidth !== image.naturalWidth || overlay.naturalHeight !== image.naturalHeight) {
      throw new Error(`A candidate mask is ${overlay.naturalWidth}×${overlay.naturalHeight}, ` +
        `not ${image.naturalWidth}×${image.naturalHeight} like its image.`);
    }
  }
  performance.mark("maskloop:files");
  return { image, overlays, max: level.max };
}

/** Screen px per image px at zoom 1 in the layout on screen (before the item is shown). */
function fitScaleFor(width, height, count) {
  const box = panelsBox.getBoundingClientRect();
  if (!box.width || !box.height) return 1;
  if (state.mode === "single" || count <= 1) return (Math.min(box.width / width, box.height / height) * 0.98) || 1;
  const gap = 6;
  let best = 0;
  for (let cols = 1; cols <= count; cols++) {
    const rows = Math.ceil(count / cols);
    const cw = (box.width - gap * (cols - 1)) / cols;
    const ch = (box.height - gap * (rows - 1)) / rows;
    best = Math.max(best, Math.min(cw / width, ch / height) * 0.98);
  }
  return best || 1;
}

/** Load and decode what an item needs for its first frame; resolves to a prepared item.
 * `coarsest` takes the smallest copies (those that come with the page), to show the page's
 * first item at once; a sharper level follows if the view needs it. */
async function prepareItem(item, { coarsest = false } = {}) {
  const width = item.width;
  const height = item.height;
  const levels = levelsFor(width, height);
  const dpr = window.devicePixelRatio || 1;
  const first = coarsest ? 0 : levelFor(levels, fitScaleFor(width, height, item.candidates.length) * dpr);
  const loaded = await loadLevel(item, levels[first]);
  if (loaded.image.naturalWidth * loaded.image.naturalHeight > 1 << 21) warm(loaded.image, loaded.overlays);
  const prepared = { item, width, height, levels, loaded: [], pending: null, released: false };
  prepared.loaded[first] = loaded;
  return prepared;
}

/** The loaded level to draw at `need` level px per image px; asks for a sharper one if the
 * best loaded level is too coarse (it is drawn, stretched, until the sharper one arrives). */
function levelToDraw(prepared, need) {
  const want = levelFor(prepared.levels, need);
  let best = -1;
  for (let i = 0; i < prepared.levels.length; i++) {
    if (!prepared.loaded[i]) continue;
    if (best < want || (i >= want && i < best)) best = i; // coarsest sufficient, else sharpest
  }
  if (best < want) requestLevel(prepared, want);
  return prepared.loaded[best];
}

function requestLevel(prepared, index) {
  if (prepared.pending !== null || prepared.loaded[index]) return;
  prepared.pending = index;
  loadLevel(prepared.item, prepared.levels[index])
    .then((loaded) => {
      if (prepared.released) return;
      prepared.loaded[index] = loaded;
      if (state.current === prepared) markAll(true, true);
    })
    .catch(() => {
      // keep drawing the coarser level; the next zoom asks again
    })
    .finally(() => {
      prepared.pending = null;
      if (state.current === prepared) scheduleRender();
    });
}

/** Draw everything once, small, so decoding and mipmaps are done before the item is shown
 * (only worth it for large copies; small ones are drawn in no time). */
function warm(image, overlays) {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 64;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(image, 0, 0, 64, 64);
  ctx.imageSmoothingQuality = "low";
  for (const overlay of overlays) ctx.drawImage(overlay, 0, 0, 64, 64);
  ctx.getImageData(0, 0, 1, 1);
}

/** Forget an item's images once it is off screen (and any level still on its way). */
function releasePrepared(prepared) {
  if (!prepared) return;
  prepared.released = true;
  prepared.loaded = [];
}

// ---------------------------------------------------------------------------------------------
// State

const state = {
  current: null, // prepared item on screen
  mode: "grid", // "grid" (side by side) or "single" (one at a time)
  selected: null, // index of the selected / viewed candidate
  overlaysVisible: true,
  armedNone: false,
  armedPick: null, // the label Enter (or its button) asked to confirm
  lastPick: null, // {id, choice, undoUrl, until} while the last pick may be undone
  busy: false,
  shownAt: 0,
  hiddenMs: 0,
  hiddenSince: null,
};
const view = { cx: 0, cy: 0, z: 1 }; // image point at the panel centre, zoom relative to fit
const wl = { level: 0.5, width: 1 }; // display window, in 0..1 of the 8-bit range
let prefetch = null; // {forId, promise -> prepared | null}
let readyPromise = null;
let resolveReady = null;
let panels = []; // grid panels, one per candidate
let singlePanel = null;

function newReadyPromise() {
  readyPromise = new Promise((resolve) => {
    resolveReady = resolve;
  });
  readyPromise.catch(() => {});
}

// ---------------------------------------------------------------------------------------------
// Panels and rendering

function makePanel(label, index) {
  const el = document.createElement("div");
  el.className = "review-panel";
  el.dataset.label = label;
  const image = document.createElement("canvas");
  image.className = "layer-image";
  const overlay = document.createElement("canvas");
  overlay.className = "layer-overlay";
  const tag = document.createElement("span");
  tag.className = "panel-label";
  tag.textContent = label;
  el.append(image, overlay, tag);
  const panel = {
    el,
    index,
    tag,
    image,
    overlay,
    imageCtx: image.getContext("2d", { alpha: false }),
    overlayCtx: overlay.getContext("2d"),
    w: 0,
    h: 0,
    dirtyImage: true,
    dirtyOverlay: true,
  };
  el.addEventListener("pointerdown", (e) => onPointerDown(e, panel));
  return panel;
}

function sizePanel(panel, width, height) {
  if (panel.w === width && panel.h === height) return;
  panel.w = width;
  panel.h = height;
  const dpr = window.devicePixelRatio || 1;
  const cw = Math.max(1, Math.round(width * dpr));
  const ch = Math.max(1, Math.round(height * dpr));
  for (const canvas of [panel.image, panel.overlay]) {
    if (canvas.width !== cw) canvas.width = cw;
    if (canvas.height !== ch) canvas.height = ch;
  }
  panel.dirtyImage = panel.dirtyOverlay = true;
}

const resizeObserver = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const panel = entry.target.__panel;
    if (panel) sizePanel(panel, entry.contentRect.width, entry.contentRect.height);
  }
  scheduleRender();
});

function buildPanels(labels) {
  for (const panel of panels) resizeObserver.unobserve(panel.el);
  panelsBox.textContent = "";
  panels = labels.map((label, k) => makePanel(label, k));
  singlePanel = makePanel(labels[0] || "", -1);
  singlePanel.el.classList.add("single");
  for (const panel of [...panels, singlePanel]) {
    panel.el.__panel = panel;
    panelsBox.append(panel.el);
    resizeObserver.observe(panel.el);
  }
  layoutPanels();
}

/** Size the visible panels now, so the item's first frame draws them (the resize observer
 * would report their sizes only after that frame). */
function measurePanels() {
  for (const panel of visiblePanels()) {
    if (!panel) continue;
    const el = panel.el;
    const rect = el.getBoundingClientRect(); // the border box; the canvases fill the content box
    sizePanel(panel, rect.width - (el.offsetWidth - el.clientWidth),
      rect.height - (el.offsetHeight - el.clientHeight));
  }
}

/** Columns for the grid: the count that gives each panel the largest fitted image. */
function layoutPanels() {
  const n = panels.length;
  const single = state.mode === "single" || n <= 1;
  stage.dataset.mode = single ? "single" : "grid";
  for (const panel of panels) panel.el.hidden = single;
  if (singlePanel) singlePanel.el.hidden = !single;
  if (single || !state.current) {
    panelsBox.style.gridTemplateColumns = "minmax(0, 1fr)";
    panelsBox.style.gridTemplateRows = "minmax(0, 1fr)";
    return;
  }
  const { width: W, height: H } = state.current;
  const box = panelsBox.getBoundingClientRect();
  const gap = 6;
  let best = { cols: n, score: 0 };
  for (let cols = 1; cols <= n; cols++) {
    const rows = Math.ceil(n / cols);
    const cw = (box.width - gap * (cols - 1)) / cols;
    const ch = (box.height - gap * (rows - 1)) / rows;
    const score = Math.min(cw / W, ch / H);
    if (score > best.score) best = { cols, score };
  }
  const rows = Math.ceil(n / best.cols);
  panelsBox.style.gridTemplateColumns = `repeat(${best.cols}, minmax(0, 1fr))`;
  panelsBox.style.gridTemplateRows = `repeat(${rows}, minmax(0, 1fr))`;
}

function visiblePanels() {
  return state.mode === "single" || panels.length <= 1 ? [singlePanel] : panels;
}

function panelTransform(panel) {
  const { width: W, height: H } = state.current;
  const fit = Math.min(panel.w / W, panel.h / H) * 0.98 || 1;
  const s = fit * view.z;
  return { s, tx: panel.w / 2 - view.cx * s, ty: panel.h / 2 - view.cy * s };
}

let frameRequested = false;
let afterFrame = [];

function scheduleRender() {
  if (!frameRequested) {
    frameRequested = true;
    requestAnimationFrame(render);
  }
}

function markAll(image, overlay) {
  for (const panel of [...panels, singlePanel]) {
    if (!panel) continue;
    if (image) panel.dirtyImage = true;
    if (overlay) panel.dirtyOverlay = true;
  }
  scheduleRender();
}

function render() {
  frameRequested = false;
  if (!state.current) return;
  const dpr = window.devicePixelRatio || 1;
  const { width: W, height: H } = state.current;
  for (const panel of visiblePanels()) {
    if (!panel || panel.w === 0) continue;
    const { s, tx, ty } = panelTransform(panel);
    // The coarsest loaded copy with a source pixel for every device pixel, stretched to the
    // image's own size: the transform stays in original image pixels.
    const level = levelToDraw(state.current, s * dpr);
    const m = level.max ? (s * W) / level.image.naturalWidth : s; // screen px per level px
    if (panel.dirtyImage) {
      panel.dirtyImage = false;
      const ctx = panel.imageCtx;
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, panel.image.width, panel.image.height);
      ctx.setTransform(dpr * s, 0, 0, dpr * s, dpr * tx, dpr * ty);
      ctx.imageSmoothingEnabled = m < 4;
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(level.image, 0, 0, W, H);
    }
    if (panel.dirtyOverlay) {
      panel.dirtyOverlay = false;
      const ctx = panel.overlayCtx;
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.clearRect(0, 0, panel.overlay.width, panel.overlay.height);
      const index = panel.index >= 0 ? panel.index : state.selected;
      const overlay = index !== null ? level.overlays[index] : null;
      if (overlay && state.overlaysVisible) {
        ctx.setTransform(dpr * s, 0, 0, dpr * s, dpr * tx, dpr * ty);
        // Bilinear without mipmaps: mipmapping a decoded bitmap costs ~7x more per frame in
        // software rendering, and five panels pan together.
        ctx.imageSmoothingEnabled = m < 1;
        ctx.imageSmoothingQuality = "low";
        ctx.drawImage(overlay, 0, 0, W, H);
      }
    }
  }
  const callbacks = afterFrame;
  afterFrame = [];
  for (const cb of callbacks) cb();
  controls.zoom.textContent = `${Math.round(view.z * 100)}% of fit`;
}

function resetView() {
  if (!state.current) return;
  view.cx = state.current.width / 2;
  view.cy = state.current.height / 2;
  view.z = 1;
  markAll(true, true);
  controls.zoom.textContent = "100% of fit";
}

function zoomAt(panel, px, py, factor) {
  const { s, tx, ty } = panelTransform(panel);
  const ix = (px - tx) / s;
  const iy = (py - ty) / s;
  view.z = clamp(view.z * factor, 0.5, MAX_ZOOM);
  // Keep the image point under the cursor where it is; the other panels follow.
  const ns = panelTransform(panel).s;
  view.cx = ix - (px - panel.w / 2) / ns;
  view.cy = iy - (py - panel.h / 2) / ns;
  markAll(true, true);
}

function applyWindowLevel() {
  const neutral = setWindowLevelFilter(document.getElementById("review-wl"), wl.level, wl.width);
  stage.style.setProperty("--wl-filter", neutral ? "none" : "url(#review-wl)");
}

// ---------------------------------------------------------------------------------------------
// Pointer: click selects a panel, drag pans (any button but the right one), right drag or
// W + drag sets window/level, wheel zooms around the cursor.

let drag = null;
const keys = { w: false, space: false };

function panelPoint(e, panel) {
  const rect = panel.el.getBoundingClientRect();
  return { x: e.clientX - rect.left, y: e.clientY - rect.top };
}

// Touch: one finger pans (a tap selects), two fingers pinch to zoom and pan, all panels together.
const touches = new Map(); // pointerId -> {x, y} in the pinch panel's coordinates
let pinch = null; // {panel, dist, mx, my} at the last move

function pinchNow(panel) {
  const [a, b] = touches.values();
  return { panel, dist: Math.hypot(a.x - b.x, a.y - b.y) || 1, mx: (a.x + b.x) / 2, my: (a.y + b.y) / 2 };
}

function onPointerDown(e, panel) {
  if (e.pointerType === "touch" && state.current) {
    const pinchPanel = pinch ? pinch.panel : drag ? drag.panel : panel;
    touches.set(e.pointerId, panelPoint(e, pinchPanel));
    if (touches.size >= 2) {
      e.preventDefault();
      if (touches.size === 2) {
        drag = null; // the first finger's pan (or tap) becomes the pinch
        stage.dataset.drag = "";
        pinch = pinchNow(pinchPanel);
      }
      return;
    }
  }
  if (!state.current || drag) return;
  const wlDrag = e.button === 2 || (e.button === 0 && keys.w);
  if (e.button !== 0 && e.button !== 1 && e.button !== 2) return;
  e.preventDefault();
  try {
    panel.el.setPointerCapture(e.pointerId);
  } catch (err) {
    // synthetic or already-released pointers cannot be captured; window listeners still follow
  }
  drag = {
    panel,
    pointerId: e.pointerId,
    kind: wlDrag ? "wl" : "pan",
    startX: e.clientX,
    startY: e.clientY,
    lastX: e.clientX,
    lastY: e.clientY,
    moved: false,
    click: e.button === 0 && !keys.space && !wlDrag,
    level: wl.level,
    width: wl.width,
  };
}

function onPointerMove(e) {
  if (touches.has(e.pointerId)) {
    const panel = pinch ? pinch.panel : drag ? drag.panel : null;
    if (panel) touches.set(e.pointerId, panelPoint(e, panel));
  }
  if (pinch && touches.has(e.pointerId)) {
    const now = pinchNow(pinch.panel);
    const { s } = panelTransform(pinch.panel);
    view.cx -= (now.mx - pinch.mx) / s;
    view.cy -= (now.my - pinch.my) / s;
    zoomAt(pinch.panel, now.mx, now.my, now.dist / pinch.dist);
    pinch = now;
    return;
  }
  if (!drag || e.pointerId !== drag.pointerId) return;
  const dx = e.clientX - drag.lastX;
  const dy = e.clientY - drag.lastY;
  if (Math.hypot(e.clientX - drag.startX, e.clientY - drag.startY) > CLICK_SLOP_PX) drag.moved = true;
  if (!drag.moved) return;
  stage.dataset.drag = drag.kind;
  if (drag.kind === "pan") {
    const { s } = panelTransform(drag.panel);
    view.cx -= dx / s;
    view.cy -= dy / s;
    markAll(true, true);
  } else {
    const totalX = e.clientX - drag.startX;
    const totalY = e.clientY - drag.startY;
    wl.width = clamp(drag.width * Math.pow(2, -totalX / 200), 1 / 255, 4);
    wl.level = clamp(drag.level + totalY / 400, -0.5, 1.5);
    applyWindowLevel();
  }
  drag.lastX = e.clientX;
  drag.lastY = e.clientY;
}

function onPointerUp(e) {
  if (touches.delete(e.pointerId) && pinch) {
    if (touches.size < 2) pinch = null; // the finger left behind neither pans nor selects
    return;
  }
  if (!drag || e.pointerId !== drag.pointerId) return;
  const done = drag;
  drag = null;
  stage.dataset.drag = "";
  if (done.panel.el.hasPointerCapture(e.pointerId)) done.panel.el.releasePointerCapture(e.pointerId);
  if (done.click && !done.moved && done.panel.index >= 0) select(done.panel.index);
}

// ---------------------------------------------------------------------------------------------
// Selection, modes and the pick buttons

function labels() {
  return state.current ? state.current.item.candidates.map((c) => c.label) : [];
}

function select(index) {
  if (!state.current || index === null || index < 0 || index >= panels.length) return;
  disarmNone();
  if (state.armedPick !== null && labels()[index] !== state.armedPick) disarmPick();
  state.selected = index;
  if (singlePanel) {
    singlePanel.tag.textContent = labels()[index];
    singlePanel.dirtyOverlay = true;
  }
  updateSelection();
  scheduleRender();
}

function updateSelection() {
  const names = labels();
  panels.forEach((panel, k) => panel.el.classList.toggle("selected", k === state.selected));
  for (const button of controls.picks.querySelectorAll("button")) {
    button.classList.toggle("current", Number(button.dataset.index) === state.selected);
  }
  if (state.selected === null) {
    controls.selection.textContent =
      state.mode === "grid" ? "Click a panel or press 1–" + names.length + " to select" : "";
  } else {
    const label = names[state.selected];
    controls.selection.textContent = `${state.mode === "single" ? "Viewing" : "Selected"} ${label} · Enter picks it`;
    if (state.current && !state.busy && state.armedPick === null) {
      setStatus(`${state.mode === "single" ? "Viewing" : "Selected"} candidate ${label}. Press Enter to pick it.`);
    }
  }
}

function setMode(mode) {
  state.mode = mode;
  if (mode === "single" && state.selected === null) state.selected = 0;
  for (const button of controls.modeButtons) {
    button.setAttribute("aria-pressed", String(button.dataset.mode === mode));
  }
  layoutPanels();
  if (singlePanel && state.selected !== null) singlePanel.tag.textContent = labels()[state.selected];
  markAll(true, true);
  updateSelection();
}

function buildPickButtons(names) {
  controls.picks.textContent = "";
  names.forEach((label, k) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.index = String(k);
    button.textContent = `Pick ${label}`;
    button.addEventListener("click", () => requestPick(label));
    controls.picks.append(button);
  });
}

function setBusy(busy) {
  state.busy = busy;
  for (const button of controls.picks.querySelectorAll("button")) button.disabled = busy;
  controls.none.disabled = busy;
  if (controls.skip) controls.skip.disabled = busy;
}

function armNone() {
  state.armedNone = true;
  controls.none.classList.add("armed");
  controls.none.textContent = "Confirm: none — redraw";
  showBanner(
    "None of these candidates? Press N again (or click “Confirm”) to send this image back for " +
      "redrawing. Esc cancels.",
    "notice",
  );
  setStatus("None of these selected: press N again to send the image back for a redraw, Esc to cancel.", "notice");
}

function disarmNone() {
  if (!state.armedNone) return;
  state.armedNone = false;
  controls.none.classList.remove("armed");
  controls.none.textContent = "None of these";
  hideBanner();
}

/** Asks to confirm a pick: the candidate is selected and a second Enter (or click) records it. */
function armPick(label) {
  disarmNone();
  const index = labels().indexOf(label);
  if (index < 0) return;
  if (state.selected !== index) select(index);
  state.armedPick = label;
  for (const button of controls.picks.querySelectorAll("button")) {
    const armed = Number(button.dataset.index) === index;
    button.classList.toggle("armed", armed);
    button.textContent = armed ? `Confirm ${label}` : `Pick ${labels()[Number(button.dataset.index)]}`;
  }
  setStatus(`Candidate ${label} selected. Press Enter again to confirm, Esc to cancel.`, "notice");
  showBanner(`Pick candidate ${label}? Press Enter again (or click “Confirm ${label}”) to record it. Esc cancels.`, "notice");
}

function disarmPick() {
  if (state.armedPick === null) return;
  state.armedPick = null;
  for (const button of controls.picks.querySelectorAll("button")) {
    button.classList.remove("armed");
    button.textContent = `Pick ${labels()[Number(button.dataset.index)]}`;
  }
  hideBanner();
}

function requestPick(label) {
  if (state.busy || !state.current) return;
  if (state.armedPick === label) pick(label);
  else armPick(label);
}

let flashTimer = null;
/** A short message on the page itself: "Saved — next item", "Undone", "Skipped". */
function flash(text, kind = "ok") {
  if (!controls.flash) return;
  controls.flash.textContent = text;
  controls.flash.className = `review-flash ${kind}`;
  controls.flash.hidden = false;
  window.clearTimeout(flashTimer);
  flashTimer = window.setTimeout(() => {
    controls.flash.hidden = true;
  }, FLASH_MS);
}

let undoTimer = null;
/** Offers to undo the last pick while the server allows it (`undoUrl` null: final at once). */
function offerUndo(id, choice, undoUrl, seconds) {
  window.clearTimeout(undoTimer);
  state.lastPick = undoUrl ? { id, choice, undoUrl } : null;
  if (!controls.undo) return;
  controls.undo.hidden = !undoUrl;
  if (!undoUrl) return;
  controls.undo.textContent = `Undo pick ${choice === "none" ? "none" : choice}`;
  undoTimer = window.setTimeout(() => {
    state.lastPick = null;
    controls.undo.hidden = true;
  }, Math.max(0, seconds * 1000 - 2000)); // a little inside the server's window
}

async function undoLastPick() {
  const last = state.lastPick;
  if (!last || state.busy) return;
  setBusy(true);
  setStatus("Undoing your last pick…");
  try {
    const response = await fetch(last.undoUrl, {
      method: "POST",
      headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error(await errorText(response));
    const body = await response.json();
    sessionStorage.setItem(FLASH_KEY, `Undone — pick ${last.choice === "none" ? "none" : last.choice} was withdrawn; pick again.`);
    window.location.assign(withFilter(body.page_url)); // the item is this MD's again
  } catch (err) {
    offerUndo(null, "", null, 0);
    setBusy(false);
    const message = `Not undone: ${networkMessage(err)}.`;
    setStatus(message, "error");
    flash(message, "error");
  }
}

async function skipItem() {
  if (!state.current || state.busy || !config.skipUrl) return;
  const id = state.current.item.id;
  setBusy(true);
  disarmPick();
  disarmNone();
  try {
    const response = await fetch(urlFor(config.skipUrl, id), {
      method: "POST",
      headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error(await errorText(response));
  } catch (err) {
    setBusy(false);
    setStatus(`Not skipped: ${networkMessage(err)}.`, "error");
    return;
  }
  await moveOn(id, "Skipped — it comes back after your other images.", { quiet: true });
  flash("Skipped — it comes back after your other images.");
}

function showContext(item) {
  const ctx = item.context;
  if (!ctx) return;
  const fields = {
    image_name: ctx.image_name,
    image_class: ctx.image_class,
    patient: ctx.patient || "—",
    round: String(ctx.round),
    "position-of-total": `${ctx.position} of ${ctx.total}`,
    progress: `${ctx.decided_today} today · ${ctx.decided_in_round} in this round`,
  };
  for (const [name, text] of Object.entries(fields)) {
    const el = root.querySelector(`[data-context="${name}"]`);
    if (el) el.textContent = text;
  }
}

/** The context of a prefetched item was read before the last pick: read it again. */
async function refreshContext(id) {
  if (!config.itemApiUrl) return;
  const item = await getJson(urlFor(config.itemApiUrl, id)).catch(() => null);
  if (item && state.current && state.current.item.id === id) showContext(item);
}

function showBanner(text, kind) {
  banner.textContent = text;
  banner.className = `review-banner ${kind}`;
  banner.hidden = false;
}

function hideBanner() {
  banner.hidden = true;
}

function setStatus(text, kind = "") {
  controls.status.textContent = text;
  controls.status.className = `statusline ${kind}`.trim();
}

// ---------------------------------------------------------------------------------------------
// Showing an item, picking, moving on

function visibleSeconds() {
  let hidden = state.hiddenMs;
  if (state.hiddenSince !== null) hidden += performance.now() - state.hiddenSince;
  return Math.max(0, (performance.now() - state.shownAt - hidden) / 1000);
}

function show(prepared) {
  const previous = state.current;
  state.current = prepared;
  state.selected = state.mode === "single" ? 0 : null;
  disarmNone();
  disarmPick();
  hideBanner();
  showContext(prepared.item);
  const names = prepared.item.candidates.map((c) => c.label);
  buildPanels(names);
  buildPickButtons(names);
  setMode(state.mode);
  loadingBox.hidden = true;
  measurePanels();
  resetView();
  setBusy(false);
  if (previous && previous !== prepared) releasePrepared(previous);
  // The clock starts on the frame that first shows the item.
  afterFrame.push(() => {
    state.shownAt = performance.now();
    state.hiddenMs = 0;
    state.hiddenSince = document.hidden ? state.shownAt : null;
    setStatus(`${names.length} candidates. Compare them, then pick the best mask.`);
    performance.mark("maskloop:shown");
    if (resolveReady) resolveReady(prepared.item.id);
  });
  scheduleRender();
  startPrefetch(prepared.item.id);
}

function startPrefetch(forId) {
  const promise = fetchNextItem(forId).then((item) => (item && item.id !== forId ? prepareItem(item) : null));
  prefetch = { forId, promise };
  promise.catch(() => {}); // a failed prefetch is retried after the pick
}

async function nextItem(decidedId) {
  if (prefetch && prefetch.forId === decidedId) {
    try {
      const prepared = await prefetch.promise;
      if (prepared && prepared.item.id !== decidedId) return prepared;
    } catch (err) {
      // fall through: ask again now that the decision is stored
    }
  }
  const item = await fetchNextItem(decidedId);
  if (!item || item.id === decidedId) return null;
  return prepareItem(item);
}

// ---------------------------------------------------------------------------------------------
// Leases: renewed while the page is open and visible

/** Renews (or takes again) this MD's lease on an item: false when the item went to others. */
async function renewLease(id) {
  if (!config.leaseUrl || !id) return true;
  const response = await fetch(config.leaseUrl.replace(config.firstItemId, id), {
    method: "POST",
    headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
    credentials: "same-origin",
  });
  if (response.status === 409) return false;
  return true; // a network or server error: keep the item and try again at the next renewal
}

async function renewLeases() {
  if (document.hidden || !state.current || state.busy || !config.leaseUrl) return;
  const currentId = state.current.item.id;
  const held = await renewLease(currentId).catch(() => true);
  if (!held) {
    if (state.current && state.current.item.id === currentId && !state.busy) {
      await moveOn(currentId, "This image was handed to another MD while the page was away.");
    }
    return;
  }
  const pending = prefetch;
  if (!pending || pending.forId !== currentId) return;
  const prepared = await pending.promise.catch(() => null);
  if (!prepared || prefetch !== pending) return;
  const kept = await renewLease(prepared.item.id).catch(() => true);
  if (!kept && prefetch === pending) {
    releasePrepared(prepared);
    startPrefetch(currentId); // the server hands a fresh one
  }
}

/** Leaves an item that cannot be decided here any more (`why`) for the next one. */
async function moveOn(leftId, why, { quiet = false } = {}) {
  setBusy(true);
  newReadyPromise();
  loadingBox.hidden = false;
  try {
    const prepared = await nextItem(leftId);
    if (!prepared) {
      setStatus(`${why} Nothing else to review: back to the queue…`, "notice");
      window.location.assign(config.queueUrl);
      return;
    }
    if (prepared.item.page_url) history.replaceState(null, "", withFilter(prepared.item.page_url));
    show(prepared);
    if (quiet) setStatus(`${why} ${prepared.item.candidates.length} candidates.`);
    else showBanner(`${why} Here is the next one.`, "notice"); // stays until the next pick
    refreshContext(prepared.item.id);
  } catch (err) {
    setStatus(`${why} The next image did not load (${networkMessage(err)}); opening it…`, "error");
    window.location.assign(config.queueUrl);
  }
}

async function pick(choice) {
  if (!state.current || state.busy) return;
  const seconds = visibleSeconds();
  const item = state.current.item;
  setBusy(true);
  state.armedPick = null;
  hideBanner();
  setStatus(choice === "none" ? "Sending: none — redraw…" : `Sending pick ${choice}…`);
  let body;
  try {
    const response = await fetch(item.decision_url || config.decisionUrl, {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/json",
        "X-CSRFToken": csrfToken(),
      },
      credentials: "same-origin",
      body: JSON.stringify({ choice, seconds: Math.round(seconds * 1000) / 1000 }),
    });
    if (response.status === 409) {
      // Not recorded and never will be here (the item was decided, closed or handed on).
      await moveOn(item.id, `Not recorded: ${await errorText(response)}.`);
      return;
    }
    if (!response.ok) throw new Error(await errorText(response));
    body = await response.json().catch(() => ({}));
  } catch (err) {
    const message = `Not recorded: ${networkMessage(err)}`;
    setStatus(message, "error");
    showBanner(message, "error");
    disarmNone();
    setBusy(false);
    return;
  }
  offerUndo(item.id, choice, body.undo_url || null, body.undo_seconds || 0);
  newReadyPromise();
  loadingBox.hidden = false;
  try {
    const prepared = await nextItem(item.id);
    if (!prepared) {
      if (state.lastPick) {
        // Nothing else to review, but the pick may still be undone: stay a moment.
        loadingBox.hidden = true;
        setBusy(false);
        setStatus("Saved. Nothing else to review — undo your last pick, or go back to the queue.", "notice");
        flash("Saved — nothing else to review.");
        return;
      }
      setStatus("All done. Back to the queue…", "notice");
      window.location.assign(config.queueUrl);
      return;
    }
    if (prepared.item.page_url) history.replaceState(null, "", withFilter(prepared.item.page_url));
    show(prepared);
    setStatus(
      `Recorded ${choice === "none" ? "none — redraw" : choice} for the previous image. ` +
        `${prepared.item.candidates.length} candidates.`,
    );
    flash("Saved — next item.");
    refreshContext(prepared.item.id);
  } catch (err) {
    // The decision is stored; the next item did not load here, so let the server page show it.
    setStatus(`Recorded. The next image did not load (${networkMessage(err)}); opening it…`, "error");
    window.location.assign(body.next_url ? withFilter(body.next_url) : config.queueUrl);
  }
}

function pickSelected() {
  if (state.armedNone) return pick("none");
  if (state.selected === null) {
    setStatus(`Select a candidate first: click a panel or press 1–${panels.length}.`, "notice");
    return;
  }
  requestPick(labels()[state.selected]); // the first Enter asks, the second records
}

function pressNone() {
  if (state.busy || !state.current) return;
  disarmPick();
  if (state.armedNone) pick("none");
  else armNone();
}

// ---------------------------------------------------------------------------------------------
// Keyboard

function onKeyDown(e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const target = e.target;
  if (target instanceof HTMLElement && (target.tagName === "SELECT" || target.tagName === "TEXTAREA")) return;
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (target instanceof HTMLInputElement && key.startsWith("Arrow")) return;
  // A held Enter or N must never decide the next item as well.
  if (e.repeat && !key.startsWith("Arrow") && !["+", "=", "-"].includes(key)) {
    e.preventDefault();
    return;
  }
  let handled = true;
  if (/^[1-9]$/.test(key)) {
    select(Number(key) - 1);
  } else if (key === "Tab") {
    setMode(state.mode === "grid" ? "single" : "grid");
  } else if (key === "Enter") {
    // Always the pick, even when a toolbar button still has focus from a click.
    pickSelected();
  } else if (key === "n") {
    pressNone();
  } else if (key === "s" && controls.skip) {
    skipItem();
  } else if (key === "u" && controls.undo) {
    undoLastPick();
  } else if (key === "Escape") {
    if (state.armedPick !== null) {
      disarmPick();
      setStatus("Pick cancelled.");
    } else if (state.armedNone) disarmNone();
    else if (!shortcuts.hidden) shortcuts.hidden = true;
    else if (state.mode === "grid" && state.selected !== null) {
      state.selected = null;
      updateSelection();
    }
  } else if (key === "ArrowRight" || key === "ArrowDown") {
    if (panels.length) select(state.selected === null ? 0 : (state.selected + 1) % panels.length);
  } else if (key === "ArrowLeft" || key === "ArrowUp") {
    if (panels.length) {
      select(state.selected === null ? panels.length - 1 : (state.selected + panels.length - 1) % panels.length);
    }
  } else if (key === "o") {
    state.overlaysVisible = !state.overlaysVisible;
    setStatus(state.overlaysVisible ? "Overlays shown." : "Overlays hidden (O shows them again).");
    markAll(false, true);
  } else if (key === "r") {
    wl.level = 0.5;
    wl.width = 1;
    applyWindowLevel();
  } else if (key === "f" || key === "0") {
    resetView();
  } else if (key === "+" || key === "=") {
    const panel = visiblePanels()[0];
    if (panel) zoomAt(panel, panel.w / 2, panel.h / 2, 1.25);
  } else if (key === "-") {
    const panel = visiblePanels()[0];
    if (panel) zoomAt(panel, panel.w / 2, panel.h / 2, 1 / 1.25);
  } else if (key === "w") {
    keys.w = true;
  } else if (key === " ") {
    keys.space = true;
  } else if (key === "?") {
    shortcuts.hidden = !shortcuts.hidden;
  } else {
    handled = false;
  }
  if (handled) e.preventDefault();
}

function onKeyUp(e) {
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (key === "w") keys.w = false;
  if (key === " ") keys.space = false;
}

// ---------------------------------------------------------------------------------------------
// Start

function bind() {
  for (const button of controls.modeButtons) {
    button.addEventListener("click", () => setMode(button.dataset.mode));
  }
  controls.none.addEventListener("click", pressNone);
  if (controls.skip) controls.skip.addEventListener("click", skipItem);
  if (controls.undo) controls.undo.addEventListener("click", undoLastPick);
  controls.help.addEventListener("click", () => {
    shortcuts.hidden = !shortcuts.hidden;
  });
  controls.opacity.addEventListener("input", () => {
    stage.style.setProperty("--overlay-opacity", String(Number(controls.opacity.value) / 100));
  });
  stage.style.setProperty("--overlay-opacity", String(Number(controls.opacity.value) / 100));
  window.addEventListener("pointermove", onPointerMove);
  window.addEventListener("pointerup", onPointerUp);
  window.addEventListener("pointercancel", onPointerUp);
  panelsBox.addEventListener("contextmenu", (e) => e.preventDefault());
  panelsBox.addEventListener(
    "wheel",
    (e) => {
      const el = e.target instanceof Element ? e.target.closest(".review-panel") : null;
      if (!el || !el.__panel || !state.current) return;
      e.preventDefault();
      const p = panelPoint(e, el.__panel);
      const unit = e.deltaMode === 1 ? 0.05 : e.deltaMode === 2 ? 1 : 0.0015;
      zoomAt(el.__panel, p.x, p.y, Math.exp(-e.deltaY * unit));
    },
    { passive: false },
  );
  new ResizeObserver(() => {
    layoutPanels();
    markAll(true, true);
  }).observe(panelsBox);
  document.addEventListener("visibilitychange", () => {
    const now = performance.now();
    if (document.hidden) {
      state.hiddenSince = now;
    } else if (state.hiddenSince !== null) {
      state.hiddenMs += now - state.hiddenSince;
      state.hiddenSince = null;
    }
    if (!document.hidden) renewLeases(); // the leases may have run out while it was hidden
  });
  window.setInterval(renewLeases, LEASE_RENEW_MS);
  window.addEventListener("keydown", onKeyDown);
  window.addEventListener("keyup", onKeyUp);
  window.addEventListener("blur", () => {
    keys.w = keys.space = false;
  });
}

async function start() {
  bind();
  applyWindowLevel();
  setBusy(true);
  setStatus("Loading…");
  try {
    const item = readJsonScript("review-item", null);
    if (!item) throw new Error("the page came without its item; reload it");
    performance.mark("maskloop:item");
    show(await prepareItem(item, { coarsest: true }));
    const message = sessionStorage.getItem(FLASH_KEY);
    if (message) {
      sessionStorage.removeItem(FLASH_KEY);
      flash(message);
      setStatus(message);
    }
  } catch (err) {
    loadingBox.hidden = true;
    const message = `This item could not be shown: ${networkMessage(err)}`;
    setStatus(message, "error");
    showBanner(message, "error");
  }
}

newReadyPromise();
start();

window.maskloopReview = {
  currentItemId: () => (state.current ? state.current.item.id : null),
  get ready() {
    return readyPromise;
  },
  /** Resolves when the next item is fetched and decoded (true) or there is none (false). */
  prefetched: () =>
    prefetch ? prefetch.promise.then((p) => Boolean(p), () => false) : Promise.resolve(false),
  mode: () => state.mode,
  /** The shared view: image point at the panels' centre and zoom relative to fit. */
  view: () => ({ ...view }),
  selected: () => (state.selected === null ? null : labels()[state.selected]),
  /** The label waiting for a confirming Enter, or null. */
  armed: () => state.armedPick,
};
