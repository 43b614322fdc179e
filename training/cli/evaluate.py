"""``evaluate``: pixel- and image-level metrics with 95 % CIs and confusion matrices."""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.cli.common import batches, load_data
from training.cli.progress import ProgressBar
from training.cli.report import evaluation_markdown
from training.nets.detection import THRESHOLD, detect
from training.nets.layouts import Sample

if TYPE_CHECKING:
    from training.nets.predict import Member


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
            "pixel_curve": {
                "n_bins": self.pixel_curve.n_bins,
                "positives": self.pixel_curve.positives.tolist(),
                "negatives": self.pixel_curve.negatives.tolist(),
            },
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
                "scores": _clean(self.pixel.scores(ci_n=ci_n)),
                "auc": _clean_value(self.pixel_curve.auc()),
            },
            "image": {
                "confusion": _confusion_dict(self.image.confusion),
                "scores": _clean(self.image.scores(ci_n=ci_n)),
                "auc": _clean_value(auc(truth, score) if truth.size else math.nan),
            },
            "ms_per_sample": (
                1000.0 * self.forward_seconds / self.n_forward if self.n_forward else None
            ),
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
    from training.nets.data import load_gray, load_mask, resize_probability
    from training.nets.predict import predict_ensemble

    size = max(m.config.input_size for m in members)
    ev = Evaluation.empty()
    with ProgressBar(len(samples), bar_label) as bar:
        for i, batch in enumerate(batches(list(samples), batch_size)):
            grays = [load_gray(s.image) for s in batch]
            # Timed runs use the traced graph, after a warm-up call that traces it.
            graph = True if timing else None
            if timing and i == 0:
                predict_ensemble(members, grays, graph)
            started = time.perf_counter()
            probs = predict_ensemble(members, grays, graph)
            if timing:
                ev.forward_seconds += time.perf_counter() - started
                ev.n_forward += len(batch)
            for sample, gray, prob in zip(batch, grays, probs, strict=True):
                if resolution == "native":
                    truth = (
                        load_mask(sample.mask)
                        if sample.mask is not None
                        else np.zeros(gray.shape[:2], np.float32)
                    )
                    p = resize_probability(prob, *truth.shape)
                else:
                    p = prob
                    truth = (
                        load_mask(sample.mask, size)
                        if sample.mask is not None
                        else np.zeros((size, size), np.float32)
                    )
                ev.pixel.update_prob(truth > 0.5, p)
                ev.pixel_curve.update(truth > 0.5, p)
                ev.image.update(np.array([sample.covid]), np.array([detect(prob, THRESHOLD)]))
                ev.image_truth.append(bool(sample.covid))
                ev.image_score.append(float(np.max(prob)))
            bar.advance(len(batch))
    return ev


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``evaluate`` to the command line."""
    p = sub.add_parser("evaluate", help="metrics of trained network(s) on labelled data")
    p.add_argument(
        "--weights",
        nargs="+",
        required=True,
        help="run folder(s) or weights file(s); several = ensemble (mean)",
    )
    p.add_argument("--images", required=True)
    p.add_argument("--masks")
    p.add_argument("--batch-size", type=int, default=8, dest="batch_size")
    p.add_argument(
        "--resolution",
        choices=("network", "native"),
        default="network",
        help="compare at the network's input size (paper) or each mask's own size",
    )
    p.add_argument(
        "--ci-n",
        choices=("denominator", "paper"),
        default="denominator",
        dest="ci_n",
        help="N of eq. 13 (see training.nets.metrics)",
    )
    p.add_argument(
        "--format",
        choices=("markdown", "json", "both"),
        default="both",
        help="what to print on stdout (default: Markdown, then the JSON)",
    )
    p.add_argument("--json", help="also write the JSON report to this file")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluates the network(s) on the folder's annotated images; prints Markdown and JSON."""
    from training.nets.predict import load_members

    data = load_data(args.images, args.masks).annotated()
    members = load_members(args.weights)
    ev = evaluate_samples(
        members, data.samples, batch_size=args.batch_size, resolution=args.resolution
    )
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
