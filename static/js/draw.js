// Mask drawing tool for one chest X-ray (templates/annotation/draw.html).
//
// The mask lives in a Uint8Array (0/1) at the image's original resolution; a full-resolution
// offscreen canvas mirrors it in colour for display. The view transform (zoom, pan) and the
// window/level only change what is shown, never the mask. Undo steps store the XOR of a change
// as runs of pixel indices, so a brush stroke costs a few hundred bytes and even replacing a
// whole 4096² mask costs only its edges.
//
// Plain ES2020, no dependencies: the app runs offline.

import { clamp, csrfToken, errorText, readJsonScript, setWindowLevelFilter } from "./common.js";

const MAX_HISTORY = 100;
const MIN_BRUSH = 1;
const MAX_BRUSH = 400;
const MAX_ZOOM = 32;
const CLOSE_DISTANCE_PX = 10; // screen px: a click this near the first vertex closes the polygon
const FREEHAND_STEP_PX = 3; // screen px between recorded lasso points while dragging

const root = document.getElementById("draw-app");
const W = Number(root.dataset.width);
const H = Number(root.dataset.height);
const config = {
  displayUrl: root.dataset.displayUrl,
  saveUrl: root.dataset.saveUrl,
  nextUrl: root.dataset.nextUrl || "",
  saveNextUrl: root.dataset.saveNextUrl || "",
  purpose: root.dataset.purpose || "draw",
};
const startMasks = readJsonScript("start-masks", []);

const $ = (selector) => root.querySelector(selector);
const stage = $(".stage");
const imageLayer = $(".layer-image");
const maskLayer = $(".layer-mask");
const uiLayer = $(".layer-ui");
const imageCtx = imageLayer.getContext("2d", { alpha: false });
const maskCtx = maskLayer.getContext("2d");
const uiCtx = uiLayer.getContext("2d");

// ---------------------------------------------------------------------------------------------
// Small helpers

function parseHexColour(text, fallback) {
  const m = /^#?([0-9a-f]{6})$/i.exec((text || "").trim());
  if (!m) return fallback;
  const n = parseInt(m[1], 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

/** Halfway to white: the outline colour, brighter than the fill so edges read on bone. */
function lighten(c) {
  return Math.round(c + (255 - c) * 0.5);
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.decoding = "async";
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`Could not load the image at ${url}.`));
    img.src = url;
  });
}

// ---------------------------------------------------------------------------------------------
// The mask and its colour mirror

const mask = new Uint8Array(W * H);
let maskOn = 0; // count of mask pixels, kept exact by every write path

const [mr, mg, mb] = parseHexColour(
  getComputedStyle(root).getPropertyValue("--mask-color"),
  [255, 92, 56],
);
// Translucent fill with an opaque one-pixel outline (little-endian RGBA), so the boundary stays
// legible on bone; the opacity slider scales both.
const FILL_RGBA = ((150 << 24) | (mb << 16) | (mg << 8) | mr) >>> 0;
const EDGE_RGBA = ((255 << 24) | (lighten(mb) << 16) | (lighten(mg) << 8) | lighten(mr)) >>> 0;

const maskCanvas = document.createElement("canvas");
maskCanvas.width = W;
maskCanvas.height = H;
const maskCanvasCtx = maskCanvas.getContext("2d");

/**
 * Copy the rectangle [x0, x1) × [y0, y1) of the mask into the colour mirror. The rectangle grows
 * by one pixel because a change can turn its neighbours' outline on or off.
 */
function uploadRect(rect) {
  if (!rect) return;
  const x0 = clamp(Math.floor(rect.x0) - 1, 0, W);
  const y0 = clamp(Math.floor(rect.y0) - 1, 0, H);
  const x1 = clamp(Math.ceil(rect.x1) + 1, 0, W);
  const y1 = clamp(Math.ceil(rect.y1) + 1, 0, H);
  const w = x1 - x0;
  const h = y1 - y0;
  if (w <= 0 || h <= 0) return;
  const data = new ImageData(w, h);
  const px = new Uint32Array(data.data.buffer);
  for (let y = y0; y < y1; y++) {
    let i = y * W + x0;
    let dst = (y - y0) * w;
    for (let x = x0; x < x1; x++, i++, dst++) {
      if (!mask[i]) continue;
      const edge =
        x === 0 || y === 0 || x === W - 1 || y === H - 1 ||
        !mask[i - 1] || !mask[i + 1] || !mask[i - W] || !mask[i + W];
      px[dst] = edge ? EDGE_RGBA : FILL_RGBA;
    }
  }
  maskCanvasCtx.putImageData(data, x0, y0);
}

function unionRect(a, b) {
  if (!a) return b;
  if (!b) return a;
  return {
    x0: Math.min(a.x0, b.x0),
    y0: Math.min(a.y0, b.y0),
    x1: Math.max(a.x1, b.x1),
    y1: Math.max(a.y1, b.y1),
  };
}

// ---------------------------------------------------------------------------------------------
// Undo history: every operation records the indices it changed; a finished operation keeps them
// as runs [start, length, start, length, ...]. Undo and redo both XOR the runs.

class ChangeLog {
  constructor() {
    this.buf = new Int32Array(4096);
    this.n = 0;
  }
  push(i) {
    if (this.n === this.buf.length) {
      const bigger = new Int32Array(this.buf.length * 2);
      bigger.set(this.buf);
      this.buf = bigger;
    }
    this.buf[this.n++] = i;
  }
  /** Sorted, merged runs plus the bounding box, or null when nothing changed. */
  finish() {
    if (this.n === 0) return null;
    const idx = this.buf.subarray(0, this.n);
    idx.sort();
    const runs = [];
    let x0 = W;
    let y0 = H;
    let x1 = 0;
    let y1 = 0;
    let start = idx[0];
    let prev = idx[0];
    const close = (s, e) => {
      runs.push(s, e - s + 1);
      const ys = Math.floor(s / W);
      const ye = Math.floor(e / W);
      y0 = Math.min(y0, ys);
      y1 = Math.max(y1, ye + 1);
      if (ys === ye) {
        x0 = Math.min(x0, s - ys * W);
        x1 = Math.max(x1, e - ye * W + 1);
      } else {
        x0 = 0;
        x1 = W;
      }
    };
    for (let k = 1; k < idx.length; k++) {
      const i = idx[k];
      if (i === prev + 1) {
        prev = i;
      } else if (i !== prev) {
        close(start, prev);
        start = prev = i;
      }
    }
    close(start, prev);
    return { runs: Int32Array.from(runs), rect: { x0, y0, x1, y1 } };
  }
}

const history = { undo: [], redo: [], seq: 0, savedId: 0 };
let currentOp = null; // {label, log}

function beginOp(label) {
  currentOp = { label, log: new ChangeLog() };
}

/** Set pixel i to v (0/1), recording the change. The hot path of every tool. */
function setPixel(i, v) {
  if (mask[i] !== v) {
    mask[i] = v;
    maskOn += v ? 1 : -1;
    currentOp.log.push(i);
  }
}

function endOp() {
  if (!currentOp) return;
  const done = currentOp.log.finish();
  const label = currentOp.label;
  currentOp = null;
  if (!done) return;
  history.undo.push({ id: ++history.seq, label, runs: done.runs, rect: done.rect });
  if (history.undo.length > MAX_HISTORY) history.undo.shift();
  history.redo.length = 0;
  afterMaskChange();
}

function applyRuns(runs) {
  for (let k = 0; k < runs.length; k += 2) {
    const end = runs[k] + runs[k + 1];
    for (let i = runs[k]; i < end; i++) {
      mask[i] ^= 1;
      maskOn += mask[i] ? 1 : -1;
    }
  }
}

function undo() {
  if (drag || currentOp) return;
  const step = history.undo.pop();
  if (!step) return setStatus("Nothing to undo.");
  applyRuns(step.runs);
  history.redo.push(step);
  uploadRect(step.rect);
  afterMaskChange();
  setStatus(`Undid: ${step.label}.`);
}

function redo() {
  if (drag || currentOp) return;
  const step = history.redo.pop();
  if (!step) return setStatus("Nothing to redo.");
  applyRuns(step.runs);
  history.undo.push(step);
  uploadRect(step.rect);
  afterMaskChange();
  setStatus(`Redid: ${step.label}.`);
}

function topId() {
  const n = history.undo.length;
  return n ? history.undo[n - 1].id : 0;
}

function isDirty() {
  return topId() !== history.savedId;
}

// ---------------------------------------------------------------------------------------------
// Rasterisers. Pixel (x, y) is inside a shape when its centre (x + .5, y + .5) is; nothing is
// anti-aliased, so the mask stays strictly binary.

/** Paint a capsule (a segment with round caps) of radius r. Returns the touched rectangle. */
function paintSegment(ax, ay, bx, by, r, v) {
  const x0 = Math.max(0, Math.floor(Math.min(ax, bx) - r));
  const y0 = Math.max(0, Math.floor(Math.min(ay, by) - r));
  const x1 = Math.min(W, Math.ceil(Math.max(ax, bx) + r) + 1);
  const y1 = Math.min(H, Math.ceil(Math.max(ay, by) + r) + 1);
  if (x0 >= x1 || y0 >= y1) return null;
  const dx = bx - ax;
  const dy = by - ay;
  const len2 = dx * dx + dy * dy;
  const r2 = r * r;
  for (let y = y0; y < y1; y++) {
    const py = y + 0.5 - ay;
    let row = y * W;
    for (let x = x0; x < x1; x++) {
      const px = x + 0.5 - ax;
      let t = len2 > 0 ? (px * dx + py * dy) / len2 : 0;
      t = t < 0 ? 0 : t > 1 ? 1 : t;
      const ex = px - t * dx;
      const ey = py - t * dy;
      if (ex * ex + ey * ey <= r2) setPixel(row + x, v);
    }
  }
  return { x0, y0, x1, y1 };
}

/** Fill a polygon (even-odd rule) with v. Returns the touched rectangle. */
function fillPolygon(points, v) {
  let minX = Infinity;
  let minY = Infinity;
  let maxX = -Infinity;
  let maxY = -Infinity;
  for (const p of points) {
    minX = Math.min(minX, p.x);
    minY = Math.min(minY, p.y);
    maxX = Math.max(maxX, p.x);
    maxY = Math.max(maxY, p.y);
  }
  const y0 = Math.max(0, Math.floor(minY));
  const y1 = Math.min(H, Math.ceil(maxY) + 1);
  const n = points.length;
  const xs = [];
  for (let y = y0; y < y1; y++) {
    const cy = y + 0.5;
    xs.length = 0;
    for (let k = 0, j = n - 1; k < n; j = k++) {
      const a = points[j];
      const b = points[k];
      if (a.y <= cy !== b.y <= cy) xs.push(a.x + ((cy - a.y) * (b.x - a.x)) / (b.y - a.y));
    }
    xs.sort((p, q) => p - q);
    const row = y * W;
    for (let k = 0; k + 1 < xs.length; k += 2) {
      const from = Math.max(0, Math.ceil(xs[k] - 0.5));
      const to = Math.min(W, Math.ceil(xs[k + 1] - 0.5));
      for (let x = from; x < to; x++) setPixel(row + x, v);
    }
  }
  return {
    x0: Math.max(0, Math.floor(minX)),
    y0,
    x1: Math.min(W, Math.ceil(maxX) + 1),
    y1,
  };
}

/** Fill every background region that does not touch the border (4-connected background). */
function fillHoles() {
  const outside = new Uint8Array(W * H);
  const stack = [];
  const seed = (i) => {
    if (!mask[i] && !outside[i]) stack.push(i);
  };
  for (let x = 0; x < W; x++) {
    seed(x);
    seed((H - 1) * W + x);
  }
  for (let y = 0; y < H; y++) {
    seed(y * W);
    seed(y * W + W - 1);
  }
  // Scanline flood fill: fill a whole row span, then seed the runs above and below it.
  while (stack.length) {
    const i = stack.pop();
    if (mask[i] || outside[i]) continue;
    const y = Math.floor(i / W);
    const row = y * W;
    let l = i - row;
    let r = l;
    while (l > 0 && !mask[row + l - 1] && !outside[row + l - 1]) l--;
    while (r < W - 1 && !mask[row + r + 1] && !outside[row + r + 1]) r++;
    outside.fill(1, row + l, row + r + 1);
    for (const ny of [y - 1, y + 1]) {
      if (ny < 0 || ny >= H) continue;
      const nrow = ny * W;
      let inRun = false;
      for (let x = l; x <= r; x++) {
        const j = nrow + x;
        const free = !mask[j] && !outside[j];
        if (free && !inRun) stack.push(j);
        inRun = free;
      }
    }
  }
  let x0 = W;
  let y0 = H;
  let x1 = 0;
  let y1 = 0;
  for (let y = 0; y < H; y++) {
    const row = y * W;
    for (let x = 0; x < W; x++) {
      const i = row + x;
      if (!mask[i] && !outside[i]) {
        setPixel(i, 1);
        if (x < x0) x0 = x;
        if (x >= x1) x1 = x + 1;
        if (y < y0) y0 = y;
        y1 = y + 1;
      }
    }
  }
  return x1 > x0 ? { x0, y0, x1, y1 } : null;
}

// ---------------------------------------------------------------------------------------------
// PNG encoding: 8-bit grayscale, values 0/255, exactly W × H.

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes, crc = 0xffffffff) {
  for (let i = 0; i < bytes.length; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 255] ^ (crc >>> 8);
  return crc;
}

function adler32(bytes) {
  let a = 1;
  let b = 0;
  for (let i = 0; i < bytes.length; ) {
    const end = Math.min(bytes.length, i + 5552);
    for (; i < end; i++) {
      a += bytes[i];
      b += a;
    }
    a %= 65521;
    b %= 65521;
  }
  return ((b << 16) | a) >>> 0;
}

/** zlib stream of `raw`: CompressionStream where the browser has it, stored blocks otherwise. */
async function zlib(raw) {
  if (typeof CompressionStream === "function") {
    const stream = new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }
  const blocks = Math.max(1, Math.ceil(raw.length / 65535));
  const out = new Uint8Array(2 + raw.length + blocks * 5 + 4);
  out[0] = 0x78;
  out[1] = 0x01;
  let o = 2;
  for (let b = 0; b < blocks; b++) {
    const chunk = raw.subarray(b * 65535, Math.min(raw.length, (b + 1) * 65535));
    out[o++] = b === blocks - 1 ? 1 : 0;
    out[o++] = chunk.length & 255;
    out[o++] = chunk.length >>> 8;
    out[o++] = ~chunk.length & 255;
    out[o++] = (~chunk.length >>> 8) & 255;
    out.set(chunk, o);
    o += chunk.length;
  }
  const sum = adler32(raw);
  out[o++] = sum >>> 24;
  out[o++] = (sum >>> 16) & 255;
  out[o++] = (sum >>> 8) & 255;
  out[o++] = sum & 255;
  return out;
}

function pngChunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let k = 0; k < 4; k++) out[4 + k] = type.charCodeAt(k);
  out.set(data, 8);
  view.setUint32(8 + data.length, (crc32(out.subarray(4, 8 + data.length)) ^ 0xffffffff) >>> 0);
  return out;
}

async function encodeMaskPng() {
  const raw = new Uint8Array((W + 1) * H); // filter byte 0 (None) at the start of every row
  for (let y = 0; y < H; y++) {
    const src = y * W;
    const dst = y * (W + 1) + 1;
    for (let x = 0; x < W; x++) raw[dst + x] = mask[src + x] ? 255 : 0;
  }
  const ihdr = new Uint8Array(13);
  const view = new DataView(ihdr.buffer);
  view.setUint32(0, W);
  view.setUint32(4, H);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 0; // colour type: grayscale
  const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
  return new Blob(
    [
      signature,
      pngChunk("IHDR", ihdr),
      pngChunk("IDAT", await zlib(raw)),
      pngChunk("IEND", new Uint8Array(0)),
    ],
    { type: "image/png" },
  );
}

// ---------------------------------------------------------------------------------------------
// View: scale s (CSS px per image px) and offset (tx, ty) in CSS px; window/level via an SVG
// filter on the image layer only.

const view = { s: 1, tx: 0, ty: 0, cw: 0, ch: 0, dpr: 1, fitted: false };
let image = null; // the first display copy, once loaded (the page takes input from then on)

// Display copies. The server keeps cached downscaled copies of the CXR (`?max=512|1024|1536|
// 2048`); the page first loads the smallest one that gives every device pixel a source pixel
// when fitted, and a sharper one (up to the original file) only when zoomed in past it. They
// are drawn stretched to W × H, so the view and the mask stay in original image pixels.
const DISPLAY_SIZES = [512, 1024, 1536, 2048];
const display = {
  levels: [...DISPLAY_SIZES.filter((m) => m < Math.max(W, H)), 0].map((max) => ({
    max,
    k: max ? max / Math.max(W, H) : 1, // level px per image px
  })),
  loaded: [], // images by level index
  pending: null,
};

function displayUrl(max) {
  if (!max) return config.displayUrl;
  const u = new URL(config.displayUrl, window.location.href);
  u.searchParams.set("max", String(max));
  return u.pathname + u.search;
}

/** The coarsest level with at least `need` level px per image px (the original otherwise). */
function displayLevelFor(need) {
  const i = display.levels.findIndex((level) => level.k >= need * 0.999);
  return i < 0 ? display.levels.length - 1 : i;
}

/** The loaded copy to draw at the current zoom; asks for a sharper one when it is too coarse. */
function displayImage() {
  const want = displayLevelFor(view.s * view.dpr);
  let best = -1;
  for (let i = 0; i < display.levels.length; i++) {
    if (!display.loaded[i]) continue;
    if (best < want || (i >= want && i < best)) best = i; // coarsest sufficient, else sharpest
  }
  if (best < want && display.pending === null && best >= 0) {
    display.pending = want;
    loadImage(displayUrl(display.levels[want].max))
      .then(async (img) => {
        if (img.decode) await img.decode().catch(() => {});
        display.loaded[want] = img;
        requestRender("image");
      })
      .catch(() => {
        // keep the coarser copy; the next zoom asks again
      })
      .finally(() => {
        display.pending = null;
      });
  }
  return best >= 0 ? display.loaded[best] : null;
}
let maskVisible = true;
const pointer = { inside: false, sx: 0, sy: 0 };
const dirtyLayers = { image: true, mask: true, ui: true };
let maskDamage = null; // image rectangle to recomposite on the next frame, when not all of it
let frameRequested = false;

function toImage(sx, sy) {
  return { x: (sx - view.tx) / view.s, y: (sy - view.ty) / view.s };
}

function fitScale() {
  return Math.min(view.cw / W, view.ch / H) * 0.96 || 1;
}

function fitView() {
  view.s = fitScale();
  view.tx = (view.cw - W * view.s) / 2;
  view.ty = (view.ch - H * view.s) / 2;
  requestRender("image", "mask", "ui");
  updateInfo();
}

function zoomAt(sx, sy, factor) {
  const s = clamp(view.s * factor, fitScale() / 4, MAX_ZOOM);
  const k = s / view.s;
  view.tx = sx - (sx - view.tx) * k;
  view.ty = sy - (sy - view.ty) * k;
  view.s = s;
  requestRender("image", "mask", "ui");
  updateInfo();
}

function resizeLayers() {
  const rect = stage.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const oldCx = view.cw / 2;
  const oldCy = view.ch / 2;
  view.cw = rect.width;
  view.ch = rect.height;
  view.dpr = dpr;
  for (const layer of [imageLayer, maskLayer, uiLayer]) {
    layer.width = Math.max(1, Math.round(rect.width * dpr));
    layer.height = Math.max(1, Math.round(rect.height * dpr));
  }
  if (!view.fitted && rect.width > 0 && rect.height > 0) {
    view.fitted = true;
    fitView();
  } else {
    view.tx += view.cw / 2 - oldCx;
    view.ty += view.ch / 2 - oldCy;
  }
  requestRender("image", "mask", "ui");
}

function requestRender(...layers) {
  for (const layer of layers) dirtyLayers[layer] = true;
  if (!frameRequested) {
    frameRequested = true;
    requestAnimationFrame(render);
  }
}

function setViewTransform(ctx) {
  const { s, tx, ty, dpr } = view;
  ctx.setTransform(dpr * s, 0, 0, dpr * s, dpr * tx, dpr * ty);
}

function clearLayer(ctx) {
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, ctx.canvas.width, ctx.canvas.height);
}

function render() {
  frameRequested = false;
  if (dirtyLayers.image) {
    dirtyLayers.image = false;
    imageCtx.setTransform(1, 0, 0, 1, 0, 0);
    imageCtx.fillStyle = "#000";
    imageCtx.fillRect(0, 0, imageLayer.width, imageLayer.height);
    const copy = image ? displayImage() : null;
    if (copy) {
      setViewTransform(imageCtx);
      imageCtx.imageSmoothingEnabled = (view.s * W) / copy.naturalWidth < 4;
      imageCtx.imageSmoothingQuality = "high";
      imageCtx.drawImage(copy, 0, 0, W, H);
    }
  }
  if (dirtyLayers.mask || maskDamage) {
    const t0 = performance.now();
    if (dirtyLayers.mask) {
      clearLayer(maskCtx);
      if (maskVisible) drawMask(maskCtx);
    } else if (maskVisible) {
      redrawMaskDamage(maskDamage);
    }
    dirtyLayers.mask = false;
    maskDamage = null;
    perf.composite.add(performance.now() - t0);
    if (perf.pendingInput !== null) {
      perf.latency.add(performance.now() - perf.pendingInput);
      perf.pendingInput = null;
    }
  }
  if (dirtyLayers.ui) {
    dirtyLayers.ui = false;
    drawUi();
  }
}

function drawMask(ctx) {
  setViewTransform(ctx);
  // Bilinear without mipmaps when zoomed out: mipmaps of a 4096² source would be rebuilt on
  // every stroke frame. Nearest when zoomed in, so mask pixels show as crisp squares.
  ctx.imageSmoothingEnabled = view.s < 1;
  ctx.imageSmoothingQuality = "low";
  ctx.drawImage(maskCanvas, 0, 0);
}

/** Recomposite only the screen area of an image rectangle (plus the outline and filter margin). */
function redrawMaskDamage(rect) {
  const { s, tx, ty, dpr } = view;
  const x0 = Math.max(0, Math.floor(((rect.x0 - 2) * s + tx) * dpr) - 1);
  const y0 = Math.max(0, Math.floor(((rect.y0 - 2) * s + ty) * dpr) - 1);
  const x1 = Math.min(maskLayer.width, Math.ceil(((rect.x1 + 2) * s + tx) * dpr) + 1);
  const y1 = Math.min(maskLayer.height, Math.ceil(((rect.y1 + 2) * s + ty) * dpr) + 1);
  if (x1 <= x0 || y1 <= y0) return;
  maskCtx.save();
  maskCtx.setTransform(1, 0, 0, 1, 0, 0);
  maskCtx.beginPath();
  maskCtx.rect(x0, y0, x1 - x0, y1 - y0);
  maskCtx.clip();
  maskCtx.clearRect(x0, y0, x1 - x0, y1 - y0);
  drawMask(maskCtx);
  maskCtx.restore();
}

function drawUi() {
  clearLayer(uiCtx);
  const { dpr } = view;
  uiCtx.setTransform(dpr, 0, 0, dpr, 0, 0);
  uiCtx.lineWidth = 1;
  if (polygon) {
    const subtract = keys.shift;
    const pts = polygon.points.map((p) => ({ x: p.x * view.s + view.tx, y: p.y * view.s + view.ty }));
    uiCtx.beginPath();
    pts.forEach((p, k) => (k ? uiCtx.lineTo(p.x, p.y) : uiCtx.moveTo(p.x, p.y)));
    if (pointer.inside) uiCtx.lineTo(pointer.sx, pointer.sy);
    uiCtx.fillStyle = subtract ? "rgba(120, 170, 255, 0.18)" : "rgba(255, 220, 120, 0.18)";
    uiCtx.fill("evenodd");
    uiCtx.strokeStyle = "rgba(0, 0, 0, 0.8)";
    uiCtx.lineWidth = 3;
    uiCtx.stroke();
    uiCtx.strokeStyle = subtract ? "#7fb0ff" : "#ffd166";
    uiCtx.lineWidth = 1.5;
    uiCtx.stroke();
    if (pts.length) {
      const first = pts[0];
      const near =
        pointer.inside &&
        pts.length >= 3 &&
        Math.hypot(pointer.sx - first.x, pointer.sy - first.y) <= CLOSE_DISTANCE_PX;
      uiCtx.beginPath();
      uiCtx.arc(first.x, first.y, near ? 7 : 4, 0, Math.PI * 2);
      uiCtx.fillStyle = near ? "#ffffff" : uiCtx.strokeStyle;
      uiCtx.fill();
    }
  }
  if (pointer.inside && (tool === "brush" || tool === "eraser") && !drag?.kind?.match(/pan|wl/)) {
    const r = Math.max(0.5, (brushSize / 2) * view.s);
    uiCtx.beginPath();
    uiCtx.arc(pointer.sx, pointer.sy, r, 0, Math.PI * 2);
    uiCtx.setLineDash(tool === "eraser" ? [4, 3] : []);
    uiCtx.strokeStyle = "rgba(0, 0, 0, 0.85)";
    uiCtx.lineWidth = 3;
    uiCtx.stroke();
    uiCtx.strokeStyle = tool === "eraser" ? "#7fb0ff" : "#ffffff";
    uiCtx.lineWidth = 1.25;
    uiCtx.stroke();
    uiCtx.setLineDash([]);
  }
}

// ---------------------------------------------------------------------------------------------
// Window / level: brightness moves the level, contrast narrows the window. Display only.

const wl = { brightness: 0, contrast: 0 };
const wlFilter = document.getElementById("draw-wl");

function applyWindowLevel() {
  const level = 0.5 - wl.brightness / 200; // in [0, 1]
  const width = Math.pow(2, -wl.contrast / 40); // 1 = the full 0..255 range
  const neutral = setWindowLevelFilter(wlFilter, level, width);
  imageLayer.style.filter = neutral ? "" : "url(#draw-wl)";
  controls.brightness.value = String(Math.round(wl.brightness));
  controls.contrast.value = String(Math.round(wl.contrast));
  controls.wlReadout.textContent = `W ${Math.round(width * 255)} / L ${Math.round(level * 255)}`;
}

// The lung window preset: level 0.35 (89 of 255) and width 0.5 (128), i.e. the darker half of
// the grey scale, where aerated lung lies on a CXR, spread over the whole display, so that faint
// (ground-glass) opacities inside the lungs stand out. In applyWindowLevel's terms:
// level = 0.5 - brightness / 200 and width = 2^(-contrast / 40).
const LUNG_WINDOW = { brightness: 30, contrast: 40 };

function setWindowLevel(brightness, contrast) {
  wl.brightness = clamp(brightness, -100, 100);
  wl.contrast = clamp(contrast, -100, 100);
  applyWindowLevel();
}

// ---------------------------------------------------------------------------------------------
// Tools and pointer input

let tool = "brush";
let brushSize = 24; // diameter in image pixels
let drag = null; // {kind: 'paint'|'pan'|'wl'|'lasso', pointerId, ...}
let polygon = null; // {points: [{x, y}]} in image coordinates
const keys = { space: false, w: false, shift: false };
const perf = {
  segment: stats(),
  composite: stats(),
  latency: stats(),
  pendingInput: null,
};

function stats() {
  const s = { n: 0, total: 0, max: 0, values: [] };
  s.add = (v) => {
    s.n++;
    s.total += v;
    s.max = Math.max(s.max, v);
    if (s.values.length < 5000) s.values.push(v);
  };
  s.summary = () => {
    const sorted = s.values.slice().sort((a, b) => a - b);
    const pct = (p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : 0);
    return { n: s.n, meanMs: s.n ? s.total / s.n : 0, p50Ms: pct(0.5), p95Ms: pct(0.95), maxMs: s.max };
  };
  return s;
}

function setTool(name) {
  if (polygon && name !== "lasso") cancelPolygon();
  tool = name;
  for (const button of root.querySelectorAll("[data-tool]")) {
    button.setAttribute("aria-pressed", String(button.dataset.tool === name));
  }
  stage.dataset.cursor = name;
  requestRender("ui");
}

function setBrushSize(size) {
  brushSize = clamp(Math.round(size), MIN_BRUSH, MAX_BRUSH);
  controls.brushSize.value = String(brushSize);
  controls.brushReadout.textContent = `${brushSize} px`;
  requestRender("ui");
}

function stagePoint(e) {
  const rect = stage.getBoundingClientRect();
  return { sx: e.clientX - rect.left, sy: e.clientY - rect.top };
}

// Touch: one finger draws with the current tool, two fingers pinch to zoom and pan. A stroke
// the first finger had begun is taken back when the second one lands: it was a gesture.
const touches = new Map(); // pointerId -> {sx, sy}
let pinch = null; // {dist, mx, my} at the last move

function pinchNow() {
  const [a, b] = touches.values();
  return { dist: Math.hypot(a.sx - b.sx, a.sy - b.sy) || 1, mx: (a.sx + b.sx) / 2, my: (a.sy + b.sy) / 2 };
}

function startPinch() {
  if (drag) {
    const kind = drag.kind;
    if (uiLayer.hasPointerCapture(drag.pointerId)) uiLayer.releasePointerCapture(drag.pointerId);
    drag = null;
    stage.dataset.drag = "";
    if (kind === "paint") {
      const seq = history.seq;
      endOp();
      if (history.seq !== seq) {
        const step = history.undo.pop();
        applyRuns(step.runs);
        uploadRect(step.rect);
        afterMaskChange();
      }
    } else if (kind === "lasso") {
      cancelPolygon();
    }
  }
  pinch = pinchNow();
}

/** Pen pressure thins the brush: the set size at half pressure and above (a pen that cannot
 * sense pressure reports 0.5, so it draws at the set size), down to a tenth of it. */
function brushRadius(e) {
  const r = brushSize / 2;
  if (e.pointerType !== "pen" || !(e.pressure > 0)) return r;
  return Math.max(0.5, r * clamp(e.pressure * 2, 0.1, 1));
}

function onPointerDown(e) {
  if (e.pointerType === "touch" && image) {
    touches.set(e.pointerId, stagePoint(e));
    if (touches.size >= 2) {
      e.preventDefault();
      if (touches.size === 2) startPinch();
      return;
    }
  }
  if (drag || !image) return;
  const { sx, sy } = stagePoint(e);
  pointer.sx = sx;
  pointer.sy = sy;
  pointer.inside = true;
  keys.shift = e.shiftKey;
  let kind = null;
  if (e.button === 1 || (e.button === 0 && keys.space)) kind = "pan";
  else if (e.button === 2 || (e.button === 0 && keys.w)) kind = "wl";
  else if (e.button === 0 && e.isPrimary) {
    kind = tool === "lasso" ? "lasso" : tool === "brush" || tool === "eraser" ? "paint" : null;
  }
  if (!kind) return;
  e.preventDefault();
  try {
    uiLayer.setPointerCapture(e.pointerId);
  } catch (err) {
    // synthetic or already-released pointers cannot be captured; the drag still works
  }
  drag = { kind, pointerId: e.pointerId, sx, sy, startSx: sx, startSy: sy };
  stage.dataset.drag = kind;
  if (kind === "wl") {
    drag.brightness = wl.brightness;
    drag.contrast = wl.contrast;
  } else if (kind === "paint") {
    const p = { ...toImage(sx, sy), r: brushRadius(e) };
    drag.value = tool === "eraser" ? 0 : 1;
    drag.last = p;
    beginOp(tool === "eraser" ? "erase" : "brush stroke");
    paintBatch([p], e.timeStamp);
  } else if (kind === "lasso") {
    const p = toImage(sx, sy);
    if (!polygon) {
      polygon = { points: [p] };
      drag.started = true;
    } else if (polygon.points.length >= 3 && nearFirstVertex(sx, sy)) {
      drag = null;
      stage.dataset.drag = "";
      closePolygon();
      return;
    } else {
      polygon.points.push(p);
    }
    drag.freehand = false;
  }
  requestRender("ui");
}

function nearFirstVertex(sx, sy) {
  const first = polygon.points[0];
  return Math.hypot(first.x * view.s + view.tx - sx, first.y * view.s + view.ty - sy) <= CLOSE_DISTANCE_PX;
}

/** Paints from the stroke's last point through `points` ({x, y, r}: image px, brush radius). */
function paintBatch(points, inputTime) {
  const t0 = performance.now();
  let rect = null;
  for (const p of points) {
    rect = unionRect(rect, paintSegment(drag.last.x, drag.last.y, p.x, p.y, p.r, drag.value));
    drag.last = p;
  }
  uploadRect(rect);
  perf.segment.add(performance.now() - t0);
  if (perf.pendingInput === null) perf.pendingInput = inputTime || t0;
  // Only the stroke's new footprint is recomposited on the next frame.
  maskDamage = unionRect(maskDamage, rect);
  requestRender("ui");
}

function onPointerMove(e) {
  if (touches.has(e.pointerId)) {
    touches.set(e.pointerId, stagePoint(e));
    if (pinch) {
      const now = pinchNow();
      view.tx += now.mx - pinch.mx;
      view.ty += now.my - pinch.my;
      zoomAt(now.mx, now.my, now.dist / pinch.dist);
      pinch = now;
      return;
    }
  }
  const { sx, sy } = stagePoint(e);
  pointer.sx = sx;
  pointer.sy = sy;
  pointer.inside = true;
  keys.shift = e.shiftKey;
  if (drag && e.pointerId === drag.pointerId) {
    if (drag.kind === "pan") {
      view.tx += sx - drag.sx;
      view.ty += sy - drag.sy;
      requestRender("image", "mask", "ui");
    } else if (drag.kind === "wl") {
      setWindowLevel(
        drag.brightness - (sy - drag.startSy) * 0.4,
        drag.contrast + (sx - drag.startSx) * 0.4,
      );
    } else if (drag.kind === "paint") {
      const events = typeof e.getCoalescedEvents === "function" ? e.getCoalescedEvents() : [];
      const list = events.length ? events : [e];
      const rect = stage.getBoundingClientRect();
      paintBatch(
        list.map((ev) => ({ ...toImage(ev.clientX - rect.left, ev.clientY - rect.top), r: brushRadius(ev) })),
        e.timeStamp,
      );
    } else if (drag.kind === "lasso") {
      if (!drag.freehand && Math.hypot(sx - drag.startSx, sy - drag.startSy) > FREEHAND_STEP_PX * 2) {
        drag.freehand = true;
      }
      if (drag.freehand) {
        const last = polygon.points[polygon.points.length - 1];
        const ls = { x: last.x * view.s + view.tx, y: last.y * view.s + view.ty };
        if (Math.hypot(sx - ls.x, sy - ls.y) >= FREEHAND_STEP_PX) polygon.points.push(toImage(sx, sy));
      }
    }
    drag.sx = sx;
    drag.sy = sy;
  }
  requestRender("ui");
  updateInfo();
}

function onPointerUp(e) {
  if (touches.delete(e.pointerId) && pinch) {
    if (touches.size < 2) pinch = null; // the finger left behind does not draw
    return;
  }
  if (!drag || e.pointerId !== drag.pointerId) return;
  const done = drag;
  drag = null;
  stage.dataset.drag = "";
  if (uiLayer.hasPointerCapture(e.pointerId)) uiLayer.releasePointerCapture(e.pointerId);
  if (done.kind === "paint") {
    endOp();
  } else if (done.kind === "lasso" && done.freehand && done.started && polygon) {
    keys.shift = e.shiftKey;
    closePolygon();
  }
  requestRender("ui");
}

function closePolygon() {
  if (!polygon) return;
  const points = polygon.points;
  polygon = null;
  if (points.length < 3) {
    setStatus("A polygon needs at least three points.");
    requestRender("ui");
    return;
  }
  const subtract = keys.shift;
  beginOp(subtract ? "polygon subtract" : "polygon fill");
  const rect = fillPolygon(points, subtract ? 0 : 1);
  uploadRect(rect);
  endOp();
  requestRender("mask", "ui");
}

function cancelPolygon() {
  polygon = null;
  requestRender("ui");
}

function runFillHoles() {
  if (drag) return;
  setStatus("Filling holes…");
  // Let the status paint before the (up to a few hundred ms) fill runs.
  requestAnimationFrame(() =>
    setTimeout(() => {
      beginOp("fill holes");
      const rect = fillHoles();
      uploadRect(rect);
      const changed = currentOp.log.n;
      endOp();
      setStatus(changed ? `Filled ${changed.toLocaleString()} px of holes.` : "No enclosed holes to fill.");
    }, 0),
  );
}

// ---------------------------------------------------------------------------------------------
// Start masks

let startedFrom = null; // the label of the candidate this drawing started from, if any
let startedFromMask = null; // the id of the machine starting mask it started from, if any

function loadStartMask(index) {
  return loadStart(index >= 0 ? startMasks[index] : null);
}

// Replaces the mask with `entry` ({label, url, candidate?, mask?}) or, given null, a blank one.
async function loadStart(entry) {
  if (drag) return;
  let next = null;
  if (entry) {
    setStatus(`Loading ${entry.label}…`);
    try {
      const img = await loadImage(entry.url);
      if (img.naturalWidth !== W || img.naturalHeight !== H) {
        throw new Error(
          `${entry.label} is ${img.naturalWidth}×${img.naturalHeight} but the image is ${W}×${H}.`,
        );
      }
      const canvas = document.createElement("canvas");
      canvas.width = W;
      canvas.height = H;
      const ctx = canvas.getContext("2d", { willReadFrequently: true });
      ctx.drawImage(img, 0, 0);
      const rgba = ctx.getImageData(0, 0, W, H).data;
      next = new Uint8Array(W * H);
      for (let i = 0, j = 0; i < next.length; i++, j += 4) next[i] = rgba[j] > 127 ? 1 : 0;
    } catch (err) {
      setStatus(err.message, "error");
      return;
    }
  }
  // What the saved mask is recorded as based on: the candidate last loaded (none after a clear).
  startedFrom = entry && entry.candidate ? entry.candidate : null;
  startedFromMask = entry && entry.mask ? entry.mask : null;
  beginOp(entry ? `load ${entry.label}` : "clear mask");
  for (let i = 0; i < mask.length; i++) setPixel(i, next ? next[i] : 0);
  const changed = currentOp.log.n;
  endOp();
  maskCanvasCtx.clearRect(0, 0, W, H);
  uploadRect({ x0: 0, y0: 0, x1: W, y1: H });
  requestRender("mask");
  setStatus(
    changed
      ? `Started from ${entry ? entry.label : "a blank mask"} (Ctrl+Z undoes this).`
      : `The mask already equals ${entry ? entry.label : "a blank mask"}.`,
  );
}

// The machine starting mask of a first drawing: the server predicts the image with the newest
// finished round's network (or returns the mask it made before) and keeps it as a mask version.
async function loadStartingMask(button) {
  if (drag || button.disabled) return;
  button.disabled = true;
  setStatus("The model is predicting this image…");
  try {
    const response = await fetch(button.dataset.url, {
      method: "POST",
      headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error(await errorText(response));
    const body = await response.json();
    await loadStart({ label: "the model's mask", url: body.png, mask: body.id });
  } catch (err) {
    const message = err instanceof TypeError ? "Could not reach the server." : err.message;
    setStatus(`No starting mask: ${message}`, "error");
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Saving

let saving = false;
let emptyConfirmUntil = 0;

// Saves the mask; then opens the page that says "Saved" and goes on to the queue, or with
// `andNext` to the next image waiting for a drawing.
async function save(andNext = false) {
  if (saving || drag) return;
  if (andNext && controls.saveNext.disabled) return;
  if (polygon) closePolygon();
  if (maskOn === 0 && performance.now() > emptyConfirmUntil) {
    emptyConfirmUntil = performance.now() + 6000;
    setStatus("The mask is empty. Press Save again within a few seconds to save an empty mask.", "notice");
    return;
  }
  saving = true;
  controls.save.disabled = true;
  const nextWasDisabled = controls.saveNext.disabled;
  controls.saveNext.disabled = true;
  setStatus("Saving…");
  const savingId = topId();
  try {
    const form = new FormData();
    form.append("mask", await encodeMaskPng(), "mask.png");
    if (startedFrom) form.append("based_on_candidate", startedFrom);
    else if (startedFromMask) form.append("based_on", String(startedFromMask));
    const response = await fetch(config.saveUrl, {
      method: "POST",
      body: form,
      headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error(await errorText(response));
    const body = await response.json().catch(() => ({}));
    history.savedId = savingId;
    const version = body.version !== undefined ? ` as version ${body.version}` : "";
    updateDirty();
    const after = andNext ? config.saveNextUrl : config.nextUrl;
    if (after && !isDirty()) {
      setStatus(`Saved${version}. ${andNext ? "Opening the next image…" : "Back to your queue…"}`, "notice");
      window.location.assign(after);
    } else {
      setStatus(`Saved${version}.`, "notice");
    }
  } catch (err) {
    const message = err instanceof TypeError ? "Could not reach the server; the mask is not saved." : err.message;
    setStatus(`Not saved: ${message}`, "error");
  } finally {
    saving = false;
    controls.save.disabled = false;
    controls.saveNext.disabled = nextWasDisabled;
  }
}

// ---------------------------------------------------------------------------------------------
// Page controls and status

const controls = {
  brushSize: $("#brush-size"),
  brushReadout: $("#brush-size-readout"),
  opacity: $("#mask-opacity"),
  opacityReadout: $("#mask-opacity-readout"),
  showMask: $("#mask-visible"),
  brightness: $("#wl-brightness"),
  contrast: $("#wl-contrast"),
  wlReadout: $("#wl-readout"),
  wlReset: $("#wl-reset"),
  wlLung: $("#wl-lung"),
  start: $("#start-mask"),
  save: $("#save"),
  saveNext: $("#save-next"),
  undo: $("#undo"),
  redo: $("#redo"),
  fit: $("#zoom-fit"),
  status: $("#status"),
  dirty: $("#dirty"),
  zoom: $("#zoom-readout"),
  cursor: $("#cursor-readout"),
  count: $("#mask-count"),
};

function setStatus(text, kind = "") {
  controls.status.textContent = text;
  controls.status.className = `statusline ${kind}`.trim();
}

function updateDirty() {
  const dirty = isDirty();
  controls.dirty.hidden = !dirty;
  controls.undo.disabled = history.undo.length === 0;
  controls.redo.disabled = history.redo.length === 0;
}

function afterMaskChange() {
  requestRender("mask");
  updateDirty();
  const pct = ((100 * maskOn) / (W * H)).toFixed(2);
  controls.count.textContent = `Mask ${maskOn.toLocaleString()} px (${pct}%)`;
}

function updateInfo() {
  controls.zoom.textContent = `${Math.round(view.s * 100)}%`;
  if (pointer.inside) {
    const p = toImage(pointer.sx, pointer.sy);
    const x = Math.floor(p.x);
    const y = Math.floor(p.y);
    controls.cursor.textContent = x >= 0 && y >= 0 && x < W && y < H ? `x ${x}, y ${y}` : "";
  }
}

function setMaskVisible(visible) {
  maskVisible = visible;
  controls.showMask.checked = visible;
  requestRender("mask");
}

function setOpacity(percent) {
  const value = clamp(Number(percent), 0, 100);
  maskLayer.style.opacity = String(value / 100);
  controls.opacity.value = String(value);
  controls.opacityReadout.textContent = `${value}%`;
}

function bindControls() {
  for (const button of root.querySelectorAll("[data-tool]")) {
    button.addEventListener("click", () => {
      if (button.dataset.tool === "fill-holes") runFillHoles();
      else setTool(button.dataset.tool);
    });
  }
  controls.brushSize.min = String(MIN_BRUSH);
  controls.brushSize.max = String(MAX_BRUSH);
  controls.brushSize.addEventListener("input", () => setBrushSize(Number(controls.brushSize.value)));
  controls.opacity.addEventListener("input", () => setOpacity(controls.opacity.value));
  controls.showMask.addEventListener("change", () => setMaskVisible(controls.showMask.checked));
  controls.brightness.addEventListener("input", () =>
    setWindowLevel(Number(controls.brightness.value), wl.contrast),
  );
  controls.contrast.addEventListener("input", () =>
    setWindowLevel(wl.brightness, Number(controls.contrast.value)),
  );
  controls.wlReset.addEventListener("click", () => setWindowLevel(0, 0));
  controls.wlLung.addEventListener("click", () =>
    setWindowLevel(LUNG_WINDOW.brightness, LUNG_WINDOW.contrast),
  );
  controls.undo.addEventListener("click", undo);
  controls.redo.addEventListener("click", redo);
  controls.save.addEventListener("click", () => save());
  controls.saveNext.addEventListener("click", () => save(true));
  controls.fit.addEventListener("click", fitView);
  for (const [k, entry] of startMasks.entries()) {
    const option = document.createElement("option");
    option.value = String(k);
    option.textContent = entry.label;
    controls.start.append(option);
  }
  // The select is an action: it replaces the mask (one undoable step), then shows its prompt
  // again, so it never claims a state that undo has since changed.
  controls.start.addEventListener("change", () => {
    const value = controls.start.value;
    controls.start.value = "";
    controls.start.blur();
    if (value !== "") loadStartMask(Number(value));
  });

  const startingButton = document.getElementById("starting-mask");
  if (startingButton) startingButton.addEventListener("click", () => loadStartingMask(startingButton));

  uiLayer.addEventListener("pointerdown", onPointerDown);
  uiLayer.addEventListener("pointermove", onPointerMove);
  uiLayer.addEventListener("pointerup", onPointerUp);
  uiLayer.addEventListener("pointercancel", onPointerUp);
  uiLayer.addEventListener("pointerleave", () => {
    pointer.inside = false;
    controls.cursor.textContent = "";
    requestRender("ui");
  });
  uiLayer.addEventListener("dblclick", (e) => {
    if (tool === "lasso" && polygon) {
      keys.shift = e.shiftKey;
      closePolygon();
    }
  });
  uiLayer.addEventListener("contextmenu", (e) => e.preventDefault());
  stage.addEventListener(
    "wheel",
    (e) => {
      e.preventDefault();
      const { sx, sy } = stagePoint(e);
      const unit = e.deltaMode === 1 ? 0.05 : e.deltaMode === 2 ? 1 : 0.0015;
      zoomAt(sx, sy, Math.exp(-e.deltaY * unit));
    },
    { passive: false },
  );
  new ResizeObserver(resizeLayers).observe(stage);

  window.addEventListener("keydown", onKeyDown);
  window.addEventListener("keyup", onKeyUp);
  window.addEventListener("blur", () => {
    keys.space = keys.w = keys.shift = false;
    stage.dataset.key = "";
  });
  window.addEventListener("beforeunload", (e) => {
    if (isDirty()) {
      e.preventDefault();
      e.returnValue = "";
    }
  });
}

function typingTarget(target) {
  return (
    target instanceof HTMLElement &&
    (target.isContentEditable ||
      target.tagName === "SELECT" ||
      target.tagName === "TEXTAREA" ||
      (target.tagName === "INPUT" && !["range", "checkbox", "button"].includes(target.type)))
  );
}

function onKeyDown(e) {
  const ctrl = e.ctrlKey || e.metaKey;
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  keys.shift = e.shiftKey;
  if (ctrl && key === "s") {
    e.preventDefault();
    if (!e.repeat) save();
    return;
  }
  if (typingTarget(e.target)) return;
  if (ctrl && key === "z") {
    e.preventDefault();
    if (e.shiftKey) redo();
    else undo();
    return;
  }
  if (ctrl && key === "y") {
    e.preventDefault();
    redo();
    return;
  }
  if (ctrl || e.altKey) return;
  // A held key repeats only where repeating makes sense (brush size, zoom); a held S must not
  // confirm its own "save an empty mask?" question.
  if (e.repeat && !["[", "]", "+", "=", "-"].includes(key)) {
    if (key === " " || key === "w") e.preventDefault();
    return;
  }
  let handled = true;
  switch (key) {
    case " ":
      keys.space = true;
      stage.dataset.key = "space";
      break;
    case "w":
      keys.w = true;
      stage.dataset.key = "w";
      break;
    case "b":
      setTool("brush");
      break;
    case "e":
      setTool("eraser");
      break;
    case "l":
      setTool("lasso");
      break;
    case "h":
      runFillHoles();
      break;
    case "[":
      setBrushSize(brushSize <= 10 ? brushSize - 1 : brushSize / 1.15);
      break;
    case "]":
      setBrushSize(brushSize < 10 ? brushSize + 1 : brushSize * 1.15);
      break;
    case "m":
      setMaskVisible(!maskVisible);
      break;
    case "s":
      save(e.shiftKey);
      break;
    case "r":
      setWindowLevel(0, 0);
      break;
    case "g":
      setWindowLevel(LUNG_WINDOW.brightness, LUNG_WINDOW.contrast);
      break;
    case "f":
    case "0":
      fitView();
      break;
    case "1":
      zoomAt(view.cw / 2, view.ch / 2, 1 / view.s);
      break;
    case "+":
    case "=":
      zoomAt(view.cw / 2, view.ch / 2, 1.25);
      break;
    case "-":
      zoomAt(view.cw / 2, view.ch / 2, 1 / 1.25);
      break;
    case "Enter":
      if (polygon) closePolygon();
      else handled = false;
      break;
    case "Escape":
      if (polygon) cancelPolygon();
      else handled = false;
      break;
    case "Backspace":
      if (polygon) {
        polygon.points.pop();
        if (!polygon.points.length) polygon = null;
        requestRender("ui");
      } else handled = false;
      break;
    case "?":
      toggleShortcuts();
      break;
    case "Shift":
      requestRender("ui");
      handled = false;
      break;
    default:
      handled = false;
  }
  if (handled) e.preventDefault();
}

function onKeyUp(e) {
  keys.shift = e.shiftKey;
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (key === " ") {
    keys.space = false;
    if (!typingTarget(e.target)) e.preventDefault();
  } else if (key === "w") {
    keys.w = false;
  } else if (key === "Shift") {
    requestRender("ui");
  }
  stage.dataset.key = keys.space ? "space" : keys.w ? "w" : "";
}

function toggleShortcuts() {
  const panel = $("#shortcuts");
  if (panel) panel.open = !panel.open;
}

// ---------------------------------------------------------------------------------------------
// Start

function maskStats() {
  let on = 0;
  for (let i = 0; i < mask.length; i++) on += mask[i];
  return { width: W, height: H, on };
}

const ready = (async () => {
  bindControls();
  setTool("brush");
  setBrushSize(brushSize);
  setOpacity(controls.opacity.value || 60);
  setWindowLevel(0, 0);
  afterMaskChange();
  setStatus("Loading the image…");
  try {
    // Touch the full-resolution mirror once now, so its backing store is not allocated in the
    // middle of the first stroke.
    maskCanvasCtx.putImageData(new ImageData(1, 1), 0, 0);
    // The copy for the fitted view; the stage's layout is known before its first resize event.
    const box = stage.getBoundingClientRect();
    const fit = Math.min(box.width / W, box.height / H) * 0.96 || 1;
    const first = displayLevelFor(fit * (window.devicePixelRatio || 1));
    const level = display.levels[first];
    const img = await loadImage(displayUrl(level.max));
    if (img.decode) await img.decode().catch(() => {});
    display.loaded[first] = img;
    image = img;
    const ew = level.max ? Math.max(1, Math.round((W * level.max) / Math.max(W, H))) : W;
    const eh = level.max ? Math.max(1, Math.round((H * level.max) / Math.max(W, H))) : H;
    if (Math.abs(image.naturalWidth - ew) > 1 || Math.abs(image.naturalHeight - eh) > 1) {
      setStatus(
        `The image file is ${image.naturalWidth}×${image.naturalHeight}, expected ${ew}×${eh}; ` +
          "it is stretched to fit and the mask keeps the expected size.",
        "error",
      );
    } else {
      setStatus(
        config.purpose === "redraw"
          ? "Redraw the infection mask. Start blank or from one of the candidates."
          : "Draw the infection mask.",
      );
    }
    requestRender("image", "mask", "ui");
  } catch (err) {
    setStatus(err.message, "error");
    throw err;
  }
})();
ready.catch(() => {});

window.maskloopDraw = {
  maskStats,
  isDirty,
  ready,
  /** Timings of brush rendering, in ms: raster + upload per pointer event, and composite. */
  perf: () => ({
    segment: perf.segment.summary(),
    composite: perf.composite.summary(),
    inputToFrame: perf.latency.summary(),
  }),
  historySize: () => ({
    steps: history.undo.length + history.redo.length,
    bytes: [...history.undo, ...history.redo].reduce((sum, step) => sum + step.runs.byteLength, 0),
  }),
  view: () => ({ scale: view.s, tx: view.tx, ty: view.ty }),
};
