"""``sweep``: architectures × encoders × frozen/not frozen under grouped k-fold CV, with the
paper's Tables I, III, IV and VIII (Markdown and JSON) and PR curves (PNG)."""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.cli.common import add_training_options, config_from_args
from training.cli.evaluate import Evaluation, evaluate_samples
from training.cli.plotting import draw_pr_curves
from training.cli.progress import fit_progress, say
from training.cli.report import pct, sweep_markdown
from training.nets.config import (
    ARCHITECTURE_LABELS,
    ARCHITECTURES,
    ENCODER_LABELS,
    ENCODERS,
    TrainConfig,
)
from training.nets.detection import THRESHOLD
from training.nets.layouts import Dataset, read_dataset
from training.nets.provenance import data_version


def _config_id(config: TrainConfig) -> str:
    return f"{config.arch}-{config.encoder}-{'frozen' if config.freeze_encoder else 'trainable'}"


def _param_counts(model: Any) -> tuple[int, int]:
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    frozen = sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)
    return trainable, frozen


def _parse_encoder_weights(items: Sequence[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        encoder, sep, path = item.partition("=")
        if not sep or encoder not in ENCODERS:
            raise SystemExit(
                f"--encoder-weights takes ENCODER=PATH with ENCODER one of "
                f"{', '.join(ENCODERS)}; got {item!r}"
            )
        out[encoder] = path
    return out


def sweep_configs(args: argparse.Namespace) -> list[TrainConfig]:
    """Every (architecture, encoder, frozen) configuration the arguments ask for."""
    freeze = {"no": (False,), "yes": (True,), "both": (False, True)}[args.frozen]
    weights = _parse_encoder_weights(args.encoder_weights)
    configs = []
    for arch in args.archs:
        for encoder in args.encoders:
            for frozen in freeze:
                configs.append(
                    config_from_args(
                        args,
                        arch=arch,
                        encoder=encoder,
                        freeze_encoder=frozen,
                        weights=weights.get(encoder),
                    )
                )
    for config in configs:
        if config.encoder == "inceptionv3" and config.input_size < 96:
            raise SystemExit(
                f"inceptionv3 needs --size >= 96 (the {args.preset} preset uses "
                f"{config.input_size})"
            )
    return configs


def _fold_split(data: Dataset, n_folds: int, seed: int) -> dict[str, int]:
    from training.nets.folds import grouped_stratified_folds

    return grouped_stratified_folds(
        data.keys, data.classes, data.groups, n_folds=n_folds, seed=seed
    )


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Trains and evaluates every configuration on every fold; returns the results.

    Each fold's run folder keeps its eval.json, so an interrupted sweep reuses finished folds
    and resumes a fold's training from its last checkpointed epoch.
    """
    from training.nets.fit import fit
    from training.nets.predict import Member, load_model

    data = read_dataset(args.data)
    say(data.summary())
    data = data.annotated()
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
                say(f"[{done}/{total}] {cid} fold {fold}: empty, skipped")
                continue
            run_dir = out / "runs" / cid / f"fold{fold}"
            eval_path = run_dir / "eval.json"
            if eval_path.is_file():
                saved = json.loads(eval_path.read_text())
                ev = Evaluation.from_dict(saved["evaluation"])
                params = tuple(saved["params"])
                say(f"[{done}/{total}] {cid} fold {fold}: done before, reusing {eval_path}")
            else:
                train_data = data.subset(train)
                if fold not in versions:
                    versions[fold] = data_version(train_data.images, train_data.masks)
                say(
                    f"[{done}/{total}] {cid} fold {fold}: training on {len(train)}, "
                    f"testing on {len(test)}"
                )
                on_progress, close = fit_progress(f"{cid} f{fold}")
                try:
                    result = fit(
                        config,
                        train_data.images,
                        train_data.masks,
                        out_dir=run_dir,
                        on_progress=on_progress,
                        covid_flags=train_data.covid_flags,
                        extra={
                            "data_version": versions[fold],
                            "fold": fold,
                            "n_folds": args.folds,
                            "test_keys": [s.key for s in test],
                        },
                        resume=True,
                        mixed_precision=args.mixed_precision,
                        xla=args.xla,
                    )
                finally:
                    close()
                model = load_model(config, str(result.weights_path))
                params = _param_counts(model)
                member = Member(config, result.weights_path, model)
                ev = evaluate_samples(
                    [member],
                    test,
                    batch_size=args.batch_size or 8,
                    bar_label=f"{cid} f{fold} test",
                    timing=True,
                )
                eval_path.write_text(
                    json.dumps(
                        {
                            "config": config.to_dict(),
                            "fold": fold,
                            "params": list(params),
                            "loss_history": result.loss_history,
                            "train_seconds": result.seconds,
                            "evaluation": ev.to_dict(),
                        }
                    )
                )
                shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
                if not args.keep_weights:
                    result.weights_path.unlink(missing_ok=True)
            merged.merge(ev)
            fold_report = ev.report(args.ci_n)
            per_fold.append({"fold": fold, "n_test": len(test), **fold_report})
            img = fold_report["image"]["scores"]
            say(
                f"    fold {fold}: pixel F1 {pct(fold_report['pixel']['scores']['f1'], None)}"
                f" | detection sensitivity {pct(img['sensitivity'], None)}, "
                f"specificity {pct(img['specificity'], None)}"
            )
        if params is None:
            continue
        report = merged.report(args.ci_n)
        precision, recall, _ = (
            merged.pixel_curve.precision_recall_curve()
            if merged.pixel_curve.positives.any() or merged.pixel_curve.negatives.any()
            else ([], [], [])
        )
        results[cid] = {
            "config": config.to_dict(),
            "arch": config.arch,
            "encoder": config.encoder,
            "frozen": config.freeze_encoder,
            "params": {"trainable": params[0], "non_trainable": params[1]},
            **report,
            "pixel_pr_curve": {
                "precision": np.asarray(precision).tolist(),
                "recall": np.asarray(recall).tolist(),
            },
            "folds": per_fold,
        }
    return {
        "data": {
            "root": str(data.root),
            "layout": data.layout,
            "n_images": len(data),
            "n_covid": sum(data.covid_flags),
        },
        "folds": args.folds,
        "fold_seed": args.fold_seed,
        "preset": args.preset,
        "threshold": THRESHOLD,
        "ci_n": args.ci_n,
        "fold_of": folds,
        "results": results,
    }


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``sweep`` to the command line."""
    p = sub.add_parser("sweep", help="architectures × encoders under grouped k-fold CV")
    p.add_argument("--data", required=True, help="data root (COVID-QU-Ex or QaTa-COV19 layout)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--fold-seed", type=int, default=0, dest="fold_seed")
    p.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    p.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=ENCODERS)
    p.add_argument(
        "--frozen",
        choices=("no", "yes", "both"),
        default="both",
        help="encoder frozen, not frozen, or both (default)",
    )
    p.add_argument(
        "--encoder-weights",
        nargs="*",
        dest="encoder_weights",
        metavar="ENC=PATH",
        help="initial weights per encoder, e.g. chexnet=/data/chexnet.h5 "
        "densenet121=imagenet (default: random initialisation)",
    )
    p.add_argument("--out", required=True)
    p.add_argument(
        "--keep-weights",
        action="store_true",
        dest="keep_weights",
        help="keep every fold's model.weights.h5 (default: only eval.json, run.json)",
    )
    p.add_argument("--ci-n", choices=("denominator", "paper"), default="denominator", dest="ci_n")
    add_training_options(p, "tiny")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Runs the sweep; writes results.json, tables.md and pr_curves.png under --out."""
    summary = run_sweep(args)
    out = Path(args.out)
    if not summary["results"]:
        say("no configuration produced results (too few images for the folds?)")
        return 1
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    markdown = sweep_markdown(summary)
    (out / "tables.md").write_text(markdown)
    curves = [
        (
            f"{ARCHITECTURE_LABELS[r['arch']]} {ENCODER_LABELS[r['encoder']]}"
            f"{' (frozen)' if r['frozen'] else ''}",
            np.asarray(r["pixel_pr_curve"]["precision"]),
            np.asarray(r["pixel_pr_curve"]["recall"]),
        )
        for r in summary["results"].values()
        if r["pixel_pr_curve"]["precision"]
    ]
    draw_pr_curves(curves, out / "pr_curves.png")
    print(markdown)
    say(f"tables: {out / 'tables.md'}, {out / 'results.json'}; PR curves: {out / 'pr_curves.png'}")
    return 0
