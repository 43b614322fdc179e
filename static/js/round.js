// Live round dashboard: polls the round's API and redraws the run table and statistics, the
// loss curves of every run, and for a final round the held-out metrics, confusion matrices and
// precision–recall curves. Plots are redrawn only when a run's history or metrics change.
import { METRICS, colorFor, confusionMatrix, lineChart } from "./plots.js";

const script = document.currentScript || document.querySelector("script[data-api]");
const api = script.dataset.api;
const runsBody = document.querySelector("#runs tbody");
const statsList = document.getElementById("stats");
const statusEl = document.getElementById("round-status");
const failureEl = document.getElementById("round-failure");
const adjudication = document.getElementById("adjudication");
const lossSection = document.getElementById("losses");
const lossPlots = document.getElementById("loss-plots");
const evaluation = document.getElementById("evaluation");

const pct = (x) => `${Math.round(x * 100)}%`;
const fmt = (x, digits = 3) => (x === null || x === undefined ? "—" : Number(x).toFixed(digits));

function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value;
  if (cls) el.className = cls;
  return el;
}

const runName = (run) => `${run.arch || run.kind} · ${run.encoder}${run.fold === null ? "" : ` · fold ${run.fold + 1}`}`;

function runNotes(run) {
  if (run.failure_reason) return run.failure_reason;
  const m = run.metrics || {};
  if (m.held_out_dice_vs_manual != null) return `held-out Dice vs MD ${fmt(m.held_out_dice_vs_manual)}`;
  const level = m.pixel || m.image;
  if (level && level.f1 != null) {
    const what = m.pixel ? "pixel" : "image";
    return `${what} F1 ${fmt(level.f1 * 100, 1)} %, sensitivity ${fmt(level.sensitivity * 100, 1)} %`;
  }
  return "";
}

function runRow(run, color) {
  const tr = document.createElement("tr");
  tr.dataset.run = run.id;
  const name = text("td", runName(run));
  if (color) {
    const swatch = document.createElement("span");
    swatch.setAttribute("aria-hidden", "true");
    swatch.style.cssText = `display: inline-block; width: 10px; height: 10px; margin-right: 8px; border-radius: 2px; background: ${color}`;
    name.prepend(swatch);
  }
  tr.append(name);
  tr.append(text("td", run.fold === null ? "all" : String(run.fold + 1)));
  const status = document.createElement("td");
  status.append(text("span", run.status_display, `status-pill status-${run.status}`));
  tr.append(status);
  const cell = document.createElement("td");
  const bar = document.createElement("div");
  bar.className = "progress";
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuenow", String(Math.round(run.progress * 100)));
  const fill = document.createElement("div");
  fill.className = "bar";
  fill.style.width = pct(run.progress);
  bar.append(fill);
  cell.append(bar);
  cell.append(text("small", runDetail(run), "muted"));
  tr.append(cell);
  tr.append(text("td", fmt(run.loss)));
  tr.append(text("td", `${run.predicted}/${run.targets}`));
  tr.append(text("td", runNotes(run), run.failure_reason ? "error" : "muted"));
  return tr;
}

// What a run's progress says: nothing of epochs or steps before its first step has run.
function runDetail(run) {
  if (run.status === "queued") return "waiting for a training worker";
  if (run.status === "training") {
    if (!run.steps) return "starting…";
    return `epoch ${Math.max(run.epoch, 1)}/${run.epochs}, step ${run.step}/${run.steps}`;
  }
  if (run.status === "predicting") return `predicting · ${pct(run.progress)}`;
  return pct(run.progress);
}

function renderStats(s) {
  if (!statsList) return;
  const rows = [
    ["Items", `${s.items.total} (open ${s.items.open}, accepted ${s.items.accepted}, redraw ${s.items.redraw + s.items.redrawn}, tied ${s.items.adjudication})`],
    ["Decisions", String(s.decisions)],
    ["Machine mask preferred over the MD's", s.manual_compared ? `${s.machine_preferred} of ${s.manual_compared} (${pct(s.machine_preferred_rate)})` : "—"],
    ["Redraw rate", s.redraw_rate === null ? "—" : pct(s.redraw_rate)],
    ["Median seconds per decision", fmt(s.median_seconds, 1)],
    ["Mean agreement", s.mean_agreement === null ? "—" : pct(s.mean_agreement)],
    ["Decisions per MD", Object.entries(s.decisions_per_md).map(([k, v]) => `${k}: ${v}`).join(", ") || "—"],
  ];
  statsList.replaceChildren(...rows.flatMap(([k, v]) => [text("dt", k), text("dd", v)]));
}

// ---------------------------------------------------------------- plots

// The epoch losses: the run's live history while it trains, else what its model recorded.
const lossesOf = (run) => (run.loss_history && run.loss_history.length ? run.loss_history : (run.metrics && run.metrics.train_loss) || []);

function renderLosses(runs, colors) {
  const withLoss = runs.filter((run) => lossesOf(run).length);
  lossSection.hidden = !withLoss.length;
  lossPlots.replaceChildren(...withLoss.map((run) => {
    const losses = lossesOf(run);
    const box = document.createElement("div");
    const title = text("div", runName(run));
    title.style.cssText = "font-weight: 600; margin-bottom: 2px";
    const last = losses[losses.length - 1];
    const seconds = run.metrics && run.metrics.train_seconds;
    const sub = text("div", `${losses.length} epoch${losses.length === 1 ? "" : "s"}, last ${fmt(last, 4)}${seconds ? ` · ${fmt(seconds, 0)} s` : ""}`, "muted");
    sub.style.fontSize = "12px";
    box.append(title, sub, lineChart({
      series: [{ label: runName(run), color: colors.get(run.id), points: losses.map((y, i) => [i + 1, y]) }],
      xLabel: "epoch",
      yLabel: "training loss",
      xDomain: [1, Math.max(losses.length, run.epochs || 1, 2)],
      integerX: true,
      width: 320,
      height: 190,
      ariaLabel: `Training loss per epoch of ${runName(run)}`,
    }));
    return box;
  }));
}

// ---------------------------------------------------------------- held-out metrics

// Which interval the tables show: Wilson's (small-sample safe) or the paper's eq. 13.
let intervalKind = "wilson";
let lastEvaluation = null;

const pct1 = (x) => (x === null || x === undefined ? "—" : (x * 100).toFixed(1));

function metricCell(m) {
  const td = text("td", "—", "num");
  if (!m || m.value === null) return td;
  const [lo, hi] = intervalKind === "paper" ? [m.paper_low, m.paper_high] : [m.low, m.high];
  td.textContent = `${pct1(m.value)} (${pct1(lo)}–${pct1(hi)})`;
  td.title = `Wilson 95 %: ${pct1(m.low)}–${pct1(m.high)} %; the paper's eq. 13 (normal approximation, clipped to 0–100 %): ${pct1(m.paper_low)}–${pct1(m.paper_high)} %`;
  return td;
}

function heldOutTable(rows) {
  const wrap = text("div", undefined, "table-wrap");
  const table = text("table", undefined, "compact");
  const head = document.createElement("tr");
  head.append(text("th", "Network"));
  for (const [, label] of METRICS) head.append(text("th", `${label} %`, "num"));
  head.append(text("th", "AUC", "num"), text("th", "Test images", "num"));
  const thead = document.createElement("thead");
  thead.append(head);
  const tbody = document.createElement("tbody");
  for (const row of rows) {
    const tr = document.createElement("tr");
    const name = text("td", row.label);
    const swatch = document.createElement("span");
    swatch.setAttribute("aria-hidden", "true");
    swatch.style.cssText = `display: inline-block; width: 10px; height: 10px; margin-right: 8px; border-radius: 2px; background: ${row.color}`;
    name.prepend(swatch);
    tr.append(name);
    for (const [key] of METRICS) tr.append(metricCell(row.intervals[key]));
    tr.append(text("td", row.auc === null || row.auc === undefined ? "—" : Number(row.auc).toFixed(4), "num"));
    tr.append(text("td", row.n == null ? "—" : String(row.n), "num"));
    tbody.append(tr);
  }
  table.append(thead, tbody);
  wrap.append(table);
  return wrap;
}

// What each final network is: preset, input size, encoder frozen or not, training masks,
// held-out images, and whether it is validated (training/validation.py holds the rule).
function networksTable(runs, colors) {
  const wrap = text("div", undefined, "table-wrap");
  const table = text("table", undefined, "compact");
  const head = document.createElement("tr");
  for (const h of ["Network", "Encoder", "Preset", "Input", "Training masks", "Held-out images", "Validated"]) head.append(text("th", h));
  const thead = document.createElement("thead");
  thead.append(head);
  const tbody = document.createElement("tbody");
  for (const run of runs) {
    const c = run.card || {};
    const tr = document.createElement("tr");
    tr.append(text("td", runName(run)));
    tr.append(text("td", `${run.encoder}${c.encoder_frozen === true ? " (frozen)" : c.encoder_frozen === false ? " (fine-tuned)" : ""}`));
    tr.append(text("td", c.preset || "—"), text("td", c.input_size ? `${c.input_size} px` : "—"));
    tr.append(text("td", String(c.train_masks ?? "—"), "num"));
    const n = c.held_out_images;
    tr.append(text("td", n == null ? "—" : `${n}${c.held_out_covid == null ? "" : ` (${c.held_out_covid} COVID-19, ${c.held_out_controls} control${c.held_out_controls === 1 ? "" : "s"})`}`, "num"));
    const cell = document.createElement("td");
    const badge = text("span", c.validated ? "yes" : "no", `badge ${c.validated ? "ok" : "warn"}`);
    if (!c.validated && c.reasons) badge.title = c.reasons.join("; ");
    cell.append(badge);
    tr.append(cell);
    tbody.append(tr);
  }
  table.append(thead, tbody);
  wrap.append(table);
  return wrap;
}

function renderValidation(runs) {
  const box = document.getElementById("evaluation-validation");
  const reasons = [...new Set(runs.flatMap((run) => (run.card && run.card.reasons) || []))];
  const validated = runs.length && runs.every((run) => run.card && run.card.validated);
  box.className = validated ? "notice" : "warning";
  box.dataset.validated = validated ? "1" : "0";
  const title = text("strong", validated
    ? "Validated: these figures may be reported, with their intervals."
    : "Not validated: these networks' output is for testing the platform, not a diagnosis.");
  const threshold = runs.find((run) => run.card && run.card.threshold);
  box.replaceChildren(title,
    ...(reasons.length ? [document.createElement("br"), document.createTextNode(`Why: ${reasons.join("; ")}.`)] : []),
    ...(threshold ? [document.createElement("br"), text("small", threshold.card.threshold)] : []));
}

function renderEvaluation(runs, colors) {
  const evaluated = runs.filter((run) => run.metrics && (run.metrics.pixel || run.metrics.image));
  evaluation.hidden = !evaluated.length;
  if (!evaluated.length) return;
  lastEvaluation = [runs, colors];
  const images = [...new Set(evaluated.map((run) => run.metrics.test_images).filter((n) => n != null))];
  document.getElementById("evaluation-note").textContent =
    `${images.length ? `${images.join(" / ")} held-out images, never trained on (no patient has images on both sides). ` : ""}` +
    "Percentages with their 95 % interval in brackets (choose Wilson's or the paper's eq. 13 above the tables; hover a figure for both); AUC is the area under the ROC curve.";
  renderValidation(runs.filter((run) => run.kind !== "classifier"));
  document.getElementById("evaluation-networks").replaceChildren(networksTable(runs, colors));

  for (const level of ["pixel", "image"]) {
    const rows = evaluated.filter((run) => run.metrics[level]).map((run) => ({
      label: runName(run), color: colors.get(run.id), intervals: (run.card && run.card.levels && run.card.levels[level]) || {},
      auc: run.metrics[level].auc, n: run.metrics.test_images,
    }));
    const target = document.getElementById(`metrics-${level}`);
    target.replaceChildren(rows.length ? heldOutTable(rows) : text("p", "No network measured at this level yet.", "muted"));

    const curves = evaluated
      .filter((run) => run.metrics[level] && run.metrics[level].pr_curve && run.metrics[level].pr_curve.recall.length)
      .map((run) => {
        const c = run.metrics[level].pr_curve;
        return { label: runName(run), color: colors.get(run.id), points: c.recall.map((r, i) => [r, c.precision[i]]) };
      });
    document.getElementById(`pr-${level}`).replaceChildren(curves.length
      ? lineChart({ series: curves, xLabel: "recall (sensitivity)", yLabel: "precision", xDomain: [0, 1], yDomain: [0, 1], width: 560, height: 320,
        ariaLabel: `Precision–recall curves, ${level} level` })
      : text("p", "No curve recorded.", "muted"));
  }

  // One line per network (a grid row): its pixel-level and image-level matrices side by side.
  const cells = evaluated.flatMap((run) => {
    const title = text("div", runName(run));
    title.style.cssText = "font-weight: 600; padding-top: 22px";
    const m = run.metrics;
    const pixel = m.pixel && m.pixel.confusion
      ? confusionMatrix(m.pixel.confusion, { positive: "Infected", negative: "Not infected", caption: "Pixels" })
      : document.createElement("div");
    const image = m.image && m.image.confusion
      ? confusionMatrix(m.image.confusion, { positive: "COVID-19", negative: "Control", caption: "Images" })
      : document.createElement("div");
    return [title, pixel, image];
  });
  document.getElementById("confusions").replaceChildren(...cells);
}

const intervalSelect = document.getElementById("interval-kind");
if (intervalSelect) {
  intervalSelect.addEventListener("change", () => {
    intervalKind = intervalSelect.value;
    if (lastEvaluation) renderEvaluation(...lastEvaluation);
  });
}

let drawn = "";

function renderPlots(runs) {
  // Only what the plots show: redraw when an epoch ends or a run's metrics arrive.
  const signature = JSON.stringify(runs.map((r) => [r.id, r.status, lossesOf(r).length, r.epochs, Object.keys(r.metrics || {}).sort()]));
  if (signature === drawn) return;
  drawn = signature;
  const colors = new Map(runs.map((run, i) => [run.id, colorFor(i)]));
  renderLosses(runs, colors);
  if (evaluation) renderEvaluation(runs, colors);
}

// ---------------------------------------------------------------- polling

// A bulk step in batches: items opening for review, or being withdrawn from an ended round.
function renderProgress(progress) {
  const box = document.getElementById("round-progress");
  box.hidden = !progress.step;
  if (!progress.step) return;
  const step = progress.step[0].toUpperCase() + progress.step.slice(1);
  document.getElementById("round-progress-text").textContent =
    `${step} items: ${progress.done} of ${progress.total}`;
  const share = progress.total ? progress.done / progress.total : 0;
  document.getElementById("round-progress-bar").style.width = `${Math.round(share * 100)}%`;
}

// A training round says whether its runs are still queued, training or only predicting now
// (the rounds list says the same, server-side).
function shownStatus(body) {
  const runs = body.runs || [];
  if (body.status === "training" && runs.length) {
    if (runs.every((r) => r.status === "queued")) return { status: "queued", display: "Queued" };
    const open = runs.filter((r) => !["succeeded", "failed", "cancelled"].includes(r.status));
    if (open.length && open.every((r) => r.status === "predicting")) return { status: "predicting", display: "Predicting" };
  }
  return { status: body.status, display: body.status_display };
}

async function refresh() {
  let body;
  try {
    const response = await fetch(api, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`the server answered ${response.status}`);
    body = await response.json();
  } catch (err) {
    failureEl.hidden = false;
    failureEl.textContent = `Could not refresh the round: ${err.message}`;
    return setTimeout(refresh, 5000);
  }
  const shown = shownStatus(body);
  statusEl.textContent = shown.display;
  statusEl.className = `status-pill status-${shown.status}`;
  failureEl.hidden = !body.failure_reason;
  failureEl.textContent = body.failure_reason;
  const colors = new Map(body.runs.map((run, i) => [run.id, colorFor(i)]));
  runsBody.replaceChildren(...body.runs.map((run) => runRow(run, colors.get(run.id))));
  renderStats(body.statistics);
  renderProgress(body.progress || {});
  if (adjudication) {
    adjudication.replaceChildren(...body.adjudication.map((item, i) => {
      const a = text("a", `Break tie ${i + 1}`, "button");
      a.href = item.page_url;
      return a;
    }));
  }
  try {
    renderPlots(body.runs);
  } catch (err) {
    // A plot must never stop the live table from updating.
    console.error("round plots:", err);
  }
  const busy = body.status === "training" || body.status === "reviewing" || body.progress?.step;
  if (busy) setTimeout(refresh, 2000);
}

refresh();
