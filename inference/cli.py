"""Command line for infection maps, without Django: ``python -m inference.cli predict ...``.

    predict   an infection map (PNG) per CXR and a CSV of detection, maximum probability,
              infected share and severity, from one trained network or an ensemble

Folders are read as ``python -m training.cli`` reads them (`training.nets.layouts`). Progress
goes to stderr, results to stdout and files.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

import training.nets  # noqa: F401  (sets SM_FRAMEWORK / TF_USE_LEGACY_KERAS before TF loads)
from inference.maps import THRESHOLD, detect, infection_map, severity
from training.cli.common import batches, load_data
from training.cli.progress import ProgressBar, say
from training.nets.layouts import Dataset, index_masks


def _lung_index(lungs_dir: str | None, data: Dataset) -> dict[str, Path | None]:
    """Lung mask per sample key: from --lungs (matched by name) or the data set's own."""
    if lungs_dir is None:
        return {s.key: s.lung for s in data.samples}
    index = index_masks(Path(lungs_dir))
    return {s.key: index.get(s.image.stem.lower()) for s in data.samples}


def cmd_predict(args: argparse.Namespace) -> int:
    """Writes an infection map per CXR and predictions.csv; prints a one-line summary."""
    from training.nets.data import load_gray, load_mask, resize_probability
    from training.nets.predict import load_members, predict_ensemble

    data = load_data(args.images)
    lungs = _lung_index(args.lungs, data)
    members = load_members(args.weights)
    out = Path(args.out)
    maps_dir = out / "maps"
    maps_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with ProgressBar(len(data), "predict") as bar:
        for batch in batches(list(data.samples), args.batch_size):
            grays = [load_gray(s.image) for s in batch]
            for sample, gray, prob in zip(
                batch, grays, predict_ensemble(members, grays), strict=True
            ):
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
                rows.append(
                    {
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
                    }
                )
            bar.advance(len(batch))
    csv_path = out / "predictions.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    n_covid = sum(r["covid19"] for r in rows)
    print(
        f"{len(rows)} image(s), {n_covid} detected as COVID-19; maps in {maps_dir}, "
        f"table in {csv_path}"
    )
    if not any(lungs.values()):
        say(
            "no lung masks: shares are of the whole image and no severity grade is given "
            "(pass --lungs DIR)"
        )
    return 0


def _fmt(v: float | None) -> str:
    return "" if v is None or math.isnan(v) else f"{v:.4f}"


def build_parser() -> argparse.ArgumentParser:
    """The parser of the inference commands.

    Returns:
        A parser whose namespaces carry `func`, the command to run.
    """
    parser = argparse.ArgumentParser(
        prog="python -m inference.cli",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="infection maps and a CSV of findings")
    p.add_argument(
        "--weights",
        nargs="+",
        required=True,
        help="run folder(s) or weights file(s); several = ensemble (mean)",
    )
    p.add_argument("--images", required=True, help="folder of CXRs (or a data root)")
    p.add_argument("--out", required=True, help="output folder: maps/ and predictions.csv")
    p.add_argument("--lungs", help="folder of lung masks (same names): per-lung shares, grade")
    p.add_argument("--batch-size", type=int, default=8, dest="batch_size")
    p.add_argument(
        "--epsilon",
        type=float,
        default=0.02,
        help="probabilities below it are not drawn on the map",
    )
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command.

    Args:
        argv: the arguments (default: sys.argv[1:]).

    Returns:
        The exit status: 0 done, 2 bad input (the error is on stderr).
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        say(f"error: {exc}")
        return 2


if __name__ == "__main__":
    import sys

    sys.exit(main())
