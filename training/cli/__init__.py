"""Command line for the ML core, without Django: ``python -m training.cli <command> ...``.

Commands (a module each):
    train     fit one network (segmentation, or ``--task classifier``) on a folder of CXRs
    evaluate  pixel- and image-level metrics with 95 % CIs and confusion matrices
    sweep     architectures × encoders × frozen/not frozen under grouped k-fold CV, with the
              paper's Tables I, III, IV and VIII (Markdown and JSON) and PR curves (PNG)

Infection maps and severity come from ``python -m inference.cli predict`` (the maps are
inference's; training never imports inference).

Folders are read by `training.nets.layouts.read_dataset`, as the platform's import reads them:
QaTa-COV19, COVID-QU-Ex, a folder with a CSV of file,class,patient, or a folder of images with
``--masks`` or a sibling mask folder. Training and evaluation use the images whose infection
mask is known (controls' masks are empty). The default preset is
``$MASKLOOP_DEFAULT_PRESET`` when set.

Progress goes to stderr, results to stdout and files.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import training.nets  # noqa: F401  (sets SM_FRAMEWORK / TF_USE_LEGACY_KERAS before TF loads)
from training.cli import evaluate, sweep, train
from training.cli.progress import ProgressBar, say

__all__ = ["ProgressBar", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of all commands.

    Returns:
        A parser whose namespaces carry `func`, the command to run.
    """
    parser = argparse.ArgumentParser(
        prog="python -m training.cli",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (train, evaluate, sweep):
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command.

    Args:
        argv: the arguments (default: sys.argv[1:]).

    Returns:
        The exit status: 0 done, 1 nothing produced, 2 bad input (the error is on stderr).
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        say(f"error: {exc}")
        return 2
