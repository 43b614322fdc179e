// Plain-SVG plots and small tables for the round dashboard: no libraries, works offline.
//
//   lineChart({ series, xLabel, yLabel, xDomain, yDomain, width, height, ariaLabel })
//       → <figure> with an <svg> (axes, grid, one polyline per series, a <title> tooltip on
//         every point) and an HTML legend when there is more than one series.
//       series: [{ label, color, points: [[x, y], ...] }]
//   confusionMatrix(confusion, { positive, negative, caption }) → <table class="compact">
//   metricsTable(rows, { caption }) → <div class="table-wrap"> with the six metrics ± CI and AUC
//   colorFor(i) → a colour of the palette (distinct on the dark theme)
//
// Colours of axes and text come from app.css's variables through `style`, so the plots follow
// the theme.

const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#4cc3d9", "#ff9f43", "#b197fc", "#62c98a", "#ff7a70", "#e8bd55", "#f783ac", "#74c0fc", "#c0eb75", "#ced4da"];

export const colorFor = (i) => PALETTE[i % PALETTE.length];

function svg(tag, attrs = {}, style = "") {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (style) node.setAttribute("style", style);
  return node;
}

function html(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

// Round numbers for axis ticks: 1, 2 or 5 times a power of ten.
function niceStep(lo, hi, count) {
  const raw = (hi - lo) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
}

export function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const step = niceStep(lo, hi, count);
  const ticks = [];
  for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

function tickLabel(t) {
  if (t === 0) return "0";
  const abs = Math.abs(t);
  if (abs >= 1000) return t.toLocaleString();
  if (abs >= 1) return String(Number(t.toFixed(2)));
  return String(Number(t.toPrecision(2)));
}

function extent(values, fallback) {
  const finite = values.filter((v) => Number.isFinite(v));
  if (!finite.length) return fallback;
  return [Math.min(...finite), Math.max(...finite)];
}

export function lineChart({ series, xLabel = "", yLabel = "", xDomain, yDomain, width = 320, height = 200, ariaLabel = "", integerX = false }) {
  const margin = { top: 10, right: 14, bottom: 38, left: 52 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const all = series.flatMap((s) => s.points);
  let [x0, x1] = xDomain || extent(all.map((p) => p[0]), [0, 1]);
  let [y0, y1] = yDomain || extent(all.map((p) => p[1]), [0, 1]);
  if (!yDomain) {
    y0 = Math.min(0, y0); // a loss axis from zero shows how far training got
    if (!(y1 > y0)) y1 = y0 + 1;
    const step = niceStep(y0, y1, 4);
    y1 = Math.ceil(y1 / step - 1e-9) * step; // the top tick at or above the highest point
  }
  if (x1 === x0) [x0, x1] = [x0 - 1, x1 + 1];
  if (y1 === y0) [y0, y1] = [y0 - 1, y1 + 1];
  const sx = (x) => margin.left + ((x - x0) / (x1 - x0)) * plotW;
  const sy = (y) => margin.top + plotH - ((y - y0) / (y1 - y0)) * plotH;

  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": ariaLabel || `${yLabel} against ${xLabel}` },
    `width: 100%; max-width: ${width}px; height: auto; display: block; font: 11px var(--font); overflow: visible`);

  const grid = svg("g");
  for (const t of niceTicks(y0, y1, 4)) {
    grid.append(svg("line", { x1: margin.left, x2: margin.left + plotW, y1: sy(t), y2: sy(t) }, "stroke: var(--border); stroke-width: 1"));
    const label = svg("text", { x: margin.left - 6, y: sy(t) + 4, "text-anchor": "end" }, "fill: var(--muted)");
    label.textContent = tickLabel(t);
    grid.append(label);
  }
  let xTicks = niceTicks(x0, x1, Math.min(6, Math.max(1, Math.round(plotW / 55))));
  if (integerX) xTicks = xTicks.filter((t) => Number.isInteger(t));
  for (const t of xTicks) {
    grid.append(svg("line", { x1: sx(t), x2: sx(t), y1: margin.top + plotH, y2: margin.top + plotH + 4 }, "stroke: var(--muted)"));
    const label = svg("text", { x: sx(t), y: margin.top + plotH + 16, "text-anchor": "middle" }, "fill: var(--muted)");
    label.textContent = tickLabel(t);
    grid.append(label);
  }
  grid.append(svg("line", { x1: margin.left, x2: margin.left + plotW, y1: margin.top + plotH, y2: margin.top + plotH }, "stroke: var(--muted)"));
  grid.append(svg("line", { x1: margin.left, x2: margin.left, y1: margin.top, y2: margin.top + plotH }, "stroke: var(--muted)"));
  const xl = svg("text", { x: margin.left + plotW / 2, y: height - 4, "text-anchor": "middle" }, "fill: var(--text)");
  xl.textContent = xLabel;
  const yl = svg("text", { x: 12, y: margin.top + plotH / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${margin.top + plotH / 2})` }, "fill: var(--text)");
  yl.textContent = yLabel;
  grid.append(xl, yl);
  root.append(grid);

  series.forEach((s, i) => {
    const color = s.color || colorFor(i);
    const pts = s.points.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
    const g = svg("g");
    if (pts.length > 1) {
      g.append(svg("polyline", { points: pts.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "), fill: "none" },
        `stroke: ${color}; stroke-width: 2; stroke-linejoin: round; stroke-linecap: round`));
    }
    // Points carry the exact values as tooltips; few points are drawn as dots.
    const dots = pts.length <= 60;
    for (const p of pts) {
      const dot = svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: dots ? 3 : 6 }, dots ? `fill: ${color}` : "fill: transparent");
      const title = svg("title");
      title.textContent = `${s.label ? `${s.label}: ` : ""}${xLabel} ${tickLabel(p[0])}, ${yLabel} ${Number(p[1]).toFixed(4)}`;
      dot.append(title);
      g.append(dot);
    }
    root.append(g);
  });

  const figure = html("figure");
  figure.style.margin = "0";
  figure.append(root);
  if (series.length > 1) figure.append(legend(series));
  return figure;
}

export function legend(series) {
  const list = html("div", undefined, "row");
  list.style.fontSize = "12px";
  list.style.gap = "4px 14px";
  series.forEach((s, i) => {
    const item = html("span");
    const swatch = html("span");
    swatch.setAttribute("aria-hidden", "true");
    swatch.style.cssText = `display: inline-block; width: 14px; height: 3px; margin-right: 6px; vertical-align: middle; background: ${s.color || colorFor(i)}`;
    item.append(swatch, document.createTextNode(s.label));
    list.append(item);
  });
  return list;
}

const count = (n) => (Number.isFinite(n) ? Number(n).toLocaleString() : "—");

export function confusionMatrix(confusion, { positive = "COVID-19", negative = "Control", caption = "" } = {}) {
  const table = html("table", undefined, "compact");
  table.style.width = "auto";
  if (caption) {
    const cap = html("caption", caption);
    cap.style.cssText = "caption-side: top; text-align: left; padding: 0 0 4px; color: var(--muted); font-size: 12px";
    table.append(cap);
  }
  const head = html("thead");
  const hr = html("tr");
  const corner = html("th", "truth ↓ predicted →");
  corner.style.cssText = "text-transform: none; letter-spacing: 0; font-weight: 400";
  hr.append(corner, html("th", positive, "num"), html("th", negative, "num"));
  head.append(hr);
  const body = html("tbody");
  const total = ["tp", "fp", "tn", "fn"].reduce((a, k) => a + (confusion[k] || 0), 0);
  const cell = (n, correct) => {
    const td = html("td", count(n), "num");
    // Shade by share of all cases so the diagonal reads at a glance.
    const share = total ? n / total : 0;
    const hue = correct ? "var(--ok)" : "var(--danger)";
    td.style.background = `color-mix(in srgb, ${hue} ${Math.round(8 + 40 * Math.sqrt(share))}%, transparent)`;
    td.title = total ? `${((share) * 100).toFixed(2)} % of ${count(total)}` : "";
    return td;
  };
  const r1 = html("tr");
  r1.append(html("th", positive), cell(confusion.tp, true), cell(confusion.fn, false));
  const r2 = html("tr");
  r2.append(html("th", negative), cell(confusion.fp, false), cell(confusion.tn, true));
  body.append(r1, r2);
  table.append(head, body);
  return table;
}

export const METRICS = [
  ["sensitivity", "Sensitivity"],
  ["specificity", "Specificity"],
  ["precision", "Precision"],
  ["f1", "F1"],
  ["f2", "F2"],
  ["accuracy", "Accuracy"],
];

function percentWithCi(value, ci) {
  if (value === null || value === undefined) return "—";
  const v = (value * 100).toFixed(2);
  return ci === null || ci === undefined ? v : `${v} ± ${(ci * 100).toFixed(2)}`;
}

// rows: [{ label, color, level: {sensitivity, sensitivity_ci, ..., auc}, n }]
export function metricsTable(rows, { caption = "" } = {}) {
  const wrap = html("div", undefined, "table-wrap");
  const table = html("table", undefined, "compact");
  if (caption) {
    const cap = html("caption", caption);
    cap.style.cssText = "caption-side: top; text-align: left; padding: 6px 12px; color: var(--muted); font-size: 12px";
    table.append(cap);
  }
  const head = html("thead");
  const hr = html("tr");
  hr.append(html("th", "Network"));
  for (const [, label] of METRICS) hr.append(html("th", `${label} %`, "num"));
  hr.append(html("th", "AUC", "num"), html("th", "Test images", "num"));
  head.append(hr);
  const body = html("tbody");
  for (const row of rows) {
    const tr = html("tr");
    const name = html("td");
    const swatch = html("span");
    swatch.setAttribute("aria-hidden", "true");
    swatch.style.cssText = `display: inline-block; width: 10px; height: 10px; margin-right: 8px; border-radius: 2px; background: ${row.color}`;
    name.append(swatch, document.createTextNode(row.label));
    tr.append(name);
    for (const [key] of METRICS) tr.append(html("td", percentWithCi(row.level[key], row.level[`${key}_ci`]), "num"));
    tr.append(html("td", row.level.auc === null || row.level.auc === undefined ? "—" : Number(row.level.auc).toFixed(4), "num"));
    tr.append(html("td", row.n === undefined || row.n === null ? "—" : String(row.n), "num"));
    body.append(tr);
  }
  table.append(head, body);
  wrap.append(table);
  return wrap;
}
