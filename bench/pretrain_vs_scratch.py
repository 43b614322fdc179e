"""Held-out Dice of a Stage I round from scratch vs from a self-supervised pretrained encoder,
on phantoms, same seed, at CPU size (a point estimate: `manage.py replay` makes the proper
comparison, with confidence intervals).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/maskloop_bench \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/2 \\
        .venv/bin/python bench/pretrain_vs_scratch.py [--images 24] [--pretrain-epochs 20]

**Erases that database.** Tasks run in this process (Celery's eager mode): the real services,
the real training and prediction code, no worker. Prints, per round, the figure the round
computes ("held_out_dice_vs_manual" of every model version: Dice of each held-out image's
prediction against the MD's mask), and Dice against the phantoms' true infection as well.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.benchenv import setup_django  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=24, help="COVID-19 phantoms with MD masks")
    p.add_argument("--controls", type=int, default=8)
    p.add_argument("--size", type=int, default=64, help="phantom side in px")
    p.add_argument("--unlabelled", type=int, default=24, help="extra phantoms without masks")
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--epochs", type=int, help="the rounds' epochs (default: the preset's)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default="unet")
    args = p.parse_args()

    setup_django()
    from django.core.management import call_command

    from config.celery import app

    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    app.loader.import_default_modules()
    app.conf.update(task_always_eager=True, task_eager_propagates=True)

    from django.conf import settings

    settings.MASKLOOP_SCREEN_MIN_SIDE = 32
    settings.MASKLOOP_NEAR_DUPLICATE_DISTANCE = 4

    from django.contrib.auth import get_user_model

    from annotation import imaging, services
    from annotation.models import Image, ImageClass, Mask, Role, Round
    from annotation.phantoms import make_phantom, md_drawing
    from config import storage

    users = get_user_model().objects
    admin = users.create_user("bench-admin", password="x")
    services.user_set_roles(user=admin, roles=[Role.ADMIN])
    drawer = users.create_user("bench-md", password="x")
    services.user_set_roles(user=drawer, roles=[Role.MD])

    truth: dict[int, np.ndarray] = {}
    n = 0
    kinds = [("covid", args.images), ("control", args.controls), ("unlabelled", args.unlabelled)]
    for kind, count in kinds:
        for _ in range(count):
            n += 1
            ph = make_phantom(1000 + n, size=args.size, covid=kind != "control")
            img = services.image_create(
                data=imaging.encode_png(ph.image),
                name=f"phantom_{n:04d}.png",
                source="bench",
                image_class=ImageClass.NORMAL if kind == "control" else ImageClass.COVID,
                patient_id=f"P{n}",
            )
            truth[img.pk] = ph.infection
            if kind == "covid":
                drawing = md_drawing(ph.infection, n)
                services.mask_draw(image=img, author=drawer, data=imaging.encode_mask(drawing))
    print(f"{Image.objects.count()} phantoms ({args.size} px) imported", flush=True)

    started = time.monotonic()
    row = services.encoder_pretrain_start(
        encoder="densenet121",
        preset=args.preset,
        started_by=admin,
        overrides={"epochs": args.pretrain_epochs, "seed": args.seed},
    )
    row.refresh_from_db()
    if row.status != "succeeded":
        sys.exit(f"pretraining failed: {row.failure_reason}")
    print(
        f"pretraining #{row.pk}: {row.metrics['images']} images, {row.epochs} epochs, "
        f"masked-pixel L1 {row.loss_history[0]:.4f} -> {row.loss_history[-1]:.4f} "
        f"({time.monotonic() - started:.0f} s)",
        flush=True,
    )

    results = {}
    for label, start in (("scratch", None), ("pretrained", row.pk)):
        t0 = time.monotonic()
        rnd = services.round_start(
            stage=Round.Stage.STAGE_I,
            started_by=admin,
            preset=args.preset,
            folds=args.folds,
            seed=args.seed,
            networks=[(args.arch, "densenet121")],
            overrides={"epochs": args.epochs} if args.epochs else None,
            pretrained_encoder=start,
        )
        rnd.refresh_from_db()
        if rnd.status != Round.Status.REVIEWING:
            sys.exit(f"round {rnd.number} is {rnd.status}: {rnd.failure_reason}")
        per_image: dict[str, float] = {}
        vs_truth: list[float] = []
        for run in rnd.training_runs.select_related("model_version"):
            mv = run.model_version
            per_image.update(mv.metrics["held_out_dice_by_image"])
            for mask in Mask.objects.filter(model_version=mv, round=rnd):
                pred = imaging.read_mask_png(storage.read(mask.file.name))
                t = truth[mask.image_id]
                denom = pred.sum() + t.sum()
                vs_truth.append(1.0 if denom == 0 else 2 * (pred & t).sum() / denom)
        values = np.array(list(per_image.values()))
        results[label] = {
            "round": rnd.number,
            "held_out_dice_vs_manual": float(values.mean()),
            "sd": float(values.std(ddof=1)),
            "images": len(values),
            "dice_vs_true_infection": float(np.mean(vs_truth)),
            "start_weights": [
                r.model_version.metrics.get("start_weights") for r in rnd.training_runs.all()
            ],
            "seconds": round(time.monotonic() - t0, 1),
        }
        print(f"{label}: {json.dumps(results[label])}", flush=True)
        services.round_cancel(round=rnd, by=admin)
    gain = (
        results["pretrained"]["held_out_dice_vs_manual"]
        - results["scratch"]["held_out_dice_vs_manual"]
    )
    print(f"difference (pretrained - scratch) in held-out Dice vs the MD masks: {gain:+.4f}")
    print(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
