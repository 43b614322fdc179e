"""Prediction and training speed per architecture (DenseNet-121 encoder): prints figures.

    python bench/predict_bench.py            # 224 px, as the paper's Table VIII
    python bench/predict_bench.py --quick    # 64 px, fewer repeats: a smoke run

For each of U-Net, UNet++ and DLA it measures, after warm-up, the median of N repeats of:

- forward ms/image at batch 1 and batch 16, with the network compiled once as a
  ``tf.function`` (fixed input signature), and eagerly (``model(x)``, what
  ``training.nets.predict`` calls) for comparison;
- the full predict path for one CXR: decode a PNG from bytes, preprocess (resize to the
  network input), forward at batch 1, resize the probability back to the CXR's size,
  ``inference.maps.infection_map`` and ``inference.maps.detect``; each non-network stage is
  also timed alone, to show where the overhead is;
- one training step at batch 8 (hybrid loss, Adam).

The goal is a full path within 1.3× the bare forward at batch 1, both measured in the same
run; the ratio is printed per architecture. A benchmark, not a test: no assertion.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import training.nets  # noqa: E402,F401  (environment for segmentation_models / tf.keras)

GOAL = 1.3


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(times)


def cxr_png(size: int, seed: int = 3) -> tuple[bytes, np.ndarray]:
    """A synthetic CXR phantom encoded as PNG (8-bit gray), and its pixels."""
    from annotation.phantoms import make_phantom

    gray = make_phantom(seed, size=size).image
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="PNG")
    return buf.getvalue(), gray


def lut_infection_map_factory() -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """What `infection_map` could cost for a grayscale CXR: one 256 × 256 RGB table lookup.

    Hue and saturation depend only on the jet index of the probability, value only on the
    CXR's gray level, so every output colour is one of 256 × 256, computable up front with
    inference.maps' own HSV functions (the result is compared with infection_map below).
    """
    from inference.maps import colour

    jet_hsv = colour._JET_HSV  # (256, 3)
    value = np.arange(256, dtype=np.float64) / 255.0
    h = np.broadcast_to(jet_hsv[:, None, 0], (256, 256))
    s = np.broadcast_to(jet_hsv[:, None, 1], (256, 256))
    v = np.broadcast_to(value[None, :], (256, 256))
    lut = np.clip(np.rint(colour._hsv_to_rgb(h, s, v) * 255.0), 0, 255).astype(np.uint8)

    def lut_map(gray: np.ndarray, prob: np.ndarray, epsilon: float = 0.02) -> np.ndarray:
        # prob is float32 in [0, 1] at the CXR's size; * 256 is exact, so this is floor().
        index = np.minimum((prob * 256).astype(np.intp), 255)
        out = lut[index, gray]
        keep = prob < epsilon
        out[keep] = gray[keep, None]
        return out

    return lut_map


def bench_arch(arch: str, encoder: str, size: int, png: bytes, repeats: int) -> tuple:
    """(arch, build s, forward b1, forward b16 per image, eager b1, full path, ratio, train)."""
    import tensorflow as tf

    from inference.maps import detect, infection_map
    from training.nets.builders import build_model
    from training.nets.data import load_gray, preprocess, resize_probability
    from training.nets.losses import hybrid_loss

    tf.keras.backend.clear_session()
    started = time.perf_counter()
    model = build_model(arch, encoder, input_size=size)
    build_s = time.perf_counter() - started
    # Traced once for any batch size: what a prediction service runs.
    forward = tf.function(
        lambda t: model(t, training=False),
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)],
    )

    def fwd(x: np.ndarray) -> np.ndarray:
        return forward(tf.constant(x)).numpy()

    x1 = preprocess(load_gray(io.BytesIO(png)), size)[None]
    x16 = np.repeat(x1, 16, axis=0)
    fwd_1 = median_ms(lambda: fwd(x1), repeats, warmup=2)
    fwd_16 = median_ms(lambda: fwd(x16), max(repeats // 2, 2), warmup=1) / 16
    eager_1 = median_ms(lambda: model(x1, training=False).numpy(), repeats, warmup=2)

    def full_path() -> bool:
        g = load_gray(io.BytesIO(png))
        prob = fwd(preprocess(g, size)[None])[0, ..., 0]
        p = resize_probability(prob, *g.shape)
        infection_map(g, p)
        return detect(prob)

    full = median_ms(full_path, repeats, warmup=2)

    model.compile(optimizer=tf.keras.optimizers.Adam(1e-4), loss=hybrid_loss)
    rng = np.random.default_rng(1)
    xb = rng.random((8, size, size, 3), dtype=np.float32)
    yb = (rng.random((8, size, size, 1)) > 0.9).astype(np.float32)
    train = median_ms(lambda: model.train_on_batch(xb, yb), max(repeats // 2, 2), warmup=1)
    return (arch, build_s, fwd_1, fwd_16, eager_1, full, full / fwd_1, train)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 px and few repeats")
    parser.add_argument("--size", type=int, help="network input side (default 224; quick 64)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        dest="image_size",
        help="side of the source CXR PNG (default 256, COVID-QU-Ex's size)",
    )
    parser.add_argument("--repeats", type=int, help="timed repeats per figure")
    parser.add_argument("--archs", nargs="+", default=["unet", "unetpp", "dla"])
    parser.add_argument("--encoder", default="densenet121")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from inference.maps import detect, infection_map
    from training.nets.data import load_gray, preprocess, resize_probability

    size = args.size or (64 if args.quick else 224)
    image_size = args.image_size or 256
    repeats = args.repeats or (3 if args.quick else 10)
    png, _ = cxr_png(image_size)

    print(
        f"# predict_bench: {args.encoder} encoder, input {size}x{size}, source PNG "
        f"{image_size}x{image_size} ({len(png) / 1024:.0f} KiB), median of {repeats}"
    )
    print(
        f"# TF {tf.__version__}, {os.cpu_count()} CPU(s), GPUs: "
        f"{len(tf.config.list_physical_devices('GPU'))}, Python {platform.python_version()}"
    )

    # The non-network stages do not depend on the architecture: time them once.
    gray = load_gray(io.BytesIO(png))
    prob_small = np.random.default_rng(0).random((size, size), dtype=np.float32)
    prob_full = resize_probability(prob_small, *gray.shape)
    lut_map = lut_infection_map_factory()
    same = np.array_equal(lut_map(gray, prob_full), infection_map(gray, prob_full))
    stages = {
        "decode PNG": lambda: load_gray(io.BytesIO(png)),
        "preprocess": lambda: preprocess(gray, size),
        "resize back": lambda: resize_probability(prob_small, *gray.shape),
        "infection_map": lambda: infection_map(gray, prob_full),
        "detect": lambda: detect(prob_full),
    }
    stage_ms = {name: median_ms(fn, max(repeats, 10), warmup=2) for name, fn in stages.items()}
    lut_ms = median_ms(lambda: lut_map(gray, prob_full), max(repeats, 10), warmup=2)
    print("\n## Non-network stages, ms/image")
    for name, ms in stage_ms.items():
        print(f"  {name:<14} {ms:8.2f}")
    print(f"  {'total':<14} {sum(stage_ms.values()):8.2f}")
    print(
        f"  (infection_map as one 256x256 colour-table lookup: {lut_ms:.2f} ms, "
        f"{stage_ms['infection_map'] / lut_ms:.0f}x faster, identical output: {same})"
    )

    rows = []
    for arch in args.archs:
        row = bench_arch(arch, args.encoder, size, png, repeats)
        rows.append(row)
        _, build_s, fwd_1, fwd_16, eager_1, full, ratio, train = row
        print(
            f"\n## {arch}: built in {build_s:.1f} s; forward b1 {fwd_1:.1f} ms, b16 "
            f"{fwd_16:.1f} ms/img, eager b1 {eager_1:.1f} ms; full path {full:.1f} ms "
            f"(ratio {ratio:.2f}); train step b8 {train:.0f} ms",
            flush=True,
        )

    print(f"\n## Summary ({size} px, ms)")
    print(
        "| arch | forward b1 | forward b16 /img | eager b1 | full path b1 | full/forward "
        "| train step b8 |"
    )
    print("|---|---|---|---|---|---|---|")
    for arch, _, f1, f16, e1, full, ratio, train in rows:
        verdict = "ok" if ratio <= GOAL else f"> {GOAL}"
        print(
            f"| {arch} | {f1:.1f} | {f16:.1f} | {e1:.1f} | {full:.1f} | {ratio:.2f} "
            f"({verdict}) | {train:.0f} |"
        )
    overhead = sum(stage_ms.values())
    print(
        f"\nNon-network stages add {overhead:.1f} ms/image "
        f"(largest: {max(stage_ms, key=lambda k: stage_ms[k])} "
        f"{max(stage_ms.values()):.1f} ms)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
