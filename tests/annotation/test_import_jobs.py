"""Web imports: a zipped folder or several files imported by the worker with ingest's rules and
report; zip bombs, names that leave the archive and links refused before anything is stored."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest
from django.conf import settings

from annotation import imaging, services
from annotation.errors import DomainError
from annotation.models import Image, ImageClass, ImportJob, Mask
from annotation.phantoms import make_phantom
from tests.annotation.test_dicom_import import dicom_file

pytestmark = pytest.mark.django_db


def phantom_png(seed: int, size: int = 64) -> tuple[bytes, bytes]:
    p = make_phantom(seed, size=size)
    return imaging.encode_png(p.image), imaging.encode_mask(p.infection)


def qata_zip(n: int = 3, folder: str = "phantoms") -> bytes:
    """A QaTa-COV19 folder zipped whole: Images/ and Ground-truths/ for all but the last."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(n):
            image, mask = phantom_png(300 + i)
            zf.writestr(f"{folder}/Images/covid_{i}.png", image)
            if i < n - 1:
                zf.writestr(f"{folder}/Ground-truths/mask_covid_{i}.png", mask)
        zf.writestr("__MACOSX/phantoms/Images/._covid_0.png", b"\0\5\26\7 resource fork")
    return buf.getvalue()


@pytest.fixture
def create(django_capture_on_commit_callbacks):
    """Uploads a zip; the queued task runs when the transaction commits (with eager_tasks:
    at once, in this process)."""

    def make(admin_user, data: bytes, name: str = "phantoms.zip", **kw) -> ImportJob:
        with django_capture_on_commit_callbacks(execute=True):
            return services.import_job_create(
                requested_by=admin_user, files=[(name, io.BytesIO(data), len(data))], **kw
            )

    return make


def stored_uploads() -> list[Path]:
    folder = Path(settings.MEDIA_ROOT) / "imports"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_a_zipped_folder_is_imported_with_its_report_and_progress(admin_user, eager_tasks, create):
    job = create(admin_user, qata_zip(3))

    job.refresh_from_db()
    assert job.status == ImportJob.Status.DONE, job.failure_reason
    assert (job.done, job.total) == (3, 3)
    assert job.source == "phantoms"
    assert job.report["layout"] == "qata"
    assert sorted(job.report["imported"]) == [f"Images/covid_{i}.png" for i in range(3)]
    assert job.report["duplicates"] == [] and job.report["rejected"] == []
    assert Image.objects.filter(source="phantoms").count() == 3
    assert Mask.objects.filter(source=Mask.Source.IMPORTED).count() == 2
    # The upload is gone once imported; the report stays in the row.
    assert job.file.name == "" and stored_uploads() == []


def test_the_same_zip_again_reports_duplicates_and_imports_nothing(admin_user, eager_tasks, create):
    data = qata_zip(2)
    create(admin_user, data)
    job = create(admin_user, data, source="again")

    job.refresh_from_db()
    assert job.status == ImportJob.Status.DONE
    assert job.report["imported"] == []
    assert len(job.report["duplicates"]) == 2
    assert Image.objects.count() == 2


def test_several_files_with_their_paths_are_zipped_and_imported(
    api, admin_user, eager_tasks, django_capture_on_commit_callbacks
):
    image, mask = phantom_png(400)
    other, _ = phantom_png(401)
    files = {
        "Images/covid_a.png": image,
        "Ground-truths/mask_covid_a.png": mask,
        "Images/covid_b.png": other,
    }
    uploads = [io.BytesIO(data) for data in files.values()]
    for f, path in zip(uploads, files, strict=True):
        f.name = Path(path).name
    with django_capture_on_commit_callbacks(execute=True):
        response = api(admin_user).post(
            "/api/imports/",
            {"files": uploads, "paths": list(files), "source": "picked"},
            format="multipart",
        )
    assert response.status_code == 202, response.content
    job = ImportJob.objects.get(uuid=response.json()["uuid"])
    assert job.status == ImportJob.Status.DONE, job.failure_reason
    assert sorted(job.report["imported"]) == ["Images/covid_a.png", "Images/covid_b.png"]
    assert Image.objects.get(name="covid_a.png").masks.get().source == Mask.Source.IMPORTED

    detail = api(admin_user).get(f"/api/imports/{job.uuid}/").json()
    assert detail["status"] == "done" and detail["done"] == detail["total"] == 2


def test_a_refused_dicom_file_is_reported_with_its_reason(admin_user, eager_tasks, create):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("scans/good.dcm", dicom_file())
        zf.writestr("scans/ct.dcm", dicom_file(Modality="CT"))
    job = create(admin_user, buf.getvalue(), name="scans.zip", image_class=ImageClass.COVID)

    job.refresh_from_db()
    assert job.status == ImportJob.Status.DONE, job.failure_reason
    assert job.report["imported"] == ["good.dcm"]
    ((file, reason),) = job.report["rejected"]
    assert file == "ct.dcm" and "modality CT" in reason
    assert Image.objects.count() == 1


def test_dicom_files_without_a_class_fail_the_job_in_words(admin_user, eager_tasks, create):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("scans/good.dcm", dicom_file())
    job = create(admin_user, buf.getvalue(), name="scans.zip")

    job.refresh_from_db()
    assert job.status == ImportJob.Status.FAILED
    assert "no layout that names their class" in job.failure_reason
    assert "the import's class for DICOM files" in job.failure_reason  # not the command's option
    # The scratch folder's path never reaches the admin: the upload's name stands for it.
    assert "scans.zip" in job.failure_reason and settings.MASKLOOP_WORK_DIR.name not in (
        job.failure_reason
    )
    assert Image.objects.count() == 0 and stored_uploads() == []


def _bomb(size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("Images/covid_0.png", b"\0" * size)
    return buf.getvalue()


def test_a_zip_bomb_is_refused_from_its_directory_before_anything_is_stored(
    admin_user, settings, eager_tasks, create
):
    settings.MASKLOOP_IMPORT_MAX_UNPACKED_BYTES = 2**20
    data = _bomb(16 * 2**20)
    assert len(data) < 64 * 1024  # 16 MiB of zeros deflate to a few KiB

    with pytest.raises(DomainError, match=r"would unpack to 16\.0 MiB; an import takes at most"):
        create(admin_user, data, name="bomb.zip")

    assert ImportJob.objects.count() == 0 and stored_uploads() == []


def test_too_many_files_are_refused(admin_user, settings, create):
    settings.MASKLOOP_IMPORT_MAX_FILES = 2
    with pytest.raises(DomainError, match="holds 3 files; an import takes at most 2"):
        create(admin_user, qata_zip(2))  # 2 images + 1 mask


def _zip_with(info: zipfile.ZipInfo, data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("Images/covid_0.png", phantom_png(1)[0])
        zf.writestr(info, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("../escape.png", "climbs out of the archive with '..'"),
        ("Images/../../escape.png", "climbs out of the archive with '..'"),
        ("/etc/escape.png", "is absolute"),
        ("C:/escape.png", "is absolute"),
        ("Images\\..\\escape.png", "holds a backslash"),
    ],
)
def test_a_name_that_leaves_the_archive_is_refused(admin_user, entry, says, create):
    # Written under a placeholder of the same length, then renamed in place in the local header
    # and the directory: an attacker's zip, whatever zipfile would make of the name.
    placeholder = "x" * len(entry)
    data = _zip_with(zipfile.ZipInfo(placeholder)).replace(placeholder.encode(), entry.encode())

    with pytest.raises(DomainError, match=says) as refused:
        create(admin_user, data, name="evil.zip")

    assert "evil.zip is refused" in str(refused.value)
    assert "Nothing was imported" in str(refused.value)
    assert ImportJob.objects.count() == 0 and stored_uploads() == []


def test_a_symbolic_link_is_refused(admin_user, create):
    link = zipfile.ZipInfo("Images/covid_1.png")
    link.create_system = 3  # Unix
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    data = _zip_with(link, b"/etc/passwd")

    with pytest.raises(DomainError, match="is a symbolic link; links are not imported"):
        create(admin_user, data, name="link.zip")
    assert ImportJob.objects.count() == 0


def test_not_a_zip_is_refused(admin_user, create):
    with pytest.raises(DomainError, match="is not a zip archive that can be read"):
        create(admin_user, b"not a zip at all", name="fake.zip")


def test_an_upload_over_the_limit_is_refused(admin_user, settings, create):
    settings.MASKLOOP_IMPORT_MAX_UPLOAD_BYTES = 100
    with pytest.raises(DomainError, match="an import takes at most 0.0 MiB"):
        create(admin_user, qata_zip(2))


def test_a_job_runs_once(admin_user):
    data = qata_zip(2)
    # Never committed in this test's transaction: queued, not sent.
    job = services.import_job_create(
        requested_by=admin_user, files=[("phantoms.zip", io.BytesIO(data), len(data))]
    )
    services.import_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == ImportJob.Status.DONE, job.failure_reason

    again = services.import_run(job_id=job.pk)

    assert again.status == ImportJob.Status.DONE and Image.objects.count() == 2


def test_an_empty_request_is_refused_in_words(api, admin_user):
    response = api(admin_user).post("/api/imports/", {}, format="multipart")
    assert response.status_code == 400
    assert "files" in response.json()
    assert ImportJob.objects.count() == 0


def test_the_reconciler_fails_an_import_whose_worker_was_killed(admin_user, settings):
    from datetime import timedelta

    from django.utils import timezone

    from annotation.services.reconcile import reconcile

    settings.MASKLOOP_TIME_LIMITS = {**settings.MASKLOOP_TIME_LIMITS, "default": 600}
    now = timezone.now()
    dead = ImportJob.objects.create(
        requested_by=admin_user,
        name="a.zip",
        source="a",
        status=ImportJob.Status.RUNNING,
        started_at=now - timedelta(seconds=700),
    )
    alive = ImportJob.objects.create(
        requested_by=admin_user,
        name="b.zip",
        source="b",
        status=ImportJob.Status.RUNNING,
        started_at=now - timedelta(seconds=60),
    )

    done = reconcile()

    assert done["imports_failed"] == [dead.pk]
    dead.refresh_from_db()
    alive.refresh_from_db()
    assert dead.status == ImportJob.Status.FAILED
    assert "stopped before the end" in dead.failure_reason
    assert alive.status == ImportJob.Status.RUNNING
