"""When a trained network's output may be shown as a finding, and what every page says about it.

The one place for the "not validated" threshold. A network is **validated** only when all of
these hold; otherwise every page that shows its output (Demo, Infection maps, the round
dashboard) says it is not validated and shows no "COVID-19 detected" verdict:

- it was measured on at least `MIN_HELD_OUT_IMAGES` held-out images (never trained on, no
  patient on both sides);
- it was not trained with a preset meant only to run the loop (`UNVALIDATED_PRESETS`);
- it was trained at an input size of at least `MIN_INPUT_SIZE` px (the study's 224).

Even a validated network is a research tool: the pages say so.
"""

from __future__ import annotations

import math
from typing import Any

from training.models import ModelVersion, TrainingRun
from training.nets.metrics import METRICS, Confusion, scores

MIN_HELD_OUT_IMAGES = 100
MIN_INPUT_SIZE = 224  # the study's input size (QaTa-COV19, Sec. III-A)
UNVALIDATED_PRESETS = frozenset({"tiny"})

THRESHOLD_TEXT = (
    f"A network counts as validated only when it was measured on at least "
    f"{MIN_HELD_OUT_IMAGES} held-out images, trained at {MIN_INPUT_SIZE} px or more (the "
    f"study's size) and not with the {', '.join(sorted(UNVALIDATED_PRESETS))} preset."
)

METRIC_LABELS = {
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "precision": "Precision",
    "f1": "F1",
    "f2": "F2",
    "accuracy": "Accuracy",
}


def _number(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def level_intervals(level: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """One level's metrics (pixel or image) with both intervals, recomputed from its confusion
    counts so figures stored before the Wilson interval existed get it too.

    Returns:
        ``{metric: {"value", "low", "high", "paper_low", "paper_high"}}``: fractions; Wilson is
        [low, high]; the paper's eq. 13 is value +- r clipped to [0, 1].
    """
    counts = level.get("confusion") or {}
    out: dict[str, dict[str, float | None]] = {}
    if not counts:
        return out
    s = scores(Confusion(**{k: int(counts.get(k, 0)) for k in ("tp", "fp", "tn", "fn")}))
    for name in METRICS:
        value, r = _number(s[name]), _number(s[name + "_ci"])
        out[name] = {
            "value": value,
            "low": _number(s[name + "_low"]),
            "high": _number(s[name + "_high"]),
            "paper_low": None if value is None or r is None else max(0.0, value - r),
            "paper_high": None if value is None or r is None else min(1.0, value + r),
        }
    return out


def verdict(*, preset: str | None, input_size: int | None, held_out_images: int | None) -> list:
    """Why a network is not validated: a list of sentences, empty when it is validated."""
    reasons = []
    if not held_out_images:
        reasons.append("it has not been measured on held-out images")
    elif held_out_images < MIN_HELD_OUT_IMAGES:
        reasons.append(
            f"it was measured on only {held_out_images} held-out image"
            f"{'' if held_out_images == 1 else 's'} (at least {MIN_HELD_OUT_IMAGES} needed)"
        )
    if preset in UNVALIDATED_PRESETS:
        reasons.append(f"it was trained with the {preset} preset, meant only to run the loop")
    if input_size is not None and input_size < MIN_INPUT_SIZE:
        reasons.append(f"it was trained at {input_size} px, below the study's {MIN_INPUT_SIZE} px")
    return reasons


def run_card(run: TrainingRun, mv: ModelVersion | None = None) -> dict[str, Any]:
    """What a page says about a run's network: name, preset, input size, training masks,
    held-out metrics with both intervals, and whether it is validated (and why not)."""
    if mv is None:
        mv = getattr(run, "model_version", None)
    config = {**(run.config or {}), **((mv.config if mv else None) or {})}
    metrics = (mv.metrics if mv else None) or {}
    preset = (run.round.config or {}).get("preset")
    input_size = config.get("input_size")
    held_out = metrics.get("test_images")
    image_counts = (metrics.get("image") or {}).get("confusion") or {}
    reasons = verdict(preset=preset, input_size=input_size, held_out_images=held_out)
    is_classifier = run.kind == TrainingRun.Kind.CLASSIFIER
    return {
        "id": mv.pk if mv else None,
        "kind": run.kind,
        "arch": run.arch,
        "encoder": run.encoder,
        "name": f"{'classifier' if is_classifier else run.arch} · {run.encoder}",
        "encoder_frozen": None if is_classifier else bool(config.get("freeze_encoder", False)),
        "preset": preset,
        "input_size": input_size,
        "train_masks": len(run.train_image_ids or []),
        "held_out_images": held_out,
        "held_out_covid": (image_counts.get("tp", 0) + image_counts.get("fn", 0))
        if image_counts
        else None,
        "held_out_controls": (image_counts.get("tn", 0) + image_counts.get("fp", 0))
        if image_counts
        else None,
        "round": run.round.number,
        "validated": not reasons,
        "reasons": reasons,
        "threshold": THRESHOLD_TEXT,
        "levels": {
            level: level_intervals(metrics[level])
            for level in ("pixel", "image")
            if level in metrics
        },
    }


def ensemble_verdict(cards: list[dict[str, Any]]) -> dict[str, Any]:
    """An ensemble is validated only when every one of its networks is."""
    reasons: list[str] = []
    for card in cards:
        for reason in card["reasons"]:
            if reason not in reasons:
                reasons.append(reason)
    return {
        "validated": bool(cards) and not reasons,
        "reasons": reasons,
        "threshold": THRESHOLD_TEXT,
        "min_held_out_images": MIN_HELD_OUT_IMAGES,
        "min_input_size": MIN_INPUT_SIZE,
    }
