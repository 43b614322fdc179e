// The web import: sends the files with XHR (fetch has no upload progress), shows the upload's
// progress, then follows the import on the worker (files done / total) and opens its report.
import { csrfToken } from "./common.js";

const form = document.getElementById("import-form");
const box = document.getElementById("import-progress");
const uploadBar = document.getElementById("upload-bar");
const uploadText = document.getElementById("upload-text");
const importBar = document.getElementById("import-bar");
const importText = document.getElementById("import-text");
const statusLine = document.getElementById("import-status");
const startButton = document.getElementById("import-start");
const POLL_MS = 700;
const FINISHED_MS = 1200;

function setStatus(text, kind = "") {
  statusLine.textContent = text;
  statusLine.className = `statusline ${kind}`.trim();
}

function mib(bytes) {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/** The server's reason for a refusal, in its own words where it gave some. */
function reason(xhr) {
  try {
    const body = JSON.parse(xhr.responseText);
    if (body && typeof body.detail === "string") return body.detail;
    if (body && typeof body === "object") {
      return Object.entries(body)
        .map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(" ") : v}`)
        .join("; ");
    }
  } catch (err) {
    // not JSON
  }
  return `The server answered ${xhr.status} ${xhr.statusText || ""}`.trim() + ".";
}

/** [file, path] of what was chosen: the zip, else the files, else the folder's files. */
function chosen() {
  const zip = form.querySelector("#import-zip").files;
  if (zip.length) return [[zip[0], zip[0].name]];
  const files = form.querySelector("#import-files").files;
  if (files.length) return [...files].map((f) => [f, f.name]);
  const folder = form.querySelector("#import-folder").files;
  return [...folder].map((f) => [f, f.webkitRelativePath || f.name]);
}

function showImport(job) {
  const total = job.total || 0;
  const share = total ? job.done / total : 0;
  importBar.style.width = `${Math.round(share * 100)}%`;
  importText.textContent = total ? `${job.done} / ${total} files` : "";
  if (job.status === "queued") setStatus("Uploaded. Waiting for a worker to start the import…");
  else if (job.status === "running") setStatus(total ? `Importing: ${job.done} of ${total} files read.` : "Unpacking…");
}

async function follow(statusUrl) {
  for (;;) {
    let job;
    try {
      const response = await fetch(statusUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!response.ok) throw new Error(`The server answered ${response.status} while following the import.`);
      job = await response.json();
    } catch (err) {
      setStatus(`${err.message} Retrying…`, "error");
      await new Promise((r) => setTimeout(r, POLL_MS * 3));
      continue;
    }
    showImport(job);
    if (job.status === "done" || job.status === "failed") {
      if (job.status === "done") importBar.style.width = "100%";
      setStatus(job.status === "done" ? "Import finished. Opening its report…" : "The import failed. Opening why…", job.status === "done" ? "notice" : "error");
      // A moment on the finished bar, then the report (kept on the job's own page).
      setTimeout(() => window.location.assign(job.page_url), FINISHED_MS);
      return;
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const files = chosen();
  if (!files.length) {
    box.hidden = false;
    setStatus("Choose a .zip of a folder, several files, or a folder to import.", "error");
    return;
  }
  const most = Number(form.dataset.maxFiles) || Infinity;
  if (files.length > most) {
    box.hidden = false;
    setStatus(`${files.length} files chosen; one upload takes at most ${most}. Zip the folder and send the .zip instead.`, "error");
    return;
  }
  const data = new FormData();
  for (const [file, path] of files) {
    data.append("files", file, file.name);
    data.append("paths", path);
  }
  data.append("image_class", form.querySelector("#import-class").value);
  data.append("source", form.querySelector("#import-source").value);
  const total = files.reduce((n, [f]) => n + f.size, 0);

  box.hidden = false;
  startButton.disabled = true;
  uploadBar.style.width = "0%";
  importBar.style.width = "0%";
  importText.textContent = "";
  setStatus(`Uploading ${files.length} file(s), ${mib(total)}…`);

  const xhr = new XMLHttpRequest();
  xhr.open("POST", form.dataset.api);
  xhr.setRequestHeader("X-CSRFToken", csrfToken());
  xhr.setRequestHeader("Accept", "application/json");
  xhr.upload.addEventListener("progress", (ev) => {
    if (!ev.lengthComputable) return;
    uploadBar.style.width = `${Math.round((ev.loaded / ev.total) * 100)}%`;
    uploadText.textContent = `${mib(ev.loaded)} / ${mib(ev.total)}`;
  });
  xhr.addEventListener("load", () => {
    if (xhr.status !== 202) {
      startButton.disabled = false;
      setStatus(`Not imported: ${reason(xhr)}`, "error");
      return;
    }
    uploadBar.style.width = "100%";
    const job = JSON.parse(xhr.responseText);
    box.dataset.job = job.uuid;
    showImport(job);
    follow(job.status_url);
  });
  xhr.addEventListener("error", () => {
    startButton.disabled = false;
    setStatus("Could not reach the server; nothing was imported. Check the connection and try again.", "error");
  });
  xhr.send(data);
});

// A job's page opened while it still runs: follow it there too.
const running = document.querySelector("[data-testid=import-running]");
if (running) {
  box.hidden = false;
  uploadBar.style.width = "100%";
  follow(running.dataset.statusUrl);
}
