"""A pull from a PACS started on the PACS page and run by a real Celery worker process against
a real Orthanc: the request answers at once, the worker writes progress and the report, and a
second pull from the page fetches nothing."""

from __future__ import annotations

import time

import pytest
from django.test import Client

from annotation.models import Image, ImageClass, PacsPull, Role
from tests.annotation.test_dicomweb_pull import CXRS, catalogue
from tests.conftest import make_user
from tests.orthanc import orthanc_loaded
from tests.workers import celery_workers

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TIMEOUT = 120


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    with orthanc_loaded(tmp_path_factory.mktemp("orthanc-e2e"), catalogue(), size=256) as server:
        yield server


@pytest.fixture
def worker(media_root):
    with celery_workers("pacs", media_root) as workers:
        yield workers


def finished(pull_id: int, worker) -> PacsPull:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        pull = PacsPull.objects.get(pk=pull_id)
        if pull.status in (PacsPull.Status.DONE, PacsPull.Status.FAILED):
            return pull
        assert worker.alive(), f"a Celery worker died; see {worker.logs}"
        time.sleep(0.2)
    raise AssertionError(f"pull {pull_id} still {pull.status} after {TIMEOUT} s; see {worker.logs}")


def test_the_worker_runs_a_pull_from_the_page(orthanc, worker):
    admin = make_user("pacs-admin", Role.ADMIN)
    client = Client()
    client.force_login(admin)
    form = {"server": orthanc.dicomweb_url, "image_class": ImageClass.COVID}
    assert client.post("/pacs/", form).status_code == 302
    pull = finished(PacsPull.objects.get().pk, worker)
    assert pull.status == PacsPull.Status.DONE, pull.failure_reason
    assert pull.progress["instances_done"] == pull.progress["instances_total"] == len(CXRS)
    assert pull.result["imported"] == len(CXRS) and pull.result["fetched"] == len(CXRS)
    assert Image.objects.count() == len(CXRS)
    assert (
        f"studies 4/4, instances {len(CXRS)}/{len(CXRS)}" in client.get("/pacs/").content.decode()
    )

    assert client.post("/pacs/", form).status_code == 302
    again = finished(PacsPull.objects.exclude(pk=pull.pk).get().pk, worker)
    assert again.status == PacsPull.Status.DONE, again.failure_reason
    assert again.result["fetched"] == 0 and again.result["skipped"] == len(CXRS)
    assert Image.objects.count() == len(CXRS)
