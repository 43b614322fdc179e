// Live round dashboard: polls the round's API and redraws the run table and statistics.
const script = document.currentScript || document.querySelector("script[data-api]");
const api = script.dataset.api;
const runsBody = document.querySelector("#runs tbody");
const statsList = document.getElementById("stats");
const statusEl = document.getElementById("round-status");
const failureEl = document.getElementById("round-failure");
const adjudication = document.getElementById("adjudication");

const pct = (x) => `${Math.round(x * 100)}%`;
const fmt = (x, digits = 3) => (x === null || x === undefined ? "—" : Number(x).toFixed(digits));

function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value;
  if (cls) el.className = cls;
  return el;
}

function runRow(run) {
  const tr = document.createElement("tr");
  tr.dataset.run = run.id;
  tr.append(text("td", `${run.arch} · ${run.encoder}`));
  tr.append(text("td", run.fold === null ? "all" : String(run.fold + 1)));
  tr.append(text("td", run.status_display, `status-${run.status}`));
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
  const detail = run.status === "training" ? `epoch ${run.epoch}/${run.epochs}, step ${run.step}/${run.steps}` : pct(run.progress);
  cell.append(text("small", detail, "muted"));
  tr.append(cell);
  tr.append(text("td", fmt(run.loss)));
  tr.append(text("td", `${run.predicted}/${run.targets}`));
  const notes = run.failure_reason || (run.metrics.held_out_dice_vs_manual != null ? `held-out Dice vs MD ${fmt(run.metrics.held_out_dice_vs_manual)}` : "");
  tr.append(text("td", notes, run.failure_reason ? "error" : "muted"));
  return tr;
}

function renderStats(s) {
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
  statusEl.textContent = body.status_display;
  statusEl.className = `status-${body.status}`;
  failureEl.hidden = !body.failure_reason;
  failureEl.textContent = body.failure_reason;
  runsBody.replaceChildren(...body.runs.map(runRow));
  renderStats(body.statistics);
  adjudication.replaceChildren(...body.adjudication.map((item, i) => {
    const a = text("a", `Break tie ${i + 1}`, "button");
    a.href = item.page_url;
    return a;
  }));
  if (body.status === "training" || body.status === "reviewing") setTimeout(refresh, 2000);
}

refresh();
