// Refreshes the export history while any export is still being built.
const table = document.getElementById("exports");

async function poll() {
  const pending = [...table.querySelectorAll("tr[data-uuid]")].filter(
    (tr) => !tr.querySelector(".status a, .status .error") && !tr.querySelector(".status").textContent.includes("Ready"),
  );
  if (!pending.length) return;
  const response = await fetch(table.dataset.api, { headers: { Accept: "application/json" } });
  if (response.ok) {
    const exports = await response.json();
    const byId = Object.fromEntries(exports.map((e) => [e.uuid, e]));
    for (const tr of pending) {
      const e = byId[tr.dataset.uuid];
      if (!e) continue;
      if (e.status === "done" || e.status === "failed") {
        window.location.reload();
        return;
      }
      const state = tr.querySelector(".state");
      if (state) state.textContent = e.status === "running" ? "Building" : "Queued";
      if (e.status === "running") tr.querySelector(".count").textContent = e.image_count;
      const bar = tr.querySelector(".bar");
      if (bar) bar.style.width = `${Math.round(e.progress * 100)}%`;
    }
  }
  setTimeout(poll, 1500);
}

poll();

// The preview: what the export will hold with the filters as they stand, asked again on every
// change (annotation/apis/exports.py ExportPreviewApi).
const form = document.getElementById("export-form");
let asked = 0;

function previewQuery() {
  const data = new FormData(form);
  const params = new URLSearchParams();
  const round = data.get("round");
  if (round) params.set("round", round);
  const classes = data.getAll("classes");
  if (classes.length) params.set("classes", classes.join(","));
  params.set("accepted_only", data.get("accepted_only") ? "true" : "false");
  return params;
}

async function preview() {
  const ticket = ++asked;
  const count = document.getElementById("preview-count");
  count.textContent = "…";
  let body;
  try {
    const response = await fetch(`${form.dataset.previewApi}?${previewQuery()}`, {
      headers: { Accept: "application/json" },
    });
    body = await response.json();
    if (!response.ok) throw new Error(body.detail || `The server answered ${response.status}.`);
  } catch (err) {
    if (ticket === asked) count.textContent = `nothing yet: ${err.message}`;
    return;
  }
  if (ticket !== asked) return; // a newer change asked again
  count.textContent = `${body.images} image${body.images === 1 ? "" : "s"}`;
  document.getElementById("preview-filters").textContent = body.filters_text;
  // One row per mask source, one column per class: narrow enough for the form's column.
  const cell = (tag, text) => Object.assign(document.createElement(tag), { textContent: text });
  const head = document.querySelector("#preview-table thead tr");
  head.replaceChildren(cell("th", "Mask"), ...body.rows.map((r) => cell("th", r.label)), cell("th", "Total"));
  const tbody = document.querySelector("#preview-table tbody");
  tbody.replaceChildren();
  const sources = Object.entries(body.sources).filter(([s]) => s !== "none" || body.totals.none);
  for (const [source, label] of [...sources, ["total", "All"]]) {
    const tr = document.createElement("tr");
    tr.append(cell("th", label), ...body.rows.map((r) => cell("td", r[source])), cell("td", body.totals[source]));
    if (source === "total") tr.className = "total";
    tbody.append(tr);
  }
  const ul = document.getElementById("preview-left-out");
  ul.replaceChildren();
  const lines = body.left_out.length ? body.left_out.map((l) => `Left out: ${l.text}.`) : ["Nothing is left out."];
  for (const text of lines) {
    const li = document.createElement("li");
    li.textContent = text;
    ul.append(li);
  }
}

if (form) {
  form.addEventListener("change", preview);
  preview();
}
