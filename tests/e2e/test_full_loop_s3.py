"""The loop with web and workers on separate "hosts" that share only PostgreSQL, Redis and an
S3-compatible object store (SeaweedFS), as when a hospital adds GPU hosts as Celery workers.

Each worker process gets its own empty MEDIA_ROOT, work folder and cache; the test process (the
web host) writes to the object store too. A shorter loop than test_full_loop.py, which runs the
whole two-stage loop on one host: Stage I (one network × two folds, trained and predicted on
the workers, about 4 minutes on 2 CPU cores) → blind picks → export built by a worker,
downloaded from a presigned URL, checked against its manifest, and built a second time byte for
byte.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from django.conf import settings

from annotation.demo import demo_dataset_write, demo_md_masks
from annotation.ingest import ingest_folder
from annotation.models import Image, Round
from tests.conftest import make_user
from tests.e2e.test_full_loop import build_export, check_manifest, review_everything, wait_for
from tests.workers import ARTIFACTS, celery_workers

pytest_plugins = ["tests.objectstore"]  # object_store (SeaweedFS), s3_prefix, s3_storage
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker(s3_storage, s3_prefix, media_root, tmp_path):
    with celery_workers(
        "e2e-s3", media_root, env=s3_storage.env(s3_prefix), hosts_root=tmp_path / "hosts"
    ) as workers:
        yield workers


def files_under(folder: Path | str) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if p.is_file()]


def test_stage_one_to_export_on_hosts_that_share_only_postgres_redis_and_s3(
    worker, api, tmp_path, s3_storage, s3_prefix
):
    md, admin, data_team = (
        make_user("md1", "md"),
        make_user("boss", "admin"),
        make_user("analyst", "data"),
    )
    cases = demo_dataset_write(tmp_path / "cxr", n_covid=12, n_control=4, size=64)
    report = ingest_folder(tmp_path / "cxr", source="phantoms")
    assert len(report.imported) == 16 and not report.rejected
    # Another MD draws the first masks: nobody reviews an item holding a mask they drew.
    drawer = make_user("md0", "md")
    assert demo_md_masks(cases=cases, author=drawer, count=6, size=64) == 6

    started = time.monotonic()
    response = api(admin).post(
        "/api/rounds/",
        {
            "stage": "I",
            "folds": 2,
            "preset": "tiny",
            "epochs": 3,  # not the preset's 30: this test checks where files go
            "networks": [["unet", "densenet121"]],
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    stage1 = wait_for(Round.objects.get(number=response.json()["number"]), "reviewing", worker)
    assert stage1.training_runs.filter(status="succeeded").count() == 2
    assert all(item.candidates.count() == 2 for item in stage1.items.all())
    assert len(review_everything(api(md))) == 6
    assert wait_for(stage1, "done", worker)
    loop_seconds = time.monotonic() - started

    accepted = Image.objects.filter(status=Image.Status.ACCEPTED).count()
    assert accepted >= 6
    first, meta = build_export(api(data_team))
    second, _ = build_export(api(data_team))
    assert first == second, "a second export of the same data must be byte-identical"
    with check_manifest(first, meta["image_count"]) as zf:
        assert sum(",predicted," in r for r in zf.read("metadata.csv").decode().splitlines()) >= 1

    # Nothing went through a shared disk: every file is in the bucket, under this test's prefix.
    assert files_under(settings.MEDIA_ROOT) == []
    for name, host in worker.hosts.items():
        assert files_under(host / "media") == [], f"the {name} worker wrote to its MEDIA_ROOT"
    assert files_under(worker.hosts["training"] / "cache"), "training read no stored image"
    keys = [
        obj["Key"]
        for page in s3_storage.client()
        .get_paginator("list_objects_v2")
        .paginate(Bucket=s3_storage.bucket, Prefix=f"{s3_prefix}/")
        for obj in page.get("Contents", [])
    ]
    for folder in ("originals/", "display/", "masks/", "models/", "exports/"):
        assert any(k.startswith(f"{s3_prefix}/{folder}") for k in keys), folder
    (ARTIFACTS / "e2e-s3-timing.txt").write_text(f"Stage I on S3: {loop_seconds:.0f} s\n")
    print(f"\nStage I with S3 took {loop_seconds:.0f} s; export {meta['size']} bytes")
