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
