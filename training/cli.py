"""Command line for the ML core, without Django: ``python -m training.cli <command> ...``.

Commands:
    train     fit one network on a folder of CXRs and masks
    evaluate  pixel- and image-level metrics with 95 % CIs and confusion matrices
    predict   infection maps (PNG) and a CSV of detection, probability, share and severity
    sweep     architectures × encoders × frozen/not frozen under grouped k-fold CV, with the
              paper's Tables I, III, IV and VIII (Markdown and JSON) and PR curves (PNG)

Folders: a folder of images with ``--masks`` (files matched by name, QaTa ``mask_<name>``
accepted), a folder of images with a sibling mask folder (COVID-QU-Ex ``images/`` +
``infection masks/``, QaTa ``Images/`` + ``Ground-truths/``), or a data root holding such
folders (see `training.nets.datasets`). Images without a mask are controls (empty mask).

Progress goes to stderr, results to stdout and files.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

import training.nets  # noqa: F401  (sets SM_FRAMEWORK / TF_USE_LEGACY_KERAS before TF loads)
from training.nets.config import ARCHITECTURES, ENCODERS, PRESETS, TrainConfig, preset
from training.nets.datasets import FolderData, Sample, data_version, from_images_dir, scan

ARCH_NAMES = {"unet": "U-Net", "unetpp": "UNet++", "dla": "DLA"}
ENCODER_NAMES = {"densenet121": "DenseNet-121", "chexnet": "CheXNet",
                 "inceptionv3": "Inception-v3", "resnet50": "ResNet-50"}
METRIC_NAMES = (("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
                ("precision", "Precision"), ("f1", "F1-Score"), ("f2", "F2-Score"),
                ("accuracy", "Accuracy"))
THRESHOLD = 0.5


# --------------------------------------------------------------------------------------------
# Progress bar (stderr; no dependency)
# --------------------------------------------------------------------------------------------


class ProgressBar:
    """A one-line text progress bar.

    On a terminal it redraws in place (at most 10 times a second); otherwise (logs, CI) it
    prints a line whenever another tenth is done, so logs stay short.
    """

    def __init__(self, total: int, label: str = "", *, stream: TextIO | None = None,
                 width: int = 28) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0
        self.text = ""
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._last_tenth = -1
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._closed = False

    def update(self, done: int, text: str = "") -> None:
        self.done = min(max(int(done), 0), self.total)
        self.text = text
        now = time.monotonic()
        if self._tty:
            if now - self._last_draw >= 0.1 or self.done == self.total:
                self._last_draw = now
                self.stream.write("\r" + self._line())
                self.stream.flush()
        else:
            tenth = self.done * 10 // self.total
            if tenth != self._last_tenth:
                self._last_tenth = tenth
                self.stream.write(self._line() + "\n")
                self.stream.flush()

    def advance(self, n: int = 1, text: str = "") -> None:
        self.update(self.done + n, text)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._tty:
            self.stream.write("\r" + self._line() + "\n")
        elif self._last_tenth != self.done * 10 // self.total:
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def _line(self) -> str:
        filled = int(round(self.width * self.done / self.total))
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.monotonic() - self.started
        eta = ""
        if 0 < self.done < self.total:
            eta = f" eta {_duration(elapsed / self.done * (self.total - self.done))}"
        label = f"{self.label} " if self.label else ""
        extra = f" {self.text}" if self.text else ""
        return (f"{label}[{bar}] {self.done}/{self.total} {_duration(elapsed)}{eta}{extra}"
                .ljust(79 if self._tty else 0))

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60:d}:{seconds % 60:02d}"
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _fit_progress(bar_label: str) -> tuple[Callable[[int, int, int, int, float], bool],
                                           Callable[[], None]]:
    """An on_progress callback for `fit` drawing one bar over all epochs × steps."""
    state: dict[str, ProgressBar] = {}

    def on_progress(epoch: int, epochs: int, step: int, steps: int, loss: float) -> bool:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = ProgressBar(epochs * steps, bar_label)
        bar.update((epoch - 1) * steps + step, f"epoch {epoch}/{epochs} loss {loss:.4f}")
        return True

    def close() -> None:
        if "bar" in state:
            state["bar"].close()

    return on_progress, close


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Trained runs and prediction
# --------------------------------------------------------------------------------------------


@dataclass
class Member:
    """One trained network of an ensemble."""

    config: TrainConfig
    weights: Path
    model: Any  # tf.keras.Model
    _forward: Any = None
    _calls: int = 0

    # Eager calls before the forward pass is traced into a graph (see `predict`).
    EAGER_CALLS = 2

    def predict(self, x: np.ndarray, graph: bool | None = None) -> np.ndarray:
        """(B, S, S, 3) inputs → (B, S, S) probabilities.

        `graph` True / False forces the traced / eager forward pass; None chooses as below.

        After the first `EAGER_CALLS` batches the network runs as one traced graph: calling a
        Keras model eagerly walks its hundreds of layers in Python, which costs several times
        the computation itself at batch 1 on a CPU (bench/predict_bench.py), but tracing
        costs seconds once, more than a couple of eager batches.
        """
        import tensorflow as tf

        self._calls += 1
        if graph is False or (graph is None and self._calls <= self.EAGER_CALLS):
            return self.model(x, training=False).numpy()[..., 0]
        if self._forward is None:
            size = self.config.input_size
            self._forward = tf.function(
                lambda t: self.model(t, training=False),
                input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)],
            )
        return self._forward(tf.constant(x, tf.float32)).numpy()[..., 0]


def load_run(path: str | os.PathLike[str]) -> tuple[TrainConfig, Path]:
    """A training run's config and weights file.

    Args:
        path: a run folder (with ``model.weights.h5`` and ``run.json`` or ``config.json``) or a
            weights file with one of those JSON files beside it.

    Raises:
        FileNotFoundError: no weights or no config found.
    """
    path = Path(path)
    if path.is_dir():
        folder = path
        candidates = [path / "model.weights.h5", *sorted(path.glob("*.weights.h5")),
                      *sorted(path.glob("*.h5"))]
        weights = next((p for p in candidates if p.is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"no weights file (*.h5) in {path}")
    else:
        if not path.is_file():
            raise FileNotFoundError(f"weights not found: {path}")
        folder, weights = path.parent, path
    for name in ("run.json", "config.json"):
        meta = folder / name
        if meta.is_file():
            data = json.loads(meta.read_text())
            return TrainConfig.from_dict(data.get("config", data)), weights
    raise FileNotFoundError(f"no run.json or config.json beside {weights}")


def load_members(paths: Sequence[str | os.PathLike[str]]) -> list[Member]:
    from training.nets.predict import load_model

    members = []
    for p in paths:
        config, weights = load_run(p)
        members.append(Member(config, weights, load_model(config, str(weights))))
    return members


def _load_gray(path: str | os.PathLike[str]) -> np.ndarray:
    from training.nets.data import load_gray

    return load_gray(path)


def predict_network(
    members: Sequence[Member], grays: Sequence[np.ndarray], graph: bool | None = None
) -> list[np.ndarray]:
    """Ensemble probability maps at network resolution (the largest member input size).

    Each member sees the images at its own input size; members of a smaller size are
    resized up bilinearly before the mean. `graph`: see `Member.predict`.
    """
    from inference.maps import ensemble
    from training.nets.data import preprocess, resize_probability

    size = max(m.config.input_size for m in members)
    per_member = []
    for m in members:
        x = np.stack([preprocess(g, m.config.input_size) for g in grays])
        probs = m.predict(x, graph)
        if m.config.input_size != size:
            probs = np.stack([resize_probability(p, size, size) for p in probs])
        per_member.append(probs)
    return [ensemble([p[i] for p in per_member]) for i in range(len(grays))]


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Counts from one evaluation; folds add up by summing these."""

    pixel: Any  # metrics.Accumulator
    pixel_curve: Any  # metrics.CurveAccumulator
    image: Any  # metrics.Accumulator
    image_truth: list[bool]
    image_score: list[float]
    forward_seconds: float = 0.0
    n_forward: int = 0

    @classmethod
    def empty(cls) -> Evaluation:
        from training.nets.metrics import Accumulator, CurveAccumulator

        return cls(Accumulator(THRESHOLD), CurveAccumulator(), Accumulator(THRESHOLD), [], [])

    def merge(self, other: Evaluation) -> None:
        self.pixel.confusion = self.pixel.confusion + other.pixel.confusion
        self.image.confusion = self.image.confusion + other.image.confusion
        self.pixel_curve.positives += other.pixel_curve.positives
        self.pixel_curve.negatives += other.pixel_curve.negatives
        self.image_truth += other.image_truth
        self.image_score += other.image_score
        self.forward_seconds += other.forward_seconds
        self.n_forward += other.n_forward

    def to_dict(self) -> dict[str, Any]:
        return {
            "pixel_confusion": _confusion_dict(self.pixel.confusion),
            "image_confusion": _confusion_dict(self.image.confusion),
            "pixel_curve": {"n_bins": self.pixel_curve.n_bins,
                            "positives": self.pixel_curve.positives.tolist(),
                            "negatives": self.pixel_curve.negatives.tolist()},
            "image_truth": self.image_truth,
            "image_score": self.image_score,
            "forward_seconds": self.forward_seconds,
            "n_forward": self.n_forward,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        from training.nets.metrics import Confusion

        ev = cls.empty()
        ev.pixel.confusion = Confusion(**data["pixel_confusion"])
        ev.image.confusion = Confusion(**data["image_confusion"])
        ev.pixel_curve.positives = np.asarray(data["pixel_curve"]["positives"], np.int64)
        ev.pixel_curve.negatives = np.asarray(data["pixel_curve"]["negatives"], np.int64)
        ev.image_truth = [bool(v) for v in data["image_truth"]]
        ev.image_score = [float(v) for v in data["image_score"]]
        ev.forward_seconds = float(data.get("forward_seconds", 0.0))
        ev.n_forward = int(data.get("n_forward", 0))
        return ev

    def report(self, ci_n: str = "denominator") -> dict[str, Any]:
        from training.nets.metrics import auc

        truth = np.asarray(self.image_truth, bool)
        score = np.asarray(self.image_score, np.float64)
        return {
            "pixel": {
                "confusion": _confusion_dict(self.pixel.confusion),
                "scores": _clean(self.pixel.scores(ci_n=ci_n)),  # type: ignore[arg-type]
                "auc": _clean_value(self.pixel_curve.auc()),
            },
            "image": {
                "confusion": _confusion_dict(self.image.confusion),
                "scores": _clean(self.image.scores(ci_n=ci_n)),  # type: ignore[arg-type]
                "auc": _clean_value(auc(truth, score) if truth.size else math.nan),
            },
            "ms_per_sample": (1000.0 * self.forward_seconds / self.n_forward
                              if self.n_forward else None),
        }


def _confusion_dict(conf: Any) -> dict[str, int]:
    return {"tp": conf.tp, "fp": conf.fp, "tn": conf.tn, "fn": conf.fn}


def _clean_value(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _clean(d: dict[str, float]) -> dict[str, float | None]:
    return {k: _clean_value(v) for k, v in d.items()}


def evaluate_samples(
    members: Sequence[Member],
    samples: Sequence[Sample],
    *,
    batch_size: int = 8,
    resolution: str = "network",
    bar_label: str = "evaluate",
    timing: bool = False,
) -> Evaluation:
    """Predicts `samples` and accumulates pixel- and image-level counts.

    Args:
        members: the ensemble (one member: a single network).
        samples: CXRs with their masks (None = empty) and COVID-19 flags.
        batch_size: images per forward pass.
        resolution: "network": compare at the network's input size with masks resized by
            nearest neighbour, as the paper does; "native": each mask's own size, with the
            probabilities resized back bilinearly.
        bar_label: progress bar label.
        timing: time the forward passes (after one warm-up batch) for ms/sample.

    Returns:
        The accumulated `Evaluation`.
    """
    from inference.maps import detect
    from training.nets.data import load_mask, resize_probability

    size = max(m.config.input_size for m in members)
    ev = Evaluation.empty()
    with ProgressBar(len(samples), bar_label) as bar:
        for i, batch in enumerate(_batches(list(samples), batch_size)):
            grays = [_load_gray(s.image) for s in batch]
            # Timed runs use the traced graph, after a warm-up call that traces it.
            graph = True if timing else None
            if timing and i == 0:
                predict_network(members, grays, graph)
            started = time.perf_counter()
            probs = predict_network(members, grays, graph)
            if timing:
                ev.forward_seconds += time.perf_counter() - started
                ev.n_forward += len(batch)
            for sample, gray, prob in zip(batch, grays, probs, strict=True):
                if resolution == "native":
                    truth = (load_mask(sample.mask) if sample.mask is not None
                             else np.zeros(gray.shape[:2], np.float32))
                    p = resize_probability(prob, *truth.shape)
                else:
                    p = prob
                    truth = (load_mask(sample.mask, size) if sample.mask is not None
                             else np.zeros((size, size), np.float32))
                ev.pixel.update_prob(truth > 0.5, p)
                ev.pixel_curve.update(truth > 0.5, p)
                ev.image.update(np.array([sample.covid]), np.array([detect(prob, THRESHOLD)]))
                ev.image_truth.append(bool(sample.covid))
                ev.image_score.append(float(np.max(prob)))
            bar.advance(len(batch))
    return ev


def _pct(value: float | None, ci: float | None) -> str:
    if value is None:
        return "n/a"
    if ci is None:
        return f"{100 * value:.2f}"
    return f"{100 * value:.2f} ± {100 * ci:.2f}"


def _metrics_row(scores: dict[str, float | None], auc_value: float | None,
                 with_auc: bool = True) -> list[str]:
    cells = [_pct(scores[name], scores[name + "_ci"]) for name, _ in METRIC_NAMES]
    if with_auc:
        cells.append("n/a" if auc_value is None else f"{100 * auc_value:.2f}")
    return cells


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _confusion_md(conf: dict[str, int], negative: str, positive: str) -> str:
    return _md_table(
        ["Ground truth \\ Predicted", negative, positive],
        [[negative, f"{conf['tn']:,}", f"{conf['fp']:,}"],
         [positive, f"{conf['fn']:,}", f"{conf['tp']:,}"]],
    )


def evaluation_markdown(report: dict[str, Any], title: str) -> str:
    header = ["Level", *(label for _, label in METRIC_NAMES), "AUC"]
    rows = [
        ["Pixel (infected region)", *_metrics_row(report["pixel"]["scores"],
                                                  report["pixel"]["auc"])],
        ["Image (COVID-19 detection)", *_metrics_row(report["image"]["scores"],
                                                     report["image"]["auc"])],
    ]
    return "\n\n".join([
        f"## {title}",
        "Metrics in %, ± the 95 % confidence interval of eq. 13 (percentage points). "
        f"Threshold {THRESHOLD}; an image is COVID-19 when any pixel reaches it.",
        _md_table(header, rows),
        "### Image-level confusion matrix",
        _confusion_md(report["image"]["confusion"], "Control", "COVID-19"),
        "### Pixel-level confusion matrix",
        _confusion_md(report["pixel"]["confusion"], "Background", "Infected"),
    ])


# --------------------------------------------------------------------------------------------
# Precision-recall plot (Pillow)
# --------------------------------------------------------------------------------------------

_PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Step-wise area under a PR curve (scikit-learn's average_precision_score)."""
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_pr_curves(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]],
    path: str | os.PathLike[str],
    *,
    title: str = "Precision-recall (pixel level)",
    size: tuple[int, int] = (720, 560),
) -> None:
    """Draws precision-recall curves with axes, ticks, grid and a legend, as a PNG.

    Args:
        curves: (label, precision, recall) per curve, as `metrics.precision_recall_curve`.
        path: PNG to write.
        title: drawn above the plot.
        size: image width and height in pixels.
    """
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 74, 24, 44, 62
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    small, normal = _font(13), _font(15)
    x0, y0, x1, y1 = left, top, width - right, height - bottom

    def to_px(r: float, p: float) -> tuple[float, float]:
        return x0 + r * (x1 - x0), y1 - p * (y1 - y0)

    for k in range(6):
        v = k / 5
        gx, _ = to_px(v, 0)
        _, gy = to_px(0, v)
        draw.line([(gx, y0), (gx, y1)], fill=(230, 230, 230))
        draw.line([(x0, gy), (x1, gy)], fill=(230, 230, 230))
        draw.line([(gx, y1), (gx, y1 + 5)], fill="black")
        draw.line([(x0 - 5, gy), (x0, gy)], fill="black")
        draw.text((gx, y1 + 8), f"{v:.1f}", fill="black", font=small, anchor="mt")
        draw.text((x0 - 8, gy), f"{v:.1f}", fill="black", font=small, anchor="rm")
    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.text(((x0 + x1) / 2, height - 14), "Recall (sensitivity)", fill="black", font=normal,
              anchor="ms")
    draw.text(((x0 + x1) / 2, 14), title, fill="black", font=normal, anchor="mt")
    label = Image.new("RGB", (200, 20), "white")
    ImageDraw.Draw(label).text((100, 10), "Precision", fill="black", font=normal, anchor="mm")
    label = label.rotate(90, expand=True)
    img.paste(label, (6, int((y0 + y1) / 2 - label.height / 2)))

    entries = []
    for i, (name, precision, recall) in enumerate(curves):
        colour = _PALETTE[i % len(_PALETTE)]
        order = np.argsort(recall, kind="stable")
        points = [to_px(float(recall[j]), float(precision[j])) for j in order]
        if len(points) >= 2:
            draw.line(points, fill=colour, width=2, joint="curve")
        elif points:
            px, py = points[0]
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        entries.append((f"{name} (AP {average_precision(precision, recall):.3f})", colour))

    if entries:
        line_h = 18
        text_w = max(draw.textlength(text, font=small) for text, _ in entries)
        box = [x0 + 10, y1 - 10 - line_h * len(entries) - 8, x0 + 10 + 40 + text_w + 12, y1 - 10]
        draw.rectangle(box, fill="white", outline=(160, 160, 160))
        for j, (text, colour) in enumerate(entries):
            ly = box[1] + 6 + j * line_h + line_h / 2
            draw.line([(box[0] + 8, ly), (box[0] + 36, ly)], fill=colour, width=3)
            draw.text((box[0] + 44, ly), text, fill="black", font=small, anchor="lm")
    img.save(path)


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _config_from_args(args: argparse.Namespace, **fixed: Any) -> TrainConfig:
    overrides: dict[str, Any] = {}
    for name, attr in (("epochs", "epochs"), ("input_size", "size"),
                       ("batch_size", "batch_size"), ("learning_rate", "lr"), ("seed", "seed")):
        value = getattr(args, attr, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "no_augment", False):
        overrides["augment"] = False
    return preset(args.preset, **overrides, **fixed)


def _load_data(images: str, masks: str | None = None, lungs: str | None = None) -> FolderData:
    data = from_images_dir(images, masks, lungs)
    _say(data.summary())
    return data


def cmd_train(args: argparse.Namespace) -> int:
    from training.nets.fit import fit

    config = _config_from_args(args, arch=args.arch, encoder=args.encoder,
                               freeze_encoder=args.freeze, weights=args.weights)
    data = _load_data(args.images, args.masks)
    on_progress, close = _fit_progress("train")
    try:
        result = fit(
            config, data.images, data.masks, out_dir=args.out, on_progress=on_progress,
            covid_flags=data.covid_flags if args.balance else None,
            extra={"data_root": str(data.root), "layout": data.layout},
            resume=args.resume, mixed_precision=args.mixed_precision, xla=args.xla,
        )
    finally:
        close()
    print(json.dumps({
        "weights": str(result.weights_path), "run": str(result.run_path),
        "loss_history": result.loss_history, "seconds": round(result.seconds, 2),
        "resumed_from_epoch": result.initial_epoch,
    }, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    data = _load_data(args.images, args.masks)
    members = load_members(args.weights)
    ev = evaluate_samples(members, data.samples, batch_size=args.batch_size,
                          resolution=args.resolution)
    report = {
        "weights": [str(m.weights) for m in members],
        "configs": [m.config.to_dict() for m in members],
        "data": {"root": str(data.root), "n_images": len(data), "n_covid": sum(data.covid_flags)},
        "resolution": args.resolution,
        "threshold": THRESHOLD,
        "ci_n": args.ci_n,
        **{k: v for k, v in ev.report(args.ci_n).items() if k in ("pixel", "image")},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        print(evaluation_markdown(report, "Evaluation"))
        if args.format == "both":
            print("\n```json\n" + json.dumps(report, indent=2) + "\n```")
    return 0


def _lung_index(lungs_dir: str | None, data: FolderData) -> dict[str, Path | None]:
    """Lung mask per sample key: from --lungs (matched by name) or the data set's own."""
    if lungs_dir is None:
        return {s.key: s.lung for s in data.samples}
    from training.nets.datasets import index_masks

    index = index_masks(Path(lungs_dir))
    return {s.key: index.get(s.image.stem.lower()) for s in data.samples}


def cmd_predict(args: argparse.Namespace) -> int:
    from PIL import Image

    from inference.maps import detect, infection_map, severity
    from training.nets.data import load_mask, resize_probability

    data = from_images_dir(args.images, None, None)
    _say(data.summary())
    lungs = _lung_index(args.lungs, data)
    members = load_members(args.weights)
    out = Path(args.out)
    maps_dir = out / "maps"
    maps_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with ProgressBar(len(data), "predict") as bar:
        for batch in _batches(list(data.samples), args.batch_size):
            grays = [_load_gray(s.image) for s in batch]
            for sample, gray, prob in zip(batch, grays, predict_network(members, grays),
                                          strict=True):
                height, width = gray.shape[:2]
                full = resize_probability(prob, height, width)
                map_path = (maps_dir / sample.key).with_suffix(".png")
                map_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(infection_map(gray, full, epsilon=args.epsilon)).save(map_path)
                lung_path = lungs.get(sample.key)
                lung = load_mask(lung_path) > 0.5 if lung_path is not None else None
                if lung is not None and not lung.any():
                    lung = None
                sev = severity(full, lung, threshold=THRESHOLD)
                on_lungs = sev.lung_fraction is not None
                share = sev.lung_fraction if on_lungs else sev.infected_fraction
                rows.append({
                    "file": sample.key,
                    "covid19": int(detect(prob, THRESHOLD)),
                    "max_probability": f"{float(np.max(prob)):.4f}",
                    "infected_share": f"{share:.4f}",
                    "share_of": "lungs" if on_lungs else "image",
                    "right_lung_share": _fmt(sev.right_lung_fraction),
                    "left_lung_share": _fmt(sev.left_lung_fraction),
                    "severity_grade": "" if sev.grade is None else sev.grade,
                    "severity": sev.label or "",
                    "map": map_path.relative_to(out).as_posix(),
                })
            bar.advance(len(batch))
    csv_path = out / "predictions.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    n_covid = sum(r["covid19"] for r in rows)
    print(f"{len(rows)} image(s), {n_covid} detected as COVID-19; maps in {maps_dir}, "
          f"table in {csv_path}")
    if not any(lungs.values()):
        _say("no lung masks: shares are of the whole image and no severity grade is given "
             "(pass --lungs DIR)")
    return 0


def _fmt(v: float | None) -> str:
    return "" if v is None or math.isnan(v) else f"{v:.4f}"


# ---- sweep ---------------------------------------------------------------------------------


def _config_id(config: TrainConfig) -> str:
    return f"{config.arch}-{config.encoder}-{'frozen' if config.freeze_encoder else 'trainable'}"


def _param_counts(model: Any) -> tuple[int, int]:
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    frozen = sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)
    return trainable, frozen


def _human(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.2f}K"
    return str(n)


def _parse_encoder_weights(items: Sequence[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        encoder, sep, path = item.partition("=")
        if not sep or encoder not in ENCODERS:
            raise SystemExit(f"--encoder-weights takes ENCODER=PATH with ENCODER one of "
                             f"{', '.join(ENCODERS)}; got {item!r}")
        out[encoder] = path
    return out


def sweep_configs(args: argparse.Namespace) -> list[TrainConfig]:
    freeze = {"no": (False,), "yes": (True,), "both": (False, True)}[args.frozen]
    weights = _parse_encoder_weights(args.encoder_weights)
    configs = []
    for arch in args.archs:
        for encoder in args.encoders:
            for frozen in freeze:
                configs.append(_config_from_args(
                    args, arch=arch, encoder=encoder, freeze_encoder=frozen,
                    weights=weights.get(encoder),
                ))
    for config in configs:
        if config.encoder == "inceptionv3" and config.input_size < 96:
            raise SystemExit(f"inceptionv3 needs --size >= 96 (the {args.preset} preset uses "
                             f"{config.input_size})")
    return configs


def _fold_split(data: FolderData, n_folds: int, seed: int) -> dict[str, int]:
    from training.nets.folds import grouped_stratified_folds

    return grouped_stratified_folds(
        data.keys, [s.label for s in data.samples], data.groups, n_folds=n_folds, seed=seed
    )


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Trains and evaluates every configuration on every fold; returns the results."""
    from training.nets.fit import fit
    from training.nets.predict import load_model

    data = scan(args.data)
    _say(data.summary())
    configs = sweep_configs(args)
    folds = _fold_split(data, args.folds, args.fold_seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    versions: dict[int, str] = {}
    results: dict[str, Any] = {}
    total = len(configs) * args.folds
    done = 0
    for config in configs:
        cid = _config_id(config)
        merged = Evaluation.empty()
        per_fold = []
        params: tuple[int, int] | None = None
        for fold in range(args.folds):
            done += 1
            test = [s for s in data.samples if folds[s.key] == fold]
            train = [s for s in data.samples if folds[s.key] != fold]
            if not test or not train:
                _say(f"[{done}/{total}] {cid} fold {fold}: empty, skipped")
                continue
            run_dir = out / "runs" / cid / f"fold{fold}"
            eval_path = run_dir / "eval.json"
            if eval_path.is_file():
                saved = json.loads(eval_path.read_text())
                ev = Evaluation.from_dict(saved["evaluation"])
                params = tuple(saved["params"])  # type: ignore[assignment]
                _say(f"[{done}/{total}] {cid} fold {fold}: done before, reusing {eval_path}")
            else:
                train_data = FolderData(data.root, tuple(train), data.layout)
                if fold not in versions:
                    versions[fold] = data_version(train_data.images, train_data.masks)
                _say(f"[{done}/{total}] {cid} fold {fold}: training on {len(train)}, "
                     f"testing on {len(test)}")
                on_progress, close = _fit_progress(f"{cid} f{fold}")
                try:
                    result = fit(
                        config, train_data.images, train_data.masks, out_dir=run_dir,
                        on_progress=on_progress, covid_flags=train_data.covid_flags,
                        extra={"data_version": versions[fold], "fold": fold,
                               "n_folds": args.folds, "test_keys": [s.key for s in test]},
                        resume=True, mixed_precision=args.mixed_precision, xla=args.xla,
                    )
                finally:
                    close()
                model = load_model(config, str(result.weights_path))
                params = _param_counts(model)
                member = Member(config, result.weights_path, model)
                ev = evaluate_samples([member], test, batch_size=args.batch_size or 8,
                                      bar_label=f"{cid} f{fold} test", timing=True)
                eval_path.write_text(json.dumps({
                    "config": config.to_dict(), "fold": fold, "params": list(params),
                    "loss_history": result.loss_history, "train_seconds": result.seconds,
                    "evaluation": ev.to_dict(),
                }))
                shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
                if not args.keep_weights:
                    result.weights_path.unlink(missing_ok=True)
            merged.merge(ev)
            fold_report = ev.report(args.ci_n)
            per_fold.append({"fold": fold, "n_test": len(test), **fold_report})
            img = fold_report["image"]["scores"]
            _say(f"    fold {fold}: pixel F1 {_pct(fold_report['pixel']['scores']['f1'], None)}"
                 f" | detection sensitivity {_pct(img['sensitivity'], None)}, "
                 f"specificity {_pct(img['specificity'], None)}")
        if params is None:
            continue
        report = merged.report(args.ci_n)
        precision, recall, _ = (merged.pixel_curve.precision_recall_curve()
                                if merged.pixel_curve.positives.any()
                                or merged.pixel_curve.negatives.any() else ([], [], []))
        results[cid] = {
            "config": config.to_dict(),
            "arch": config.arch, "encoder": config.encoder, "frozen": config.freeze_encoder,
            "params": {"trainable": params[0], "non_trainable": params[1]},
            **report,
            "pixel_pr_curve": {"precision": np.asarray(precision).tolist(),
                               "recall": np.asarray(recall).tolist()},
            "folds": per_fold,
        }
    return {
        "data": {"root": str(data.root), "layout": data.layout, "n_images": len(data),
                 "n_covid": sum(data.covid_flags)},
        "folds": args.folds, "fold_seed": args.fold_seed, "preset": args.preset,
        "threshold": THRESHOLD, "ci_n": args.ci_n,
        "fold_of": folds,
        "results": results,
    }


def sweep_markdown(summary: dict[str, Any]) -> str:
    results = summary["results"].values()
    size = next(iter(results))["config"]["input_size"] if summary["results"] else "?"

    def names(r: dict[str, Any]) -> list[str]:
        return [ARCH_NAMES[r["arch"]], ENCODER_NAMES[r["encoder"]],
                "frozen" if r["frozen"] else "not frozen"]

    metric_header = ["Model", "Encoder", "Encoder layers", *(lbl for _, lbl in METRIC_NAMES)]
    data = summary["data"]
    parts = [
        "# Sweep results",
        f"{data['n_images']} CXRs ({data['n_covid']} COVID-19) from `{data['root']}`, "
        f"{summary['folds']}-fold grouped, stratified cross-validation, preset "
        f"`{summary['preset']}`, input {size} px. Metrics in % ± the 95 % CI of eq. 13 "
        "(percentage points), computed on the test folds' counts pooled over all folds; "
        f"threshold {summary['threshold']}.",
        "## Table I: infected region segmentation (pixel level)",
        _md_table([*metric_header, "AUC"],
                  [[*names(r), *_metrics_row(r["pixel"]["scores"], r["pixel"]["auc"])]
                   for r in results]),
        "## Table III: COVID-19 detection (image level)",
        _md_table([*metric_header, "AUC"],
                  [[*names(r), *_metrics_row(r["image"]["scores"], r["image"]["auc"])]
                   for r in results]),
        "## Table IV: cumulative confusion matrices of COVID-19 detection",
    ]
    for r in results:
        parts.append(f"### {' '.join(names(r)[:2])}, {names(r)[2]} encoder")
        parts.append(_confusion_md(r["image"]["confusion"], "Control", "COVID-19"))
    parts += [
        "## Table VIII: parameters and inference time per sample",
        f"Time: forward pass only, mean over the test folds, {size} px, this machine.",
        _md_table(["Model", "Encoder", "Encoder layers", "Trainable", "Non-trainable",
                   "Time (ms)"],
                  [[*names(r), _human(r["params"]["trainable"]),
                    _human(r["params"]["non_trainable"]),
                    "n/a" if r["ms_per_sample"] is None else f"{r['ms_per_sample']:.2f}"]
                   for r in results]),
    ]
    return "\n\n".join(parts) + "\n"


def cmd_sweep(args: argparse.Namespace) -> int:
    summary = run_sweep(args)
    out = Path(args.out)
    if not summary["results"]:
        _say("no configuration produced results (too few images for the folds?)")
        return 1
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    markdown = sweep_markdown(summary)
    (out / "tables.md").write_text(markdown)
    curves = [
        (f"{ARCH_NAMES[r['arch']]} {ENCODER_NAMES[r['encoder']]}"
         f"{' (frozen)' if r['frozen'] else ''}",
         np.asarray(r["pixel_pr_curve"]["precision"]), np.asarray(r["pixel_pr_curve"]["recall"]))
        for r in summary["results"].values() if r["pixel_pr_curve"]["precision"]
    ]
    draw_pr_curves(curves, out / "pr_curves.png")
    print(markdown)
    _say(f"tables: {out / 'tables.md'}, {out / 'results.json'}; PR curves: "
         f"{out / 'pr_curves.png'}")
    return 0


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


def _add_training_options(p: argparse.ArgumentParser, default_preset: str) -> None:
    p.add_argument("--preset", default=default_preset, choices=sorted(PRESETS),
                   help=f"base settings (default {default_preset}); the options below override")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--size", type=int, help="network input side, a multiple of 32")
    p.add_argument("--batch-size", type=int, dest="batch_size", help="training batch size")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--no-augment", action="store_true",
                   help="no random shift/rotation of the oversampled COVID-19 copies")
    p.add_argument("--mixed-precision", action="store_true",
                   help="float16 compute on a GPU (ignored on a CPU)")
    p.add_argument("--xla", action="store_true",
                   help="XLA auto-clustering of the training graph (GPU)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.cli", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fit one network")
    p.add_argument("--images", required=True,
                   help="folder of CXRs, or a data root (COVID-QU-Ex / QaTa-COV19 layout)")
    p.add_argument("--masks", help="folder of infection masks (default: a sibling folder)")
    p.add_argument("--arch", default="unet", choices=ARCHITECTURES)
    p.add_argument("--encoder", default="densenet121", choices=ENCODERS)
    p.add_argument("--freeze", action="store_true", help="freeze the encoder (BN stays trainable)")
    p.add_argument("--weights", help="initial weights: 'imagenet' or a local encoder/model file")
    p.add_argument("--out", required=True, help="run folder (weights, run.json, checkpoint/)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last completed epoch checkpointed in --out")
    p.add_argument("--no-balance", dest="balance", action="store_false",
                   help="do not oversample COVID-19 up to the control count")
    _add_training_options(p, "paper")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of trained network(s) on labelled data")
    p.add_argument("--weights", nargs="+", required=True,
                   help="run folder(s) or weights file(s); several = ensemble (mean)")
    p.add_argument("--images", required=True)
    p.add_argument("--masks")
    p.add_argument("--batch-size", type=int, default=8, dest="batch_size")
    p.add_argument("--resolution", choices=("network", "native"), default="network",
                   help="compare at the network's input size (paper) or each mask's own size")
    p.add_argument("--ci-n", choices=("denominator", "paper"), default="denominator",
                   dest="ci_n", help="N of eq. 13 (see training.nets.metrics)")
    p.add_argument("--format", choices=("markdown", "json", "both"), default="both",
                   help="what to print on stdout (default: Markdown, then the JSON)")
    p.add_argument("--json", help="also write the JSON report to this file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="infection maps and a CSV of findings")
    p.add_argument("--weights", nargs="+", required=True,
                   help="run folder(s) or weights file(s); several = ensemble (mean)")
    p.add_argument("--images", required=True, help="folder of CXRs (or a data root)")
    p.add_argument("--out", required=True, help="output folder: maps/ and predictions.csv")
    p.add_argument("--lungs", help="folder of lung masks (same names): per-lung shares, grade")
    p.add_argument("--batch-size", type=int, default=8, dest="batch_size")
    p.add_argument("--epsilon", type=float, default=0.02,
                   help="probabilities below it are not drawn on the map")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("sweep", help="architectures × encoders under grouped k-fold CV")
    p.add_argument("--data", required=True, help="data root (COVID-QU-Ex or QaTa-COV19 layout)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--fold-seed", type=int, default=0, dest="fold_seed")
    p.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    p.add_argument("--encoders", nargs="+", default=["densenet121", "chexnet", "inceptionv3",
                                                      "resnet50"], choices=ENCODERS)
    p.add_argument("--frozen", choices=("no", "yes", "both"), default="both",
                   help="encoder frozen, not frozen, or both (default)")
    p.add_argument("--encoder-weights", nargs="*", dest="encoder_weights", metavar="ENC=PATH",
                   help="initial weights per encoder, e.g. chexnet=/data/chexnet.h5 "
                        "densenet121=imagenet (default: random initialisation)")
    p.add_argument("--out", required=True)
    p.add_argument("--keep-weights", action="store_true", dest="keep_weights",
                   help="keep every fold's model.weights.h5 (default: only eval.json, run.json)")
    p.add_argument("--ci-n", choices=("denominator", "paper"), default="denominator",
                   dest="ci_n")
    _add_training_options(p, "tiny")
    p.set_defaults(func=cmd_sweep)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        _say(f"error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
