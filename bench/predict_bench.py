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
run; the ratio is printed per architecture.

Then one prediction shard of ``--shard`` source PNGs (files on disk, as a local storage
holds them) through the first architecture, in images per second, against the bare forward
of the same inputs at the same batch size (8):

- "sequential, eager": the inference worker's loop before the shards (13f5048): decode,
  ``predict_probabilities`` (eager Keras call), resize back, threshold, 8-bit PNG, write;
- "sequential, traced": the same stages one after the other, traced forward;
- "pipelined": ``training.nets.predict.predict_pipelined`` as ``inference.services`` runs
  it: decode and preprocess of the next batches and resize back, threshold, PNG and write
  of the previous ones in a thread pool while the network runs.

``--maps`` also draws each image's infection map in the shard (what uploads get; Stage II
prediction does not draw them). The goal is a shard within 1.3× the bare forward.
A benchmark, not a test: no assertion.

    python bench/predict_bench.py --image-size 1024 --archs unet
    python bench/predict_bench.py --image-size 3000 --archs unet --shard 16
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


def bench_shard(
    arch: str, encoder: str, size: int, png: bytes, count: int, repeats: int, maps: bool
) -> dict[str, float]:
    """Seconds for one shard of `count` copies of `png`, by path (see the module's doc)."""
    import tempfile

    import tensorflow as tf

    from annotation import imaging
    from inference.maps import infection_map
    from training.nets.builders import build_model
    from training.nets.config import TrainConfig
    from training.nets.data import load_gray, preprocess, resize_probability
    from training.nets.detection import THRESHOLD
    from training.nets.predict import (
        Member,
        mask_png,
        predict_pipelined,
        predict_probabilities,
        predicted_mask,
    )

    tf.keras.backend.clear_session()
    model = build_model(arch, encoder, input_size=size)
    config = TrainConfig(arch=arch, encoder=encoder, input_size=size)
    member = Member(config, Path("unused"), model)
    member.predict(np.zeros((8, size, size, 3), np.float32), graph=True)  # traced once
    folder = Path(tempfile.mkdtemp(prefix="predict-shard-"))
    paths = []
    for i in range(count):
        paths.append(folder / f"cxr-{i}.png")
        paths[-1].write_bytes(png)
    out = folder / "out"
    out.mkdir()
    batch = 8

    def write(i: int, data: bytes) -> None:
        (out / f"mask-{i}.png").write_bytes(data)

    def bare() -> None:
        xs = np.stack([preprocess(load_gray(p), size) for p in paths[:batch]])
        for start in range(0, count, batch):
            member.predict(xs[: min(batch, count - start)], graph=True)

    def sequential_eager() -> None:
        for start in range(0, count, 32):  # the old REPORT_EVERY
            chunk = paths[start : start + 32]
            grays = [load_gray(p) for p in chunk]
            for i, (gray, prob) in enumerate(
                zip(grays, predict_probabilities(model, iter(grays), size=size), strict=True)
            ):
                mask = prob >= THRESHOLD
                write(start + i, imaging.encode_mask(mask))
                if maps:
                    infection_map(gray, prob)

    def finish(i: int, gray: np.ndarray, prob: np.ndarray) -> None:
        write(i, mask_png(predicted_mask(prob, *gray.shape)))
        if maps:
            infection_map(gray, resize_probability(prob, *gray.shape))

    def sequential_traced() -> None:
        for start in range(0, count, batch):
            chunk = range(start, min(start + batch, count))
            grays = [load_gray(paths[i]) for i in chunk]
            probs = member.predict(np.stack([preprocess(g, size) for g in grays]), graph=True)
            for i, gray, prob in zip(chunk, grays, probs, strict=True):
                finish(i, gray, prob)

    def pipelined() -> None:
        for _ in predict_pipelined(
            lambda x: member.predict(x, graph=True),
            range(count),
            load=lambda i: load_gray(paths[i]),
            finish=finish,
            size=size,
            batch_size=batch,
        ):
            pass

    # `bare` reuses one batch of inputs, so it times the network alone on the same shapes.
    paths_ = {
        "bare forward": bare,
        "sequential, eager (13f5048)": sequential_eager,
        "sequential, traced": sequential_traced,
        "pipelined": pipelined,
    }
    return {name: median_ms(fn, repeats, warmup=1) / 1000.0 for name, fn in paths_.items()}


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
    parser.add_argument("--shard", type=int, help="images in the one-shard figure (default 32)")
    parser.add_argument("--shard-repeats", type=int, default=3, dest="shard_repeats")
    parser.add_argument("--maps", action="store_true", help="draw infection maps in the shard")
    parser.add_argument(
        "--only-shard", action="store_true", dest="only_shard", help="skip the per-arch figures"
    )
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
        f", load average {os.getloadavg()}"
    )

    # The non-network stages do not depend on the architecture: time them once.
    gray = load_gray(io.BytesIO(png))
    prob_small = np.random.default_rng(0).random((size, size), dtype=np.float32)
    prob_full = resize_probability(prob_small, *gray.shape)
    lut_map = lut_infection_map_factory()
    same = np.array_equal(lut_map(gray, prob_full), infection_map(gray, prob_full))
    from training.nets.predict import mask_png, predicted_mask

    mask = predicted_mask(prob_small, *gray.shape)
    groups = {
        "both paths": {
            "decode PNG": lambda: load_gray(io.BytesIO(png)),
            "preprocess": lambda: preprocess(gray, size),
        },
        "Stage II mask (inference.services.run_predict)": {
            "predicted_mask": lambda: predicted_mask(prob_small, *gray.shape),
            "mask_png": lambda: mask_png(mask),
        },
        "infection map (uploads, analysis)": {
            "resize back": lambda: resize_probability(prob_small, *gray.shape),
            "infection_map": lambda: infection_map(gray, prob_full),
            "detect": lambda: detect(prob_full),
        },
    }
    print("\n## Non-network stages, ms/image")
    stage_ms = {}
    for group, stages in groups.items():
        print(f"  {group}:")
        for name, fn in stages.items():
            stage_ms[name] = median_ms(fn, max(repeats, 10), warmup=2)
            print(f"    {name:<14} {stage_ms[name]:8.2f}")
    shared = stage_ms["decode PNG"] + stage_ms["preprocess"]
    mask_total = shared + stage_ms["predicted_mask"] + stage_ms["mask_png"]
    map_total = shared + stage_ms["resize back"] + stage_ms["infection_map"] + stage_ms["detect"]
    print(f"  total, Stage II mask path: {mask_total:.2f}; infection map path: {map_total:.2f}")
    lut_ms = median_ms(lambda: lut_map(gray, prob_full), max(repeats, 10), warmup=2)
    print(
        f"  (infection_map as one 256x256 colour-table lookup: {lut_ms:.2f} ms, "
        f"{stage_ms['infection_map'] / lut_ms:.2f}x as fast, identical output: {same})"
    )

    rows = []
    for arch in [] if args.only_shard else args.archs:
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
    print(
        f"\nNon-network stages add {mask_total:.1f} ms/image to a Stage II mask, "
        f"{map_total:.1f} ms/image to an infection map."
    )

    count = args.shard or (8 if args.quick else 32)
    from training.nets.predict import default_workers

    seconds = bench_shard(
        args.archs[0], args.encoder, size, png, count, args.shard_repeats, args.maps
    )
    bare = seconds["bare forward"]
    print(
        f"\n## One shard: {count} images of {image_size} px, {args.archs[0]}, batch 8, "
        f"{default_workers()} pool threads{', with infection maps' if args.maps else ''}; "
        f"median of {args.shard_repeats}"
    )
    print("| path | s | images/s | × bare forward |")
    print("|---|---|---|---|")
    for name, s in seconds.items():
        verdict = "" if name == "bare forward" else (" ok" if s / bare <= GOAL else f" > {GOAL}")
        print(f"| {name} | {s:.2f} | {count / s:.2f} | {s / bare:.2f}{verdict} |")
    print(f"# load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
