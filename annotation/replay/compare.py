"""Comparing two replays on the same data and seed: the difference of their shares (Newcombe's
interval from Wilson intervals) and of their per-image Dice (a paired bootstrap)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from training.services import wilson_interval


def newcombe_difference(k1: int, n1: int, k2: int, n2: int) -> dict[str, Any]:
    """p1 - p2 (p = k / n, two independent proportions) with Newcombe's hybrid score 95 %
    interval (Newcombe 1998, method 10), built from each share's Wilson interval:
    low = d - sqrt((p1 - l1)^2 + (u2 - p2)^2), high = d + sqrt((u1 - p1)^2 + (p2 - l2)^2).
    Either n of 0: None everywhere."""
    if n1 == 0 or n2 == 0:
        return {"diff": None, "low": None, "high": None}
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1)
    l2, u2 = wilson_interval(k2, n2)
    d = p1 - p2
    return {
        "diff": d,
        "low": d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
        "high": d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2),
    }


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, seed: int = 0, draws: int = 10_000
) -> dict[str, Any]:
    """mean(a - b) over paired values (the same images in two replays) with a percentile
    bootstrap 95 % interval: the images are resampled with replacement `draws` times."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same length, not {len(a)} and {len(b)}")
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if diffs.size == 0:
        return {"diff": None, "low": None, "high": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, diffs.size, size=(draws, diffs.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"diff": float(diffs.mean()), "low": float(low), "high": float(high), "n": diffs.size}


# The shares a replay report's total gives as {"k", "n"}, compared by Newcombe's interval.
SHARES = ("hand_drawn", "redraws", "machine_preferred")
# Per-image Dice figures of a report's "images", compared by a paired bootstrap.
PER_IMAGE = ("dice_accepted", "dice_best_machine")


def _by_name(report: dict[str, Any], which: str) -> dict[str, dict[str, Any]]:
    images = list(report["images"].values())
    names = [image["name"] for image in images]
    if len(set(names)) != len(names):
        raise ValueError(f"replay {which} has several images of the same name: pairs are by name")
    return {image["name"]: image for image in images}


def replay_compare(
    pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]], *, seed: int = 0
) -> dict[str, Any]:
    """Replays A minus replays B: pairs of reports (report.json) of the same data set, each
    pair usually one seed with and without an option. Per-image Dice differences over the
    images both replays of a pair measured (paired by image name, pooled over the pairs, one
    bootstrap), share differences over the pooled counts (Newcombe), and MD minutes.

    Raises:
        ValueError: no pair, a pair shares no image, or a report names two images alike.
    """
    if not pairs:
        raise ValueError("nothing to compare: give pairs of replay reports")
    diffs: dict[str, tuple[list[float], list[float]]] = {key: ([], []) for key in PER_IMAGE}
    shares = {key: [0, 0, 0, 0] for key in SHARES}  # k_a, n_a, k_b, n_b
    minutes = [0.0, 0.0]
    images = 0
    for a, b in pairs:
        images_a, images_b = _by_name(a, "A"), _by_name(b, "B")
        common = sorted(set(images_a) & set(images_b))
        if not common:
            raise ValueError(
                f"replays {a['replay']} and {b['replay']} share no image: compare replays of "
                "the same data set"
            )
        images += len(common)
        for key, (values_a, values_b) in diffs.items():
            for name in common:
                va, vb = images_a[name].get(key), images_b[name].get(key)
                if va is not None and vb is not None:
                    values_a.append(va)
                    values_b.append(vb)
        for key, counts in shares.items():
            ta, tb = a["total"][key], b["total"][key]
            for i, value in enumerate((ta["k"], ta["n"], tb["k"], tb["n"])):
                counts[i] += value
        minutes[0] += a["total"]["md_minutes"]
        minutes[1] += b["total"]["md_minutes"]
    return {
        "a": [{"replay": a["replay"], "seed": a["seed"], "options": _setting(a)} for a, _ in pairs],
        "b": [{"replay": b["replay"], "seed": b["seed"], "options": _setting(b)} for _, b in pairs],
        "images": images,
        "per_image": {
            key: paired_bootstrap(values_a, values_b, seed=seed)
            for key, (values_a, values_b) in diffs.items()
        },
        "shares": {
            key: {
                "a": {"k": ka, "n": na},
                "b": {"k": kb, "n": nb},
                **newcombe_difference(ka, na, kb, nb),
            }
            for key, (ka, na, kb, nb) in shares.items()
        },
        "md_minutes": {"a": minutes[0], "b": minutes[1]},
    }


def _setting(report: dict[str, Any]) -> str:
    """The options that differ from the defaults, in words (for the comparison's heading)."""
    config = report["config"]
    parts = [f"preset {config['preset']}"]
    if config.get("start_weights"):
        parts.append(f"start weights {config['start_weights']}")
    if config.get("lung_filter"):
        parts.append("lung filter")
    if config.get("order", "queue") != "queue":
        parts.append(f"order {config['order']}")
    return ", ".join(parts)


def _interval(d: dict[str, Any], *, pct: bool = False) -> str:
    if d["diff"] is None:
        return "–"
    f = (lambda v: f"{v * 100:+.0f} pt") if pct else (lambda v: f"{v:+.3f}")
    return f"{f(d['diff'])} [{f(d['low'])}, {f(d['high'])}]"


def compare_markdown(c: dict[str, Any]) -> str:
    """The comparison as a Markdown table."""
    lines = [
        f"# Replays A − replays B ({len(c['a'])} pair{'s' * (len(c['a']) != 1)}, "
        f"{c['images']} images in both)",
        "",
        *[
            f"- A: {a['replay']} (seed {a['seed']}; {a['options']}) · "
            f"B: {b['replay']} (seed {b['seed']}; {b['options']})"
            for a, b in zip(c["a"], c["b"], strict=True)
        ],
        "",
        "| figure | A | B | A − B [95 % CI] |",
        "|---|---|---|---|",
    ]
    names = {"dice_accepted": "Dice of accepted masks", "dice_best_machine": "best network Dice"}
    for key, d in c["per_image"].items():
        lines.append(f"| {names[key]} (paired, n={d['n']}) | | | {_interval(d)} |")
    for key, d in c["shares"].items():
        a, b = d["a"], d["b"]
        lines.append(
            f"| {key.replace('_', ' ')} | {a['k']}/{a['n']} | {b['k']}/{b['n']} | "
            f"{_interval(d, pct=True)} |"
        )
    m = c["md_minutes"]
    lines.append(f"| MD minutes | {m['a']:.1f} | {m['b']:.1f} | {m['a'] - m['b']:+.1f} |")
    lines += [
        "",
        "_Dice: mean of per-image differences, percentile bootstrap over the images; shares:"
        " Newcombe's hybrid score interval (independent shares)._",
    ]
    return "\n".join(lines) + "\n"
