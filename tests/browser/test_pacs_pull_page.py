"""The PACS page in Chromium: an admin starts a pull from a real Orthanc, a real worker runs
it, and the page (reloading itself while the pull is under way) shows it done with its counts."""

from __future__ import annotations

import pytest

from annotation.models import Image, PacsPull
from tests.annotation.test_dicomweb_pull import CXRS, catalogue
from tests.browser.helpers import BROWSER
from tests.orthanc import orthanc_loaded

pytestmark = BROWSER


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    with orthanc_loaded(
        tmp_path_factory.mktemp("orthanc-browser"), catalogue(), size=256
    ) as server:
        yield server


def test_an_admin_pulls_from_a_pacs_and_watches_it_finish(
    page, sign_in, url, shot, admin_user, worker, orthanc
):
    sign_in(page, admin_user)
    page.click("nav.topnav a:has-text('PACS')")
    assert page.url == url("/pacs/")
    assert "No pull yet." in page.inner_text("#pulls")
    page.fill("input[name=server]", orthanc.dicomweb_url)
    page.select_option("select[name=image_class]", "covid19")
    page.fill("input[name=study_date]", "20200101-20201231")
    shot(page, "form")
    with page.expect_navigation(url="**/pacs/"):
        page.click("#pacs-form button[type=submit]")
    assert "queued" in page.inner_text("[data-testid=messages]")
    row = page.locator("#pulls tr[data-pull]")
    # The page reloads itself every 3 s while the pull is queued or running.
    row.and_(page.locator("[data-status=done]")).wait_for(timeout=60_000)
    shot(page, "done")
    text = row.inner_text()
    assert "Done" in text and "studies 3/3, instances 5/5" in text, text
    assert "5 imported, 0 already there" in text
    assert PacsPull.objects.get().status == PacsPull.Status.DONE
    assert Image.objects.count() == 5 < len(CXRS)  # 2021's study left out by the date
    page.reload()
    assert page.locator("meta[http-equiv=refresh]").count() == 0  # nothing under way
