"""``train``: fit one network (a segmentation network or a Grad-CAM classifier)."""

from __future__ import annotations

import argparse
import json

from training.cli.common import add_training_options, config_from_args, load_data
from training.cli.progress import fit_progress, say
from training.nets.config import ARCHITECTURES, ENCODERS, SEGMENTATION, TASKS, TrainConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``train`` to the command line."""
    p = sub.add_parser("train", help="fit one network")
    p.add_argument(
        "--images",
        required=True,
        help="folder of CXRs, or a data root (COVID-QU-Ex / QaTa-COV19 layout)",
    )
    p.add_argument("--masks", help="folder of infection masks (default: a sibling folder)")
    p.add_argument(
        "--task",
        default=SEGMENTATION,
        choices=TASKS,
        help="an infection-mask network (default) or the encoder's COVID-19 / "
        "control classifier for Grad-CAM",
    )
    p.add_argument("--arch", default=TrainConfig().arch, choices=ARCHITECTURES)
    p.add_argument("--encoder", default=TrainConfig().encoder, choices=ENCODERS)
    p.add_argument("--freeze", action="store_true", help="freeze the encoder (BN stays trainable)")
    p.add_argument("--weights", help="initial weights: 'imagenet' or a local encoder/model file")
    p.add_argument("--out", required=True, help="run folder (weights, run.json, checkpoint/)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last completed epoch checkpointed in --out",
    )
    p.add_argument(
        "--no-balance",
        dest="balance",
        action="store_false",
        help="do not oversample COVID-19 up to the control count (segmentation)",
    )
    add_training_options(p, "paper")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """Trains one network on the folder and prints where its weights and run.json are."""
    from training.nets.fit import fit

    config = config_from_args(
        args,
        task=args.task,
        arch=args.arch,
        encoder=args.encoder,
        freeze_encoder=args.freeze,
        weights=args.weights,
    )
    data = load_data(args.images, args.masks)
    if not config.is_classifier:
        # A COVID-19 image without a mask has no known infection to learn.
        annotated = data.annotated()
        if len(annotated) < len(data):
            say(f"training on the {len(annotated)} image(s) with a known infection mask")
        data = annotated
    on_progress, close = fit_progress("train")
    try:
        result = fit(
            config,
            data.images,
            None if config.is_classifier else data.masks,
            out_dir=args.out,
            on_progress=on_progress,
            # A classifier's labels are the COVID-19 flags; they are always passed.
            covid_flags=data.covid_flags if args.balance or config.is_classifier else None,
            extra={"data_root": str(data.root), "layout": data.layout},
            resume=args.resume,
            mixed_precision=args.mixed_precision,
            xla=args.xla,
        )
    finally:
        close()
    print(
        json.dumps(
            {
                "weights": str(result.weights_path),
                "run": str(result.run_path),
                "loss_history": result.loss_history,
                "seconds": round(result.seconds, 2),
                "resumed_from_epoch": result.initial_epoch,
            },
            indent=2,
        )
    )
    return 0
