"""Review and draw page speed in Chromium on a large CXR.

    .venv/bin/python bench/browser_perf.py [--size 3000] [--candidates 5] [--repeats 10]

Sets up a throw-away SQLite database under a temporary folder with one size×size phantom CXR
(plus a small second one: Stage I needs two images) whose blind-review item offers
`--candidates` masks, serves it with `manage.py runserver --noreload` on a free loopback port
and drives Chromium (Playwright, /usr/bin/chromium or $MASKLOOP_CHROMIUM) signed in as an MD.

Prints, per page load:

* review page, measured twice: in the MD's tab (the queue page, then the item, with the HTTP
  cache emptied before each load, so every file is fetched again) and in a new browser
  context per load (a new renderer process as well: a first visit). For each, ms from
  navigation start to `window.maskloopReview.ready` (the item is drawn and the page takes
  keys) and the bytes of image data it loaded for that; `--waterfall` adds the last load's
  requests and the page's marks in order;
* draw page (same image, opened before its round starts): ms to `window.maskloopDraw.ready`
  (the image is decoded; it shows on the next frame), then a long synthetic brush stroke,
  one pointer move per animation frame: the page's own per-segment time (rasterise + upload,
  window.maskloopDraw.perf()), each frame's main-thread work (the move, the page's render,
  rasterising the mask layer), the frames whose work took over 16.7 ms, and the frames that
  came more than 20 ms after the previous one (a missed 60 Hz vsync).

Budget: the review page must be interactive within 300 ms (`--budget-ms`); the exit status is
1 when the median in the MD's tab is over it. Timings are wall-clock with the server, the
browser and this script on one machine: on a busy one they measure the machine too (the load
average is printed).

`--js-from DIR` serves static/js/<name>.js from DIR instead (e.g. an older review.js and
draw.js), to compare two versions of the scripts on the same data.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.benchenv import django_env  # noqa: E402
from tests.browser.helpers import CHROMIUM, CHROMIUM_ARGS  # noqa: E402  (what the tests run)

PASSWORD = "bench-md-pass"
NETWORKS = [
    ("unet", "densenet121"),
    ("unetpp", "densenet121"),
    ("dla", "densenet121"),
    ("unet", "resnet50"),
    ("unetpp", "resnet50"),
    ("dla", "resnet50"),
]

# Records when the page's ready promise resolves, however late the bench asks.
INIT_SCRIPT = """
(() => {
  for (const name of ['maskloopReview', 'maskloopDraw']) {
    let value;
    Object.defineProperty(window, name, {
      configurable: true,
      get() { return value; },
      set(v) {
        value = v;
        const key = '__' + name + 'ReadyAt';
        Promise.resolve(v && v.ready).then(() => { window[key] = performance.now(); },
                                           () => { window[key] = -1; });
      },
    });
  }
})();
"""

RESOURCES_JS = """
(pattern) => performance.getEntriesByType('resource')
  .filter((e) => e.name.includes(pattern))
  .map((e) => ({name: e.name, bytes: e.encodedBodySize || e.transferSize || 0, end: e.responseEnd}))
"""

# Every request of the page, in the order they started: when it was asked for, when its
# request went out, when the first byte came back and when the last did.
WATERFALL_JS = """
() => [
  ...[performance.getEntriesByType('navigation')[0], ...performance.getEntriesByType('resource')]
    .map((e) => ({name: e.name.replace(location.origin, ''), start: e.startTime,
                  request: e.requestStart, first: e.responseStart, end: e.responseEnd})),
  ...performance.getEntriesByType('mark').map((m) => ({name: m.name, start: m.startTime})),
  {name: 'DOMContentLoaded',
   start: performance.getEntriesByType('navigation')[0].domContentLoadedEventStart},
].sort((a, b) => a.start - b.start)
"""

# Waits for the draw page's first frame with the image, then drags one long stroke: one pointer
# move per animation frame, as a hand would, timing each frame.
STROKE_JS = """
async ({moves, brushSteps, zoom}) => {
  await window.maskloopDraw.ready;
  const ui = document.querySelector('.layer-ui');
  const maskCtx = document.querySelector('.layer-mask').getContext('2d');
  const r = ui.getBoundingClientRect();
  const frame = () => new Promise((res) => requestAnimationFrame(res));
  const key = (k) => window.dispatchEvent(new KeyboardEvent('keydown', {key: k}));
  const fire = (type, x, y, buttons) => ui.dispatchEvent(new PointerEvent(type, {
    clientX: r.left + x, clientY: r.top + y, pointerId: 1, pointerType: 'mouse', isPrimary: true,
    button: type === 'pointermove' ? -1 : 0, buttons, bubbles: true, cancelable: true}));
  for (let k = 0; k < brushSteps; k++) key(']');
  if (zoom) key('1');  // 100 %: one image pixel per CSS pixel
  await frame(); await frame();
  const before = window.maskloopDraw.perf().segment.n;
  const composite = [], gaps = [], work = [];
  let last = null, handler = 0;
  fire('pointerdown', r.width * 0.25, r.height * 0.3, 1);
  for (let k = 0; k <= moves; k++) {
    // This callback runs after the page's own animation-frame callbacks (its render of the
    // previous move was requested first); reading one pixel makes the mask layer's pending
    // draw rasterise now, so it is counted in this frame.
    const ts = await frame();
    const start = performance.now();
    if (last !== null) {
      maskCtx.getImageData(0, 0, 1, 1);
      const flushed = performance.now();
      composite.push(flushed - start);
      work.push(handler + (flushed - ts));
      gaps.push(ts - last);
    }
    last = ts;
    if (k === moves) break;
    const x = r.width * (0.25 + 0.5 * k / moves), y = r.height * (0.35 + 0.25 * Math.sin(k / 15));
    const t0 = performance.now();
    fire('pointermove', x, y, 1);
    handler = performance.now() - t0;
  }
  fire('pointerup', 0, 0, 0);
  const perf = window.maskloopDraw.perf();
  return {segments: perf.segment.n - before, gaps, composite, work, perf,
          brush: Number(document.getElementById('brush-size').value),
          scale: window.maskloopDraw.view().scale, on: window.maskloopDraw.maskStats().on};
}
"""


def pct(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_database(size: int, candidates: int):
    import django

    django.setup()
    # The round's training tasks go to the embedded broker, where no worker runs; quiet kombu.
    logging.getLogger("kombu").setLevel(logging.ERROR)
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from annotation import imaging, services
    from annotation.models import ImageClass, Role
    from annotation.phantoms import make_phantom, md_drawing

    users = get_user_model().objects
    md = users.create_user(username="md1", password=PASSWORD)
    services.user_set_roles(user=md, roles=[Role.MD])
    # The masks are another MD's: an MD is never offered an item holding their own mask.
    drawer = users.create_user(username="md2", password=PASSWORD)
    services.user_set_roles(user=drawer, roles=[Role.MD])
    admin = users.create_user(username="boss", password=PASSWORD)
    services.user_set_roles(user=admin, roles=[Role.ADMIN])
    images = []
    for seed, side in ((1, size), (2, 64)):
        p = make_phantom(seed, size=side)
        image = services.image_create(
            data=imaging.encode_png(p.image),
            name=f"bench_{side}.png",
            source="bench",
            image_class=ImageClass.COVID,
            patient_id=f"P{seed}",
        )
        services.mask_draw(
            image=image, author=drawer, data=imaging.encode_mask(md_drawing(p.infection, seed))
        )
        image.truth = p.infection  # type: ignore[attr-defined]  # the phantom's, for the bench
        images.append(image)
    return md, admin, images


def open_review_round(admin, images, candidates: int):
    """Stage I on the two images with `candidates - 1` networks; their 'predictions' are shifted
    copies of the truth, added as the tests add them (through the inference task's services)."""
    import numpy as np

    from annotation import services
    from annotation.models import ReviewItem, Round
    from tests.conftest import finish_runs_with

    rnd = services.round_start(
        stage=Round.Stage.STAGE_I,
        started_by=admin,
        networks=NETWORKS[: candidates - 1],
        folds=2,
        preset="tiny",
    )
    truths = {img.pk: img.truth for img in images}
    order = list(rnd.training_runs.order_by("id").values_list("id", flat=True))

    def shifted(image, run):
        k = order.index(run.pk)
        shift = (k % 5 + 1) * max(1, image.width // 100)
        return np.roll(truths[image.pk], shift, axis=1 - k % 2)

    finish_runs_with(rnd, shifted)
    item = ReviewItem.objects.get(round=rnd, image=images[0])
    assert item.status == ReviewItem.Status.OPEN, item.status
    assert item.candidates.count() == candidates, item.candidates.count()
    return item


@contextlib.contextmanager
def runserver(env: dict, log_path: Path):
    port = free_port()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "runserver",
                "--noreload",
                "--insecure",
                f"127.0.0.1:{port}",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(base + "/accounts/login/", timeout=2).read()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"runserver did not start; see {log_path}") from None
                    time.sleep(0.2)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def signed_in_state(browser, base: str, viewport) -> dict:
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.goto(base + "/accounts/login/")
    page.fill("input[name=username]", "md1")
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("form button[type=submit]")
    assert "/queue/" in page.url, page.url
    state = context.storage_state()
    context.close()
    return state


def serve_file(body: str):
    def handler(route, request):
        route.fulfill(status=200, body=body, content_type="text/javascript")

    return handler


def fresh_page(browser, state, viewport, js_dir: Path | None = None):
    context = browser.new_context(viewport=viewport, storage_state=state)
    context.add_init_script(INIT_SCRIPT)
    for script in sorted(js_dir.glob("*.js")) if js_dir else []:
        context.route(f"**/static/js/{script.name}", serve_file(script.read_text()))
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return context, page, errors


def measure_review(browser, state, viewport, url: str, repeats: int, js_dir=None, *, tab: str):
    """`tab="fresh"`: a new browser context per load (a new renderer process, nothing cached:
    a first visit). `tab="warm"`: one tab that opens the MD's queue and then the item, its HTTP
    cache emptied before each load (an MD going from the queue to an item)."""
    rows = []
    shared = None
    if tab == "warm":
        shared = fresh_page(browser, state, viewport, js_dir)
        cdp = shared[0].new_cdp_session(shared[1])
        cdp.send("Network.enable")
        queue_url = url.split("/review/")[0] + "/queue/"
    for _ in range(repeats):
        if shared:
            context, page, errors = shared
            page.goto(queue_url)
            cdp.send("Network.clearBrowserCache")
        else:
            context, page, errors = fresh_page(browser, state, viewport, js_dir)
        page.goto(url)
        page.wait_for_function("window.__maskloopReviewReadyAt !== undefined", timeout=60_000)
        ready = page.evaluate("window.__maskloopReviewReadyAt")
        nav = page.evaluate(
            "(() => { const n = performance.getEntriesByType('navigation')[0];"
            " return {html: n.responseEnd, dcl: n.domContentLoadedEventEnd}; })()"
        )
        marks = page.evaluate(
            "Object.fromEntries(performance.getEntriesByType('mark').reverse()"
            ".filter((m) => m.name.startsWith('maskloop:')).map((m) => [m.name, m.startTime]))"
        )  # the first of each mark: later ones belong to the next item's prefetch
        decoded = marks.get("maskloop:files", ready)
        fetched = [
            r
            for r in page.evaluate(RESOURCES_JS, "/api/review-items/")
            if ".png" in r["name"] and r["end"] <= decoded
        ]
        # The first item's smallest copies come with the page as data: URIs (base64).
        carried = page.evaluate(
            "Object.entries(JSON.parse(document.getElementById('review-first-images')"
            "?.textContent || '{}')).map(([url, uri]) => ({name: url, bytes: "
            "Math.floor((uri.length - uri.indexOf(',') - 1) * 3 / 4)}))"
        )
        rows.append(
            {
                "waterfall": page.evaluate(WATERFALL_JS),
                "ready": ready,
                "html": nav["html"],
                "dcl": nav["dcl"],
                "json": marks.get("maskloop:item", float("nan")),
                "png": decoded,
                "png_bytes": sum(r["bytes"] for r in fetched + carried),
                "pngs": len(fetched) + len(carried),
                "carried": len(carried),
                "first_pngs": sorted(
                    {r["name"].split("/")[-1] for r in fetched}
                    | {r["name"].split("/")[-1] + " (in the page)" for r in carried}
                ),
            }
        )
        assert not errors, errors
        assert ready > 0, "the review page did not become ready"
        if not shared:
            context.close()
    if shared:
        shared[0].close()
    return rows


def measure_draw(
    browser,
    state,
    viewport,
    url: str,
    repeats: int,
    moves: int,
    brush_steps: int,
    zoom: bool,
    js_dir=None,
):
    rows = []
    for _ in range(repeats):
        context, page, errors = fresh_page(browser, state, viewport, js_dir)
        page.goto(url)
        page.wait_for_function("window.__maskloopDrawReadyAt !== undefined", timeout=60_000)
        ready = page.evaluate("window.__maskloopDrawReadyAt")
        result = page.evaluate(STROKE_JS, {"moves": moves, "brushSteps": brush_steps, "zoom": zoom})
        resources = page.evaluate(RESOURCES_JS, "/display.png")
        dcl = page.evaluate(
            "performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
        )
        rows.append(
            {
                "ready": ready,
                "dcl": dcl,
                "image": min((r["end"] for r in resources), default=float("nan")),
                "png_bytes": sum(r["bytes"] for r in resources),
                **result,
            }
        )
        assert not errors, errors
        context.close()
    return rows


def print_review(review: list[dict], title: str, budget_ms: float, waterfall: bool) -> None:
    print(f"{title}:\nnavigation start → window.maskloopReview.ready (item drawn, keys live)")
    print(
        f"{'load':>5} {'html':>6} {'DCL':>6} {'item':>6} {'images':>7} {'ready':>6} "
        f"{'PNGs':>5} {'in page':>8} {'PNG MB':>7}   (ms since navigation start)"
    )
    for k, r in enumerate(review, start=1):
        print(
            f"{k:>5} {r['html']:>6.0f} {r['dcl']:>6.0f} {r['json']:>6.0f} {r['png']:>7.0f} "
            f"{r['ready']:>6.0f} {r['pngs']:>5} {r['carried']:>8} {r['png_bytes'] / 1e6:>7.2f}"
        )
    ready = [r["ready"] for r in review]
    print(
        f"ready: p50 {statistics.median(ready):.0f} ms, p95 {pct(ready, 0.95):.0f} ms, "
        f"min {min(ready):.0f} ms, max {max(ready):.0f} ms (budget {budget_ms:.0f} ms)"
    )
    print("loaded before ready: " + ", ".join(review[-1]["first_pngs"]))
    if waterfall:
        print(f"last load's requests and marks (ready at {review[-1]['ready']:.0f} ms):")
        print(f"{'asked':>7} {'sent':>7} {'first':>7} {'last':>7}  url")
        for r in review[-1]["waterfall"]:
            if "end" not in r:  # a mark or an event
                print(f"{r['start']:>7.0f} {'':>7} {'':>7} {'':>7}  ({r['name']})")
                continue
            print(
                f"{r['start']:>7.0f} {r['request']:>7.0f} {r['first']:>7.0f} "
                f"{r['end']:>7.0f}  {r['name'][:90]}"
            )
    print(
        "html: HTML received (the item's data and smallest images come with it); DCL: "
        "DOMContentLoaded (the page's scripts have run);\nitem: the item's data parsed; images: "
        "its images decoded; ready: the item drawn and keys live;\nPNGs: the images it drew "
        "from, of which 'in page' came with the HTML; PNG MB: their size.\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=3000, help="phantom side in pixels")
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--moves", type=int, default=240, help="pointer moves per stroke")
    parser.add_argument("--viewport", default="1366x768")
    parser.add_argument("--budget-ms", type=float, default=300.0)
    parser.add_argument("--pages", default="review,draw", help="which pages to measure")
    parser.add_argument("--keep", action="store_true", help="keep the temporary database")
    parser.add_argument(
        "--waterfall", action="store_true", help="print the last review load's requests"
    )
    parser.add_argument(
        "--js-from",
        type=Path,
        default=None,
        help="serve static/js/<name>.js from this folder instead (to compare two versions)",
    )
    args = parser.parse_args()
    if not 2 <= args.candidates <= len(NETWORKS) + 1:
        parser.error(f"--candidates must be 2..{len(NETWORKS) + 1}")
    vw, vh = (int(v) for v in args.viewport.lower().split("x"))
    viewport = {"width": vw, "height": vh}

    tmp = tempfile.mkdtemp(prefix="maskloop-browser-bench-")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "MASKLOOP_MEDIA_ROOT")
    }
    # Its second phantom is 64 px: screening at import would hold it out of the round.
    env.update(MASKLOOP_VAR_DIR=tmp, PYTHONUNBUFFERED="1", MASKLOOP_SCREEN_MIN_SIDE="32")
    os.environ.clear()
    os.environ.update(env)
    env.update(django_env())
    # The round is opened from this process while Playwright's loop runs in this thread.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

    try:
        return measure(args, tmp, env, viewport)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def measure(args, tmp: str, env: dict, viewport: dict) -> int:
    t0 = time.perf_counter()
    md, admin, images = setup_database(args.size, args.candidates)
    big = images[0]
    print(
        f"set up {args.size}×{args.size} phantom in {time.perf_counter() - t0:.1f} s "
        f"(database and media under {tmp}{'' if args.keep else ', removed at the end'})"
    )

    from playwright.sync_api import sync_playwright

    with runserver(env, Path(tmp) / "runserver.log") as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        state = signed_in_state(browser, base, viewport)
        draw_fit = draw_100 = []
        if "draw" in args.pages:
            draw_fit = measure_draw(
                browser,
                state,
                viewport,
                f"{base}/draw/{big.pk}/",
                args.repeats,
                args.moves,
                brush_steps=8,
                zoom=False,
                js_dir=args.js_from,
            )
            draw_100 = measure_draw(
                browser,
                state,
                viewport,
                f"{base}/draw/{big.pk}/",
                max(2, args.repeats // 3),
                args.moves,
                brush_steps=8,
                zoom=True,
                js_dir=args.js_from,
            )
        reviews = {}
        if "review" in args.pages:
            item = open_review_round(admin, images, args.candidates)
            for tab in ("warm", "fresh"):
                reviews[tab] = measure_review(
                    browser,
                    state,
                    viewport,
                    f"{base}/review/{item.uuid}/",
                    args.repeats,
                    js_dir=args.js_from,
                    tab=tab,
                )
        browser.close()

    print(f"load average: {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(
        f"\nChromium {viewport['width']}×{viewport['height']}, CXR {args.size}×{args.size}, "
        f"{args.candidates} candidates, {args.repeats} loads each"
        + (f", scripts from {args.js_from}" if args.js_from else "")
        + "\n"
    )
    titles = {
        "warm": "in the MD's tab (queue page → item; HTTP cache emptied before each load)",
        "fresh": "in a new browser context each load (new renderer process, nothing cached)",
    }
    for tab, review in reviews.items():
        print_review(review, f"Review page {titles[tab]}", args.budget_ms, args.waterfall)

    if draw_fit:
        print("\nDraw page: long brush stroke, one pointer move per animation frame")
        print(
            f"{'view':>5} {'brush':>6} {'DCL':>5} {'image':>6} {'ready':>6} {'PNG MB':>7} "
            f"{'segments':>9} "
            f"{'seg p50':>8} {'seg p95':>8} {'frame p50':>10} {'frame p95':>10} {'>16.7ms':>8} "
            f"{'missed':>7} {'frames':>7}"
        )
        for name, rows in (("fit", draw_fit), ("100%", draw_100)):
            ready = statistics.median(r["ready"] for r in rows)
            dcl = statistics.median(r["dcl"] for r in rows)
            image = statistics.median(r["image"] for r in rows)
            work = [v for r in rows for v in r["work"]]
            gaps = [v for r in rows for v in r["gaps"]]
            p50 = statistics.median(r["perf"]["segment"]["p50Ms"] for r in rows)
            p95 = statistics.median(r["perf"]["segment"]["p95Ms"] for r in rows)
            segments = sum(r["segments"] for r in rows)
            slow = sum(1 for w in work if w > 1000 / 60)
            missed = sum(1 for g in gaps if g > 20.0)
            brush = rows[0]["brush"]
            print(
                f"{name:>5} {brush:>6} {dcl:>5.0f} {image:>6.0f} {ready:>6.0f} "
                f"{rows[0]['png_bytes'] / 1e6:>7.2f} "
                f"{segments:>9} {p50:>8.2f} {p95:>8.2f} {pct(work, 0.5):>10.2f} "
                f"{pct(work, 0.95):>10.2f} {slow:>8} {missed:>7} {len(work):>7}"
            )
        print(
            "DCL / image / ready: median ms from navigation start to DOMContentLoaded, the "
            "first display copy received, window.maskloopDraw.ready;\nPNG MB: display image "
            "data loaded in all (at 100 % the full-resolution copy follows the zoom)"
        )
        print(
            "seg: the page's own time per pointer move (rasterise the brush + upload), p50/p95 "
            "the median over loads\nframe: main-thread work of a frame (the move's handler, the "
            "page's render, rasterising the mask layer)\n>16.7ms: frames whose work exceeded "
            "16.7 ms; missed: frames more than 20 ms after the previous one"
        )
    if not reviews:
        return 0
    return 0 if statistics.median(r["ready"] for r in reviews["warm"]) <= args.budget_ms else 1


if __name__ == "__main__":
    sys.exit(main())
