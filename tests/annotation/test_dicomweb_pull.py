"""Pulling CXRs from a real Orthanc (Debian's orthanc + orthanc-dicomweb, started for the
session by tests/orthanc.py): QIDO-RS search with filters, WADO-RS fetch, a re-run that fetches
nothing, and an interrupted pull that resumes and ends with every instance exactly once."""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from django.core.management import CommandError, call_command

from annotation import services
from annotation.dicomweb import PacsFilters, PacsServer
from annotation.ingest import ingest_dicomweb
from annotation.models import Image, ImageClass, PacsPull
from tests.orthanc import Orthanc, _free_port, cxr_instance, orthanc_loaded

pytestmark = pytest.mark.django_db

ROOT = "1.2.826.0.1.3680043.8.498.7719"
# patient, study, date, [(series, modality, instances)]
STUDIES = [
    ("P1", "1", "20200115", [("1", "DX", 2)]),
    ("P1", "2", "20200620", [("1", "CR", 1)]),
    ("P2", "3", "20201105", [("1", "DX", 2), ("2", "CT", 1)]),
    ("P3", "4", "20210210", [("1", "CR", 2)]),
]


def study_uid(study: str) -> str:
    return f"{ROOT}.{study}"


def catalogue() -> list[dict]:
    out = []
    for patient, study, date, series_list in STUDIES:
        for series, modality, count in series_list:
            for n in range(1, count + 1):
                out.append(
                    {
                        "patient": patient,
                        "study_uid": study_uid(study),
                        "series_uid": f"{ROOT}.{study}.{series}",
                        "sop_uid": f"{ROOT}.{study}.{series}.{n}",
                        "modality": modality,
                        "study_date": date,
                    }
                )
    return out


CXRS = [i for i in catalogue() if i["modality"] != "CT"]


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    with orthanc_loaded(tmp_path_factory.mktemp("orthanc"), catalogue()) as server:
        yield server


class Fetches:
    """Counts WADO-RS retrievals (the real ones) and can fail the n-th one as a network
    failure would: the edge of the world is the HTTP client."""

    def __init__(self, monkeypatch, fail_at: int | None = None):
        self.count = 0
        self.fail_at = fail_at
        real = DICOMwebClient.retrieve_instance

        def retrieve(client, *args, **kwargs):
            self.count += 1
            if self.fail_at is not None and self.count == self.fail_at:
                raise requests.ConnectionError("connection reset by peer")
            return real(client, *args, **kwargs)

        monkeypatch.setattr(DICOMwebClient, "retrieve_instance", retrieve)


def pull(orthanc: Orthanc, *args: str) -> str:
    out = io.StringIO()
    call_command("ingest", orthanc.dicomweb_url, "--class", "covid19", *args, stdout=out)
    return out.getvalue()


def test_search_with_filters(orthanc):
    server = PacsServer(orthanc.dicomweb_url)

    def studies(**kw) -> list[str]:
        return [s.study_uid for s in server.search_studies(PacsFilters.parse(**kw))]

    assert studies() == [study_uid(s) for s in "1234"]
    assert studies(study_date="20200101-20201231") == [study_uid(s) for s in "123"]
    assert studies(study_date="20210101-") == [study_uid("4")]
    assert studies(modalities="CR") == [study_uid("2"), study_uid("4")]
    assert studies(modalities="ct") == [study_uid("3")]
    assert studies(study_uids=f"{study_uid('3')},{study_uid('4')}") == [
        study_uid("3"),
        study_uid("4"),
    ]
    # The CT series of a CXR study is left out unless asked for.
    cxr = server.search_instances(study_uid("3"), PacsFilters.parse())
    assert [(i.sop_uid, i.modality) for i in cxr] == [
        (f"{ROOT}.3.1.1", "DX"),
        (f"{ROOT}.3.1.2", "DX"),
    ]
    ct = server.search_instances(study_uid("3"), PacsFilters.parse(modalities="CT"))
    assert [i.sop_uid for i in ct] == [f"{ROOT}.3.2.1"]


def test_pull_imports_every_cxr_once_and_a_rerun_fetches_nothing(orthanc, monkeypatch, settings):
    settings.MASKLOOP_PATIENT_ID_SALT = "pepper"
    fetches = Fetches(monkeypatch)
    out = pull(orthanc)
    assert fetches.count == len(CXRS)
    assert "studies 0/4, instances 0/7" in out
    assert "studies 4/4, instances 7/7" in out
    assert f"fetched: {len(CXRS)}" in out and f"imported: {len(CXRS)}" in out
    images = {i.sop_instance_uid: i for i in Image.objects.all()}
    assert sorted(images) == sorted(i["sop_uid"] for i in CXRS)
    for seed, instance in enumerate(catalogue()):
        if instance["modality"] == "CT":
            continue
        image = images[instance["sop_uid"]]
        assert (image.study_uid, image.series_uid) == (
            instance["study_uid"],
            instance["series_uid"],
        )
        assert image.modality == instance["modality"]
        assert image.image_class == ImageClass.COVID
        assert image.source == f"127.0.0.1:{orthanc.port}/dicom-web"
        # The salt applies as to a file: the PatientID is never stored as it is.
        salted = hashlib.sha256(f"pepper{instance['patient']}".encode()).hexdigest()[:16]
        assert image.patient_id == salted
        # The 16-bit pixels arrive as the PACS holds them.
        with image.original.open("rb") as fh:
            got = pydicom.dcmread(fh)
        sent = pydicom.dcmread(io.BytesIO(cxr_instance(seed=seed, **instance)))
        assert got.SOPInstanceUID == instance["sop_uid"]
        assert (got.pixel_array == sent.pixel_array).all()

    fetches.count = 0
    again = pull(orthanc)
    assert fetches.count == 0
    assert f"already imported (not fetched): {len(CXRS)}" in again
    assert "fetched: 0" in again and "imported: 0" in again
    assert Image.objects.count() == len(CXRS)


def test_a_pull_with_filters_takes_only_what_they_select(orthanc):
    out = pull(orthanc, "--study-date", "20200101-20201231", "--modality", "CR,DX")
    assert "studies: 3, instances: 5" in out
    assert Image.objects.count() == 5
    pull(orthanc, "--study-uid", study_uid("4"))
    assert Image.objects.filter(study_uid=study_uid("4")).count() == 2
    assert Image.objects.count() == 7


def test_an_interrupted_pull_resumes_and_ends_with_each_instance_once(orthanc, monkeypatch):
    fetches = Fetches(monkeypatch, fail_at=4)
    with pytest.raises(CommandError) as failed:
        pull(orthanc)
    server = f"http://127.0.0.1:{orthanc.port}/dicom-web"
    assert str(failed.value).startswith(f"The DICOMweb server {server} failed to send instance")
    assert "could not be reached" in str(failed.value)
    assert Image.objects.count() == 3

    fetches.fail_at, fetches.count = None, 0
    out = pull(orthanc)
    assert fetches.count == len(CXRS) - 3  # the three imported are not fetched again
    assert "already imported (not fetched): 3" in out
    assert sorted(Image.objects.values_list("sop_instance_uid", flat=True)) == sorted(
        i["sop_uid"] for i in CXRS
    )


def test_a_superseded_pull_attempt_stops_and_the_next_attempt_resumes_it(
    orthanc, monkeypatch, admin_user
):
    from annotation.services.pacs import pacs_pull_request, pacs_pull_run

    row = pacs_pull_request(
        requested_by=admin_user, server=orthanc.dicomweb_url, image_class=ImageClass.COVID
    )
    fetched: list[str] = []
    real = DICOMwebClient.retrieve_instance

    def retrieve(client, *args, **kwargs):
        fetched.append(kwargs.get("sop_instance_uid", ""))
        if len(fetched) == 4:  # meanwhile the reconciler took it for lost: attempt 2 was sent
            PacsPull.objects.filter(pk=row.pk).update(
                attempts=2, status=PacsPull.Status.QUEUED, worker=""
            )
        return real(client, *args, **kwargs)

    monkeypatch.setattr(DICOMwebClient, "retrieve_instance", retrieve)
    first = pacs_pull_run(pull_id=row.pk, attempt=1)
    assert (first.status, first.attempts, first.report) == (PacsPull.Status.QUEUED, 2, "")
    assert len(fetched) == 4 and Image.objects.count() == 4  # each import complete, then stopped

    second = pacs_pull_run(pull_id=row.pk, attempt=2)
    assert second.status == PacsPull.Status.DONE, second.failure_reason
    assert second.result["skipped"] == 4 and second.result["fetched"] == len(CXRS) - 4
    assert len(fetched) == len(CXRS)  # nothing fetched twice
    assert sorted(Image.objects.values_list("sop_instance_uid", flat=True)) == sorted(
        i["sop_uid"] for i in CXRS
    )
    assert pacs_pull_run(pull_id=row.pk, attempt=2).status == PacsPull.Status.DONE  # done stays


def test_a_limit_stops_the_pull_and_the_next_run_continues(orthanc):
    out = pull(orthanc, "--limit", "2")
    assert "stopped: the limit of 2 new instances was reached" in out
    assert Image.objects.count() == 2
    report = ingest_dicomweb(orthanc.dicomweb_url, image_class=ImageClass.COVID, limit=3)
    assert (len(report.skipped), report.fetched) == (2, 3)
    assert report.stopped == "the limit of 3 new instances was reached" and not report.error
    report = ingest_dicomweb(orthanc.dicomweb_url, image_class=ImageClass.COVID)
    assert (len(report.skipped), report.fetched, report.stopped) == (5, 2, "")
    assert Image.objects.count() == len(CXRS)


def test_a_server_that_cannot_be_reached_is_named_after_retries(settings):
    settings.MASKLOOP_DICOMWEB_ATTEMPTS = 2  # tried again after 2 s, then given up
    url = f"dicomweb://127.0.0.1:{_free_port()}/dicom-web"
    started = time.monotonic()
    with pytest.raises(CommandError) as failed:
        call_command("ingest", url, "--class", "covid19")
    assert time.monotonic() - started >= 2
    assert str(failed.value).startswith(
        f"The DICOMweb server http{url[8:]} failed to search studies"
    )
    assert str(failed.value).endswith(
        "could not be reached (connection refused or lost) (2 tries)."
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "needs the class of its images"),
        (("--class", "covid19", "--study-date", "2020"), "is not YYYYMMDD"),
        (("--class", "covid19", "--modality", "C-R"), "is not a DICOM modality code"),
        (("--class", "covid19", "--study-uid", "1.2.x"), "is not a DICOM UID"),
        (("--class", "covid19", "--limit", "0"), "at least 1 instance"),
    ],
)
def test_bad_options_are_refused_in_a_sentence(args, says):
    with pytest.raises(CommandError, match=says):
        call_command("ingest", "dicomweb://127.0.0.1:1/dicom-web", *args)


def test_the_pacs_page_queues_a_pull_that_the_worker_runs_with_progress(
    orthanc, admin_user, api, eager_tasks, django_capture_on_commit_callbacks
):
    client = api(admin_user)
    form = {
        "server": orthanc.dicomweb_url,
        "image_class": ImageClass.NORMAL,
        "study_date": "20200101-20201231",
        "modalities": "dx, cr",
        "study_uids": "",
        "limit": "",
    }
    with django_capture_on_commit_callbacks(execute=False) as queued:
        page = client.post("/pacs/", form)
    assert page.status_code == 302
    pull = PacsPull.objects.get()
    assert pull.status == PacsPull.Status.QUEUED and pull.requested_by == admin_user
    assert pull.filters["modalities"] == ["DX", "CR"]
    assert "Queued" in client.get("/pacs/").content.decode()
    assert len(queued) == 1
    queued[0]()  # the worker (eager here) runs it
    pull.refresh_from_db()
    assert pull.status == PacsPull.Status.DONE, pull.failure_reason
    assert pull.progress == {
        "studies_done": 3,
        "studies_total": 3,
        "instances_done": 5,
        "instances_total": 5,
    }
    assert pull.result["imported"] == 5 and pull.result["skipped"] == 0
    assert Image.objects.filter(image_class=ImageClass.NORMAL).count() == 5
    listing = client.get("/pacs/").content.decode()
    assert "studies 3/3, instances 5/5" in listing
    assert "5 imported, 0 already there" in listing
    assert 'http-equiv="refresh"' not in listing  # nothing under way: no reloading


def test_the_pacs_page_refuses_a_bad_pull_in_a_sentence(admin_user, api):
    client = api(admin_user)
    page = client.post(
        "/pacs/",
        {"server": "http://pacs:8042/dicom-web", "image_class": ImageClass.COVID},
        follow=True,
    )
    text = page.content.decode()
    assert "The pull was not started." in text and "is not a DICOMweb URL" in text
    page = client.post(
        "/pacs/",
        {"server": "dicomweb://pacs:8042/dicom-web", "image_class": "covid19", "study_date": "x"},
        follow=True,
    )
    assert "is not YYYYMMDD" in page.content.decode()
    assert not PacsPull.objects.exists()


def test_a_failed_pull_names_the_server_on_the_page(admin_user, api, settings):
    from annotation.services.pacs import pacs_pull_request, pacs_pull_run

    settings.MASKLOOP_DICOMWEB_ATTEMPTS = 1

    url = f"dicomweb://127.0.0.1:{_free_port()}/dicom-web"
    pull = pacs_pull_request(requested_by=admin_user, server=url, image_class=ImageClass.COVID)
    pull = pacs_pull_run(pull_id=pull.pk)
    assert pull.status == PacsPull.Status.FAILED
    assert pull.failure_reason.startswith(f"The DICOMweb server http{url[8:]} failed to")
    page = api(admin_user).get("/pacs/").content.decode()
    assert "could not be reached" in page


@pytest.fixture
def segs_removed(orthanc):
    """Removes the SEG and SC instances a test stored, so the session's Orthanc holds only the
    catalogue for the next test."""
    yield
    found = requests.post(
        f"{orthanc.rest}/tools/find",
        json={"Level": "Instance", "Query": {"Modality": "SEG"}},
        timeout=30,
    ).json()
    found += requests.post(
        f"{orthanc.rest}/tools/find",
        json={"Level": "Instance", "Query": {"Modality": "OT"}},
        timeout=30,
    ).json()
    for instance in found:
        requests.delete(f"{orthanc.rest}/instances/{instance}", timeout=30).raise_for_status()


def test_stow_stores_an_exports_segs_found_by_qido_with_their_references(
    orthanc, data_user, make_image, segs_removed, django_capture_on_commit_callbacks
):
    """Pull study 1 (two DX), accept a mask of each and of one PNG image, export dicom-seg,
    push back: each SEG is found by QIDO-RS in its source's study, references the source SOP
    instance, and a second push sends nothing."""
    import numpy as np

    from annotation import services
    from annotation.models import Export, GroundTruth, Mask

    pull(orthanc, "--study-uid", study_uid("1"))
    png_image = make_image()
    sources = {}
    for n, image in enumerate([*Image.objects.filter(study_uid=study_uid("1")), png_image]):
        drawn = np.zeros((image.height, image.width), dtype=bool)
        drawn[8 + n : 30, 10:40] = True
        mask = services.mask_create(image=image, mask=drawn, source=Mask.Source.IMPORTED)
        GroundTruth.objects.create(image=image, mask=mask)
        sources[image.sop_instance_uid] = drawn
    with django_capture_on_commit_callbacks(execute=False):
        export = services.export_request(requested_by=data_user, filters={"format": "dicom-seg"})
    export = services.export_build(export=export)
    assert export.status == Export.Status.DONE, export.failure_reason

    out = io.StringIO()
    call_command("stow_segs", str(export.uuid), orthanc.dicomweb_url, stdout=out)
    assert "stored: 4" in out.getvalue()  # three SEGs and the PNG image's Secondary Capture
    server = PacsServer(orthanc.dicomweb_url)
    segs = server.client.search_for_instances(
        study_instance_uid=study_uid("1"), search_filters={"Modality": "SEG"}
    )
    assert len(segs) == 2
    referenced = set()
    for found in segs:
        seg = server.client.retrieve_instance(
            study_uid("1"), found["0020000E"]["Value"][0], found["00080018"]["Value"][0]
        )
        ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        referenced.add(ref.ReferencedSOPInstanceUID)
        frame = seg.pixel_array.astype(bool)
        assert (frame == sources[ref.ReferencedSOPInstanceUID]).all()
    assert referenced == {f"{ROOT}.1.1.1", f"{ROOT}.1.1.2"}

    again = io.StringIO()
    call_command("stow_segs", str(export.uuid), orthanc.dicomweb_url, stdout=again)
    assert (
        "stored: 0" in again.getvalue()
        and "already on the server (not sent): 4" in again.getvalue()
    )


def test_stow_refuses_what_is_not_a_dicom_seg_export(orthanc, data_user, tmp_path):
    with pytest.raises(CommandError, match="neither a zip file nor the UUID"):
        call_command("stow_segs", "no-such-export", orthanc.dicomweb_url)
    with pytest.raises(CommandError, match="is not a DICOMweb URL"):
        call_command("stow_segs", "x", "http://127.0.0.1:1/dicom-web")
    bare = tmp_path / "bare.zip"
    with zipfile.ZipFile(bare, "w") as zf:
        zf.writestr("manifest.json", json.dumps({"files": {"metadata.csv": "0" * 64}}))
    with pytest.raises(CommandError, match="holds no DICOM-SEG"):
        call_command("stow_segs", str(bare), orthanc.dicomweb_url)


def test_an_instance_imported_meanwhile_is_a_duplicate_not_an_error(orthanc):
    """Another import takes an instance after this pull searched (two pulls of one PACS at
    once): the pull counts it as a duplicate and goes on."""
    first = CXRS[0]
    sent = cxr_instance(seed=0, **first)

    def progress(p):
        if p.instances_done == 0 and not Image.objects.filter(sop_instance_uid=first["sop_uid"]):
            services.image_create(
                data=sent, name="other.dcm", source="other", image_class=ImageClass.COVID
            )

    report = ingest_dicomweb(orthanc.dicomweb_url, image_class=ImageClass.COVID, progress=progress)
    assert report.duplicates == [first["sop_uid"]] and not report.error
    assert len(report.imported) == len(CXRS) - 1
    assert Image.objects.count() == len(CXRS)
