"""Markdown tables of the paper's metrics (Tables I, III, IV and VIII)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from training.nets.config import ARCHITECTURE_LABELS, ENCODER_LABELS
from training.nets.detection import THRESHOLD

METRIC_NAMES = (
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("precision", "Precision"),
    ("f1", "F1-Score"),
    ("f2", "F2-Score"),
    ("accuracy", "Accuracy"),
)


def pct(value: float | None, ci: float | None) -> str:
    if value is None:
        return "n/a"
    if ci is None:
        return f"{100 * value:.2f}"
    return f"{100 * value:.2f} ± {100 * ci:.2f}"


def metrics_row(
    scores: dict[str, float | None], auc_value: float | None, with_auc: bool = True
) -> list[str]:
    cells = [pct(scores[name], scores[name + "_ci"]) for name, _ in METRIC_NAMES]
    if with_auc:
        cells.append("n/a" if auc_value is None else f"{100 * auc_value:.2f}")
    return cells


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def confusion_md(conf: dict[str, int], negative: str, positive: str) -> str:
    return md_table(
        ["Ground truth \\ Predicted", negative, positive],
        [
            [negative, f"{conf['tn']:,}", f"{conf['fp']:,}"],
            [positive, f"{conf['fn']:,}", f"{conf['tp']:,}"],
        ],
    )


def human(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.2f}K"
    return str(n)


def evaluation_markdown(report: dict[str, Any], title: str) -> str:
    header = ["Level", *(label for _, label in METRIC_NAMES), "AUC"]
    rows = [
        [
            "Pixel (infected region)",
            *metrics_row(report["pixel"]["scores"], report["pixel"]["auc"]),
        ],
        [
            "Image (COVID-19 detection)",
            *metrics_row(report["image"]["scores"], report["image"]["auc"]),
        ],
    ]
    return "\n\n".join(
        [
            f"## {title}",
            "Metrics in %, ± the 95 % confidence interval of eq. 13 (percentage points). "
            f"Threshold {THRESHOLD}; an image is COVID-19 when any pixel reaches it.",
            md_table(header, rows),
            "### Image-level confusion matrix",
            confusion_md(report["image"]["confusion"], "Control", "COVID-19"),
            "### Pixel-level confusion matrix",
            confusion_md(report["pixel"]["confusion"], "Background", "Infected"),
        ]
    )


def sweep_markdown(summary: dict[str, Any]) -> str:
    results = summary["results"].values()
    size = next(iter(results))["config"]["input_size"] if summary["results"] else "?"

    def names(r: dict[str, Any]) -> list[str]:
        return [
            ARCHITECTURE_LABELS[r["arch"]],
            ENCODER_LABELS[r["encoder"]],
            "frozen" if r["frozen"] else "not frozen",
        ]

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
        md_table(
            [*metric_header, "AUC"],
            [[*names(r), *metrics_row(r["pixel"]["scores"], r["pixel"]["auc"])] for r in results],
        ),
        "## Table III: COVID-19 detection (image level)",
        md_table(
            [*metric_header, "AUC"],
            [[*names(r), *metrics_row(r["image"]["scores"], r["image"]["auc"])] for r in results],
        ),
        "## Table IV: cumulative confusion matrices of COVID-19 detection",
    ]
    for r in results:
        parts.append(f"### {' '.join(names(r)[:2])}, {names(r)[2]} encoder")
        parts.append(confusion_md(r["image"]["confusion"], "Control", "COVID-19"))
    parts += [
        "## Table VIII: parameters and inference time per sample",
        f"Time: forward pass only, mean over the test folds, {size} px, this machine.",
        md_table(
            ["Model", "Encoder", "Encoder layers", "Trainable", "Non-trainable", "Time (ms)"],
            [
                [
                    *names(r),
                    human(r["params"]["trainable"]),
                    human(r["params"]["non_trainable"]),
                    "n/a" if r["ms_per_sample"] is None else f"{r['ms_per_sample']:.2f}",
                ]
                for r in results
            ],
        ),
    ]
    return "\n\n".join(parts) + "\n"
