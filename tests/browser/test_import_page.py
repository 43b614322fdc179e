"""The web import in Chromium: an admin uploads a zip of phantoms, watches the upload and the
import progress (a real Celery worker imports it), and reads the report kept on the job's page;
a zip with a name that climbs out is refused in a sentence before anything is stored."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

from annotation import imaging, services
from annotation.models import Image, ImageClass, ImportJob
from annotation.phantoms import make_phantom
from tests.browser.helpers import BROWSER, wait_until

pytestmark = BROWSER
SHOTS = Path("/work/shots/import")
SIZE = 256  # above the screening's 224-px floor that the worker applies


def keep(path: Path) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SHOTS / path.name)


def phantom_zip(path: Path) -> dict[str, bytes]:
    """A QaTa-COV19 folder zipped whole: 4 phantoms (3 with masks), a small one and a file
    that is no image. Returns the images by name."""
    images = {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(4):
            p = make_phantom(700 + i, size=SIZE)
            images[f"covid_{i}.png"] = imaging.encode_png(p.image)
            zf.writestr(f"phantoms/Images/covid_{i}.png", images[f"covid_{i}.png"])
            if i < 3:
                zf.writestr(
                    f"phantoms/Ground-truths/mask_covid_{i}.png", imaging.encode_mask(p.infection)
                )
        # Imported, but flagged at screening: under the worker's 224-px floor.
        small = make_phantom(710, size=64)
        zf.writestr("phantoms/Images/covid_small.png", imaging.encode_png(small.image))
        zf.writestr("phantoms/Images/broken.png", b"\x89PNG\r\n\x1a\n but nothing after")
    return images


def test_an_admin_imports_a_zip_and_reads_the_report(
    page, sign_in, url, shot, admin_user, worker, tmp_path
):
    archive = tmp_path / "phantoms.zip"
    images = phantom_zip(archive)
    # One of them is already there: the import skips it as a duplicate.
    services.image_create(
        data=images["covid_3.png"],
        name="covid_3.png",
        source="earlier",
        image_class=ImageClass.COVID,
    )
    sign_in(page, admin_user)
    page.get_by_role("link", name="Import").click()
    page.wait_for_url("**/imports/")
    keep(shot(page, "import-page"))

    page.set_input_files("#import-zip", str(archive))
    with page.expect_navigation(url="**/imports/*/", timeout=90_000):
        page.click("#import-start")
        page.wait_for_function(
            "document.getElementById('upload-bar').style.width === '100%'", timeout=30_000
        )
        assert "MiB" in page.text_content("#upload-text")
        page.wait_for_function(
            "document.getElementById('import-status').textContent.startsWith('Import finished')",
            timeout=90_000,
        )
        assert page.text_content("#import-text") == "6 / 6 files"
        assert page.locator("#import-bar").get_attribute("style") == "width: 100%;"
        page.wait_for_timeout(500)  # the bar's CSS transition
        keep(shot(page, "import-progress-finished"))

    job = ImportJob.objects.get()
    assert job.status == ImportJob.Status.DONE
    report = page.get_by_test_id("import-report")
    counts = {
        name: int(report.locator(f"[data-count={name}]").text_content())
        for name in ("imported", "duplicates", "rejected", "flagged")
    }
    flagged = Image.objects.filter(source="phantoms").exclude(screening_flags=[]).count()
    assert counts == {"imported": 4, "duplicates": 1, "rejected": 1, "flagged": flagged}
    assert flagged >= 1  # covid_small.png
    assert Image.objects.filter(source="phantoms").count() == 4
    assert "covid_small.png" in report.locator(".report-flagged").text_content()
    rejected = report.locator(".report-rejected tbody tr")
    assert rejected.count() == 1
    assert "broken.png" in rejected.first.text_content()
    assert job.report["rejected"][0][1] in rejected.first.text_content()
    keep(shot(page, "import-report", full_page=True))

    # The report is kept: the list links to it.
    page.goto(url("/imports/"))
    page.locator(f"tr[data-uuid='{job.uuid}'] a").click()
    page.wait_for_url(f"**/imports/{job.uuid}/")
    assert page.get_by_test_id("import-report").is_visible()


def test_a_zip_that_climbs_out_is_refused_in_a_sentence(
    page, sign_in, url, shot, admin_user, tmp_path
):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("xxxxxxxxxxxxxxxxxx", b"not much")
    archive = tmp_path / "evil.zip"
    archive.write_bytes(buf.getvalue().replace(b"xxxxxxxxxxxxxxxxxx", b"../../etc/evil.png"))
    sign_in(page, admin_user)
    page.goto(url("/imports/"))

    page.set_input_files("#import-zip", str(archive))
    page.click("#import-start")

    status = page.locator("#import-status")
    wait_until(lambda: "Not imported" in status.text_content(), timeout=15)
    assert "evil.zip is refused" in status.text_content()
    assert "climbs out of the archive" in status.text_content()
    keep(shot(page, "import-refused"))
    assert ImportJob.objects.count() == 0
