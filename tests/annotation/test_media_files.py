"""Media files under concurrency and failure: display copies are written atomically, and
`manage.py media_orphans` finds the files no row refers to (on a local folder and on S3)."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.db import transaction

from annotation import imaging, services, storage
from annotation.models import Image, Mask, Round
from training.models import TrainingRun

pytest_plugins = ["tests.objectstore"]  # the SeaweedFS fixtures: object_store, s3_storage
pytestmark = pytest.mark.django_db

DAY = 24 * 3600


def png(seed: int, size: int = 700) -> bytes:
    rng = np.random.default_rng(seed)
    return imaging.encode_png(rng.integers(0, 255, (size, size), dtype=np.uint8))


def stored_under(prefix: str) -> list[str]:
    """Every stored name under `prefix/`, through the storage API."""
    try:
        dirs, files = default_storage.listdir(prefix)
    except FileNotFoundError:
        return []
    names = [f"{prefix}/{f}" for f in files]
    for sub in dirs:
        names += stored_under(f"{prefix}/{sub}")
    return sorted(names)


def race(fn, n: int = 8) -> list:
    """Calls `fn` from `n` threads released at the same instant."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


# --- display copies --------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["image", "overlay"])
def test_concurrent_requests_for_a_display_copy_leave_one_file(settings, form):
    name = storage.store("display/ab/abc.png", png(1))
    copies = race(lambda: storage.display_copy(name, 512, form=form))
    assert len(set(copies)) == 1 and imaging.decode_image(copies[0]).gray.shape[0] == 512
    cached = stored_under("display-cache")
    assert len(cached) == 1, cached  # not one per request
    assert cached[0].endswith(f"/{name}")
    assert storage.read(cached[0]) == copies[0]
    assert not [p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.name.endswith(".tmp")]


def test_concurrent_display_copies_on_the_object_store_leave_one_object(s3_storage):
    name = storage.store("display/cd/cde.png", png(2))
    copies = race(lambda: storage.display_copy(name, 1024), n=4)
    assert len(set(copies)) == 1
    assert stored_under("display-cache") == [f"display-cache/1024/{name}"]
    assert storage.display_copy(name, 1024) == copies[0]  # read back from the store


# --- media_orphans ---------------------------------------------------------------------------


def run_command(*args: str) -> str:
    out = io.StringIO()
    call_command("media_orphans", *args, stdout=out)
    return out.getvalue()


def listed(output: str) -> set[str]:
    return {line.split("\t")[0] for line in output.splitlines() if "\t" in line}


def age(names: list[str], seconds: float) -> None:
    """Dates local stored files `seconds` back, as if written then."""
    for name in names:
        path = default_storage.path(name)
        then = time.time() - seconds
        os.utime(path, (then, then))


@pytest.fixture
def stored_world(make_image, md, admin_user):
    """Two images with MD masks, a round whose runs are queued, and files no row holds."""
    images = [make_image(manual_by=md) for _ in range(2)]
    rnd = services.round_start(
        stage=Round.Stage.STAGE_I,
        started_by=admin_user,
        networks=[("unet", "densenet121")],
        folds=2,
        preset="tiny",
    )
    live_run = rnd.training_runs.first()
    storage.display_copy(images[0].display.name, 512)
    kept_cache = f"display-cache/512/{images[0].display.name}"
    live_checkpoint = f"checkpoints/run-{live_run.pk}/history.json"
    default_storage.save(live_checkpoint, io.BytesIO(b"{}"))

    # A mask stored by a transaction that rolled back: the file stays, its row does not.
    undrawn = make_image()
    with pytest.raises(RuntimeError), transaction.atomic():
        services.mask_draw(image=undrawn, author=md, data=imaging.encode_mask(np.ones((64, 64))))
        rolled_back = Mask.objects.get(image=undrawn).file.name
        raise RuntimeError("the request failed after the mask was stored")
    assert not Mask.objects.filter(file=rolled_back).exists() and storage.exists(rolled_back)

    orphans = {
        rolled_back,
        storage.store("originals/ff/ffff.png", b"stray upload"),
        storage.store("exports/maskloop-export-gone.zip", b"PK"),
        storage.store("models/run-999.weights.h5", b"w"),
        "display-cache/512/masks/0/gone.png",
        "checkpoints/run-999999/fold-0/best.weights.h5",
    }
    default_storage.save("display-cache/512/masks/0/gone.png", io.BytesIO(b"x"))
    default_storage.save("checkpoints/run-999999/fold-0/best.weights.h5", io.BytesIO(b"x"))
    referenced = [
        name
        for image in Image.objects.all()
        for name in (image.original.name, image.display.name, image.lung_mask.name)
        if name
    ] + list(Mask.objects.values_list("file", flat=True))
    return {
        "orphans": orphans,
        "kept": set(referenced) | {kept_cache, live_checkpoint},
        "live_run": live_run,
    }


def test_media_orphans_lists_only_unreferenced_old_files_and_deletes_nothing_by_default(
    stored_world,
):
    everything = sorted(stored_world["orphans"] | stored_world["kept"])
    assert run_command().splitlines()[-1].startswith("0 orphan file(s)")  # all too young
    age(everything, 2 * DAY)

    output = run_command()
    assert listed(output) == stored_world["orphans"]
    assert "nothing deleted" in output
    assert all(storage.exists(name) for name in everything)  # a dry run


def test_media_orphans_delete_removes_the_orphans_and_keeps_every_referenced_file(stored_world):
    everything = sorted(stored_world["orphans"] | stored_world["kept"])
    age(everything, 2 * DAY)
    young = storage.store("masks/1/v9-being-written.png", b"not committed yet")

    output = run_command("--delete")
    assert listed(output) == stored_world["orphans"] and "deleted" in output
    assert not any(storage.exists(name) for name in stored_world["orphans"])
    assert all(storage.exists(name) for name in stored_world["kept"])
    assert storage.exists(young)  # younger than --min-age-hours
    assert listed(run_command("--min-age-hours", "0")) == {young}

    # A finished run's checkpoints are orphans too (a finished run removes its own).
    TrainingRun.objects.filter(pk=stored_world["live_run"].pk).update(
        status=TrainingRun.Status.CANCELLED
    )
    checkpoint = f"checkpoints/run-{stored_world['live_run'].pk}/history.json"
    assert checkpoint in listed(run_command())


def test_media_orphans_works_on_the_object_store(s3_storage, make_image, md):
    image = make_image(manual_by=md)
    orphan = storage.store("masks/77/v1.png", b"rolled back")
    cache_orphan = "display-cache/overlay-512/masks/77/gone.png"
    default_storage.save(cache_orphan, io.BytesIO(b"x"))
    storage.display_copy(image.display.name, 512)
    kept = [image.original.name, image.display.name, image.masks.get().file.name]

    assert listed(run_command("--min-age-hours", "0")) == {orphan, cache_orphan}
    run_command("--min-age-hours", "0", "--delete")
    assert not storage.exists(orphan) and not storage.exists(cache_orphan)
    assert all(storage.exists(name) for name in kept)
    assert storage.exists(f"display-cache/512/{image.display.name}")
    assert listed(run_command("--min-age-hours", "0")) == set()


def test_an_open_item_s_candidate_copies_are_kept_and_a_closed_one_s_are_orphans(
    reviewing_round, admin_user
):
    from annotation import selectors
    from annotation.services.rounds import round_warm_display_copies

    rnd = reviewing_round(images=2)
    item = rnd.items.order_by("id").first()
    round_warm_display_copies(item_ids=[item.pk])
    copies = stored_under(f"display-cache/items/{item.uuid}")
    assert len(copies) == 2 * len(selectors.item_candidates(item))  # overlay and mask, full
    assert not set(copies) & listed(run_command("--min-age-hours", "0"))
    services.round_cancel(round=rnd, by=admin_user)
    services.round_withdraw_batch(round_id=rnd.pk)
    assert set(copies) <= listed(run_command("--min-age-hours", "0"))
