// Helpers the drawing and review pages share: numbers, the CSRF token, the server's errors in
// words, data the page carries, and window / level on the CXR.
//
// Plain ES2020, no dependencies: the app runs offline.

export function clamp(v, lo, hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

export function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  if (match) return decodeURIComponent(match[1]);
  const input = document.querySelector("input[name=csrfmiddlewaretoken]");
  return input ? input.value : "";
}

/** The server's reason for a failed request, in its own words where it gave some. */
export async function errorText(response) {
  try {
    const body = await response.json();
    if (body && typeof body.detail === "string") return body.detail;
    if (body && typeof body === "object") {
      return Object.entries(body)
        .map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(" ") : v}`)
        .join("; ");
    }
  } catch (err) {
    // not JSON: fall through to the status line
  }
  return `The server answered ${response.status} ${response.statusText || ""}`.trim() + ".";
}

/** A failed fetch in words: a TypeError means the request never got an answer. */
export function networkMessage(err) {
  return err instanceof TypeError ? "Could not reach the server. Check the connection and try again." : err.message;
}

/** The JSON a page carries in <script type="application/json" id=…> (json_script). */
export function readJsonScript(id, fallback) {
  const el = document.getElementById(id);
  if (!el) return fallback;
  try {
    return JSON.parse(el.textContent);
  } catch (err) {
    return fallback;
  }
}

/** Window / level through an SVG filter's linear transfer on R, G and B (templates/annotation/
 * _window_level_filter.html): grey values in [level - width/2, level + width/2] (0..1 of the
 * 8-bit range) are stretched over the whole display range. Display only: the data stays.
 * Returns true when the transfer is the identity, so the filter can be left off. */
export function setWindowLevelFilter(filter, level, width) {
  const slope = 1 / width;
  const intercept = -(level - width / 2) / width;
  for (const f of filter.querySelectorAll("feFuncR, feFuncG, feFuncB")) {
    f.setAttribute("slope", slope.toFixed(5));
    f.setAttribute("intercept", intercept.toFixed(5));
  }
  return Math.abs(width - 1) < 1e-6 && Math.abs(level - 0.5) < 1e-6;
}
