"""Seeds a QaTa-sized database fast, for the scale benchmarks (review load, round operations,
exports, statistics).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/maskloop_bench \\
        .venv/bin/python bench/seed_scale.py --images 120000 --covid 9000 --items 8800

**It erases every maskloop row of that database first** (never point it at real data). It
then writes, with bulk inserts:

- `--images` CXRs, `--covid` of them COVID-19, the rest non-COVID / normal controls, each
  control with its empty mask accepted as ground truth (as ingest does);
- round 1, a finished Stage I: the COVID-19 images outside round 2 have a drawn mask,
  accepted as ground truth;
- round 2, a Stage II round of `--items` items with `--candidates` predicted masks each from
  as many networks (succeeded runs with model versions), open for review with shuffled
  labels; `--pending` leaves it training with pending items instead (to measure opening it);
  `--decided F` has the share F of its items already decided by the MDs;
- `--mds` MD users (md01, md02, …), an admin (bench-admin) and a data-team user
  (bench-data), all with the password `bench-pass-123`.

Files: a few real phantom PNGs are stored once and shared by all rows, so pages and the API
serve real images without writing 120 K files. Prints the seconds each part took and, last,
a JSON line with the round's id and number and the user names. As a module:
`seed(images=…, covid=…, items=…, candidates=…, mds=…, decided=0.0, pending=False)`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.benchenv import setup_django  # noqa: E402

PASSWORD = "bench-pass-123"
BATCH = 5000
LABELS = "ABCDEFGHIJ"
FILES = 8  # distinct phantom files shared by the rows
NETWORKS = [
    ("unet", "densenet121"),
    ("unetpp", "densenet121"),
    ("dla", "densenet121"),
    ("unet", "resnet50"),
    ("unetpp", "resnet50"),
    ("dla", "resnet50"),
    ("unet", "inceptionv3"),
    ("unetpp", "inceptionv3"),
]


def _erase() -> None:
    from django.apps import apps
    from django.db import connection

    tables = [
        m._meta.db_table
        for label in ("annotation", "training", "maskloop")
        for m in apps.get_app_config(label).get_models()
    ]
    with connection.cursor() as cur:
        cur.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        cur.execute(
            "DELETE FROM auth_user_groups WHERE user_id IN "
            "(SELECT id FROM auth_user WHERE username LIKE 'md%%' OR username LIKE 'bench-%%')"
        )
        cur.execute("DELETE FROM auth_user WHERE username LIKE 'md%%' OR username LIKE 'bench-%%'")


def _store_files() -> tuple[list[str], list[str], list[str]]:
    """A few real PNGs: CXRs, drawn-looking masks and an empty mask, stored once."""
    import numpy as np

    from annotation import imaging, storage
    from annotation.phantoms import make_phantom

    images, masks = [], []
    for i in range(FILES):
        p = make_phantom(i, size=512)
        images.append(storage.store(f"display/scale_{i}.png", imaging.encode_png(p.image)))
        masks.append(storage.store(f"masks/scale_{i}.png", imaging.encode_png(p.infection)))
    empty = storage.store("masks/empty.png", imaging.encode_png(np.zeros((512, 512), np.uint8)))
    return images, masks, [empty]


def _users(mds: int) -> dict[str, Any]:
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import Group, User

    from annotation.models import Role

    password = make_password(PASSWORD)
    groups = {role: Group.objects.get_or_create(name=role)[0] for role in Role.values}
    md_users = User.objects.bulk_create(
        [User(username=f"md{i + 1:02d}", password=password) for i in range(mds)]
    )
    admin = User.objects.create(username="bench-admin", password=password, is_staff=True)
    data = User.objects.create(username="bench-data", password=password)
    groups["md"].user_set.add(*md_users)
    groups["admin"].user_set.add(admin)
    groups["data"].user_set.add(data)
    return {"mds": md_users, "admin": admin, "data": data}


def _bulk(model: Any, rows: list[Any]) -> list[Any]:
    return model.objects.bulk_create(rows, batch_size=BATCH)


def seed(
    *,
    images: int = 120_000,
    covid: int = 9_000,
    items: int = 8_800,
    candidates: int = 5,
    mds: int = 20,
    decided: float = 0.0,
    pending: bool = False,
    seed: int = 0,
    log: Any = print,
) -> dict[str, Any]:
    from django.db import transaction
    from django.utils import timezone

    from annotation.models import (
        Candidate,
        Decision,
        GroundTruth,
        Image,
        ImageClass,
        Mask,
        ReviewItem,
        Round,
    )
    from training.models import ModelVersion, TrainingRun

    if not 0 < items <= covid <= images:
        raise SystemExit("need 0 < items <= covid <= images")
    if not 1 <= candidates <= len(NETWORKS):
        raise SystemExit(f"candidates must be 1..{len(NETWORKS)}")
    rng = random.Random(seed)
    clock = time.perf_counter()

    def lap(what: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        log(f"  {what:<44} {now - clock:7.1f} s")
        clock = now

    _erase()
    displays, drawn_files, (empty_file,) = _store_files()
    users = _users(mds)
    lap("erase, files, users")

    with transaction.atomic():
        stage_i = Round.objects.create(
            number=1,
            stage=Round.Stage.STAGE_I,
            status=Round.Status.DONE,
            started_by=users["admin"],
            finished_at=timezone.now(),
            config={"networks": [list(n) for n in NETWORKS[:3]], "folds": 5, "preset": "tiny"},
        )
        stage_ii = Round.objects.create(
            number=2,
            stage=Round.Stage.STAGE_II,
            status=Round.Status.TRAINING if pending else Round.Status.REVIEWING,
            started_by=users["admin"],
            config={"networks": [list(n) for n in NETWORKS[:candidates]], "preset": "tiny"},
        )

        # Images: COVID-19 first (the first `items` go to round 2), then the controls.
        classes = [ImageClass.NON_COVID, ImageClass.NORMAL]
        in_review = Image.Status.IN_ROUND if pending else Image.Status.IN_REVIEW
        rows = []
        for i in range(images):
            is_covid = i < covid
            status = (
                (in_review if i < items else Image.Status.ACCEPTED)
                if is_covid
                else Image.Status.ACCEPTED
            )
            rows.append(
                Image(
                    name=f"scale_{i:06d}.png",
                    original=displays[i % FILES],
                    display=displays[i % FILES],
                    sha256=f"{i:064x}",
                    width=512,
                    height=512,
                    source="bench-scale",
                    image_class=ImageClass.COVID if is_covid else classes[i % 2],
                    patient_id=f"P{i // 2:06d}",
                    status=status,
                )
            )
        imgs = _bulk(Image, rows)
        lap(f"{images} images")

        # Ground truth outside round 2: drawn masks (Stage I) and empty control masks.
        md_users = users["mds"]
        masks = []
        for n, img in enumerate(imgs[items:]):
            drawn = img.image_class == ImageClass.COVID
            masks.append(
                Mask(
                    image=img,
                    version=1,
                    file=drawn_files[n % FILES] if drawn else empty_file,
                    sha256=f"{n:064x}",
                    area=4000 if drawn else 0,
                    source=Mask.Source.DRAWN if drawn else Mask.Source.CONTROL,
                    author=md_users[n % len(md_users)] if drawn else None,
                )
            )
        masks = _bulk(Mask, masks)
        _bulk(
            GroundTruth,
            [GroundTruth(image_id=m.image_id, mask=m, accepted_by=users["admin"]) for m in masks],
        )
        lap(f"{len(masks)} ground truths (drawn and controls)")

        # Round 2: its runs, model versions, items and predicted candidates.
        run_status = TrainingRun.Status.PREDICTING if pending else TrainingRun.Status.SUCCEEDED
        runs = _bulk(
            TrainingRun,
            [
                TrainingRun(
                    round=stage_ii,
                    arch=arch,
                    encoder=encoder,
                    status=run_status,
                    epochs=2,
                    epoch=2,
                    target_image_ids=[img.pk for img in imgs[:items]],
                    predicted=items,
                )
                for arch, encoder in NETWORKS[:candidates]
            ],
        )
        versions = _bulk(
            ModelVersion,
            [
                ModelVersion(
                    run=run,
                    arch=run.arch,
                    encoder=run.encoder,
                    weights=f"models/scale-{run.pk}.weights.h5",
                    data_version="bench",
                )
                for run in runs
            ],
        )
        item_rows = _bulk(
            ReviewItem,
            [
                ReviewItem(
                    round=stage_ii,
                    image=img,
                    status=ReviewItem.Status.PENDING if pending else ReviewItem.Status.OPEN,
                )
                for img in imgs[:items]
            ],
        )
        predicted = _bulk(
            Mask,
            [
                Mask(
                    image=img,
                    version=c + 1,
                    file=drawn_files[(img.pk + c) % FILES],
                    sha256=f"{img.pk:032x}{c:032x}",
                    area=3000 + 100 * c,
                    source=Mask.Source.PREDICTED,
                    model_version=versions[c],
                    round=stage_ii,
                )
                for img in imgs[:items]
                for c in range(candidates)
            ],
        )
        cands = []
        for n, item in enumerate(item_rows):
            labels = list(LABELS[:candidates])
            rng.shuffle(labels)
            for c in range(candidates):
                cands.append(
                    Candidate(
                        item=item,
                        mask=predicted[n * candidates + c],
                        label="" if pending else labels[c],
                    )
                )
        cands = _bulk(Candidate, cands)
        lap(f"round 2: {items} items x {candidates} candidates")

        # Decided share: MDs in turn pick a candidate; the item is accepted.
        n_decided = 0 if pending else round(items * decided)
        if n_decided:
            now = timezone.now()
            picks, done = [], []
            for n, item in enumerate(item_rows[:n_decided]):
                item.status = ReviewItem.Status.ACCEPTED
                item.agreement = 1.0
                item.resolved_at = now
                done.append(item)
                picks.append(
                    Decision(
                        item=item,
                        reviewer=md_users[n % len(md_users)],
                        candidate=cands[n * candidates + rng.randrange(candidates)],
                        seconds=rng.uniform(3, 30),
                    )
                )
            ReviewItem.objects.bulk_update(
                done, ["status", "agreement", "resolved_at"], batch_size=BATCH
            )
            picks = _bulk(Decision, picks)
            _bulk(
                GroundTruth,
                [
                    GroundTruth(
                        image_id=d.item.image_id,
                        mask_id=d.candidate.mask_id,  # type: ignore[union-attr]  # never a redraw
                        item=d.item,
                        decision=d,
                        accepted_by=d.reviewer,
                    )
                    for d in picks
                ],
            )
            Image.objects.filter(pk__in=[d.item.image_id for d in picks]).update(
                status=Image.Status.ACCEPTED
            )
            if n_decided == items:
                stage_ii.status = Round.Status.DONE
                stage_ii.finished_at = now
                stage_ii.save(update_fields=["status", "finished_at"])
            lap(f"{n_decided} decisions")

    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("ANALYZE")
    lap("analyze")
    return {
        "round_id": stage_ii.pk,
        "round_number": stage_ii.number,
        "stage_i_round_id": stage_i.pk,
        "items": items,
        "decided": n_decided,
        "mds": [u.username for u in md_users],
        "admin": users["admin"].username,
        "data": users["data"].username,
        "password": PASSWORD,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120_000)
    parser.add_argument("--covid", type=int, default=9_000)
    parser.add_argument("--items", type=int, default=8_800)
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--mds", type=int, default=20)
    parser.add_argument("--decided", type=float, default=0.0, help="share of items decided")
    parser.add_argument("--pending", action="store_true", help="leave round 2 training")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("set DATABASE_URL to a PostgreSQL database (it is erased first)")
    setup_django()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    out = seed(
        images=args.images,
        covid=args.covid,
        items=args.items,
        candidates=args.candidates,
        mds=args.mds,
        decided=args.decided,
        pending=args.pending,
        seed=args.seed,
    )
    print(f"seeded in {time.perf_counter() - started:.1f} s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
