// The notes panel (templates/annotation/_image_notes.html): the image's flags as checkboxes
// that save when ticked, its comments, and a box to add one. Comments are appended, never
// edited. An MD sees only their own notes; admins see everyone's.
import { csrfToken, errorText, networkMessage } from "./common.js";

const panel = document.getElementById("image-notes");

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function render(notes) {
  const flags = panel.querySelector(".notes-flags");
  flags.replaceChildren();
  for (const f of notes.flags) {
    const box = el("input", { type: "checkbox", checked: f.mine, name: "flag", value: f.flag });
    box.addEventListener("change", () => send({ flags: { [f.flag]: box.checked } }));
    const label = el("label", { className: "check" }, box, ` ${f.name}`);
    if (notes.see_all && f.set_by.length) label.append(el("small", { className: "muted" }, ` (${f.set_by.join(", ")})`));
    flags.append(label);
  }
  const list = panel.querySelector(".notes-comments");
  list.replaceChildren(
    ...notes.comments
      .slice()
      .reverse()
      .map((c) =>
        el(
          "li",
          {},
          el("div", { className: "muted" }, `${c.by} · ${new Date(c.created_at).toLocaleString()}`),
          el("div", { className: "notes-text" }, c.text),
        ),
      ),
  );
  const count = panel.querySelector("#notes-count");
  const flagged = notes.flags.filter((f) => (notes.see_all ? f.set_by.length : f.mine)).length;
  const n = notes.comments.length;
  const parts = [n && `${n} comment${n === 1 ? "" : "s"}`, flagged && `${flagged} flag${flagged === 1 ? "" : "s"}`];
  count.textContent = parts.filter(Boolean).join(" · ");
  count.hidden = !n && !flagged;
  panel.querySelector("#notes-who").textContent = notes.see_all
    ? "You see everyone's notes. Comments are kept as written: a correction is a new comment."
    : "Only you and the admins see your notes. Comments are kept as written: a correction is a new comment.";
}

function say(text) {
  panel.querySelector("#notes-status").textContent = text;
}

async function send(body) {
  say("Saving…");
  try {
    const response = await fetch(panel.dataset.notesUrl, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify(body),
    });
    if (!response.ok) throw new Error(await errorText(response));
    render(await response.json());
    say(body.comment ? "Comment added." : "Flags saved.");
    return true;
  } catch (err) {
    say(networkMessage(err));
    return false;
  }
}

async function load() {
  try {
    const response = await fetch(panel.dataset.notesUrl, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(await errorText(response));
    render(await response.json());
  } catch (err) {
    say(networkMessage(err));
  }
}

if (panel) {
  const text = panel.querySelector("#notes-text");
  const add = async () => {
    if (!text.value.trim()) {
      say("Write a comment first.");
      return;
    }
    if (await send({ comment: text.value })) text.value = "";
  };
  panel.querySelector("#notes-add").addEventListener("click", add);
  // Keys pressed in the panel are its own, not the page's shortcuts (Enter must not pick a
  // candidate on the review page); Ctrl+Enter in the box adds the comment.
  panel.addEventListener("keydown", (event) => event.stopPropagation());
  text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      add();
    }
  });
  load();
}
