"""What the commands share: training options, configs from them, reading data folders."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence
from typing import Any

from training.cli.progress import say
from training.nets.config import PRESETS, TrainConfig, preset
from training.nets.layouts import read_dataset
from training.nets.samples import Dataset

DEFAULT_PRESET_ENV = "MASKLOOP_DEFAULT_PRESET"


def default_preset(fallback: str) -> str:
    """``$MASKLOOP_DEFAULT_PRESET`` when set, else `fallback`.

    Raises:
        SystemExit: the variable names no preset.
    """
    name = os.environ.get(DEFAULT_PRESET_ENV) or fallback
    if name not in PRESETS:
        raise SystemExit(
            f"{DEFAULT_PRESET_ENV}={name!r} is not a preset; choose one of {', '.join(PRESETS)}"
        )
    return name


def add_training_options(p: argparse.ArgumentParser, fallback_preset: str) -> None:
    """The options `train` and `sweep` share: a preset and what may override it.

    Args:
        p: the command's parser.
        fallback_preset: the default preset where ``$MASKLOOP_DEFAULT_PRESET`` is not set.
    """
    name = default_preset(fallback_preset)
    p.add_argument(
        "--preset",
        default=name,
        choices=list(PRESETS),
        help=f"base settings (default {name}, or ${DEFAULT_PRESET_ENV}); the options "
        "below override",
    )
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--size", type=int, help="network input side, a multiple of 32")
    p.add_argument("--batch-size", type=int, dest="batch_size", help="training batch size")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument(
        "--no-augment",
        action="store_true",
        help="no random shift/rotation of the oversampled COVID-19 copies",
    )
    p.add_argument(
        "--mixed-precision", action="store_true", help="float16 compute on a GPU (ignored on a CPU)"
    )
    p.add_argument(
        "--xla", action="store_true", help="XLA auto-clustering of the training graph (GPU)"
    )


def config_from_args(args: argparse.Namespace, **fixed: Any) -> TrainConfig:
    """The preset of ``--preset`` with the options given on the command line and `fixed`."""
    overrides: dict[str, Any] = {}
    for name, attr in (
        ("epochs", "epochs"),
        ("input_size", "size"),
        ("batch_size", "batch_size"),
        ("learning_rate", "lr"),
        ("seed", "seed"),
    ):
        value = getattr(args, attr, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "no_augment", False):
        overrides["augment"] = False
    return preset(args.preset, **overrides, **fixed)


def load_data(images: str, masks: str | None = None, lungs: str | None = None) -> Dataset:
    """Reads a data folder (`training.nets.layouts.read_dataset`) and says what it found."""
    data = read_dataset(images, masks, lungs)
    say(data.summary())
    return data


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
