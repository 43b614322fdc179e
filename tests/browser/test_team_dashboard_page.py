"""The admins' per-MD table on the round dashboard, and an MD's queue filter kept from image
to image on the review page, in Chromium."""

from __future__ import annotations

from annotation import services
from annotation.models import Decision
from tests.browser.helpers import BROWSER

pytestmark = BROWSER


def review_ready(page) -> str:
    page.wait_for_function("window.maskloopReview !== undefined")
    return page.evaluate("window.maskloopReview.ready")


def pick_a(page) -> None:
    page.keyboard.press("1")
    page.keyboard.press("Enter")  # asks to confirm
    page.keyboard.press("Enter")


def cells(page, row_selector: str) -> dict[str, str]:
    row = page.locator(row_selector)
    return {
        col: row.locator(f"[data-col={col}]").inner_text().strip()
        for col in row.locator("[data-col]").evaluate_all("els => els.map(e => e.dataset.col)")
    }


def test_the_dashboard_shows_each_mds_progress_and_agreement(
    page, sign_in, url, shot, md, md2, admin_user, reviewing_round
):
    rnd = reviewing_round(images=3, reviewers=2)
    first, second, _ = rnd.items.order_by("id")
    for reviewer, item, choice in ((md, first, "A"), (md2, first, "A"), (md, second, "A")):
        services.decision_create(item=item, reviewer=reviewer, choice=choice, seconds=4)
    services.decision_create(item=second, reviewer=md2, choice="B", seconds=4)  # a tie

    sign_in(page, admin_user)
    page.goto(url(f"/rounds/{rnd.number}/"))
    table = page.locator("#team-mds")
    table.wait_for()
    mine = cells(page, f"#team-mds tr[data-md={md.username}]")
    assert mine["reviewed_round"] == "2" and mine["reviewed_total"] == "2"
    # Only the first item is settled with two MDs on it; both picked its outcome.
    assert mine["agreement_round"].startswith("100 %") and "(1/1)" in mine["agreement_round"]
    assert mine["per_hour_round"] == "900"  # 2 picks in 8 seconds
    drawer = cells(page, "#team-mds tr[data-md=drawer]")
    assert drawer["drawn_round"] == "3" and drawer["reviewed_round"] == "0"
    # md1 and md2: (A, A) and (A, B): half alike, and kappa 0 (what chance gives).
    pair = cells(page, f"#team-pairs tr[data-pair={md.username}-{md2.username}]")
    assert pair["shared_round"] == "2" and pair["percent_round"] == "50 %"
    assert pair["kappa_round"] == "0.00"
    table.scroll_into_view_if_needed()
    shot(page, "dashboard-team", full_page=True)

    page.goto(url("/rounds/"))
    page.click("#advanced-order summary")
    page.select_option("#id_order", "disagreement")
    assert "1 − mean pairwise Dice" in page.locator("#advanced-order").inner_text()
    shot(page, "rounds-order", full_page=True)


def test_a_queue_filter_is_kept_from_image_to_image(page, sign_in, url, shot, md2, reviewing_round):
    rnd = reviewing_round(images=3)
    flagged = list(rnd.items.order_by("id"))[1:]
    for item in flagged:
        services.image_flags_set(image=item.image, author=md2, flags={"uncertain": True})

    sign_in(page, md2)
    page.goto(url("/queue/"))
    page.select_option("#queue-filter select[name=flag]", "uncertain")
    shot(page, "queue-filter")
    page.click("#start-filtered")
    page.wait_for_url("**/review/*/?flag=uncertain")
    assert (
        "Only flagged “uncertain” by you" in page.locator("[data-testid=queue-filter]").inner_text()
    )
    first = review_ready(page)
    assert first == str(flagged[0].uuid)
    shot(page, "review-filtered")
    pick_a(page)
    page.wait_for_function(f"window.maskloopReview.currentItemId() !== '{first}'")
    # The next item came from the filtered queue, and the address bar kept the filter.
    assert page.evaluate("window.maskloopReview.currentItemId()") == str(flagged[1].uuid)
    assert page.url.endswith(f"/review/{flagged[1].uuid}/?flag=uncertain")
    with page.expect_navigation(url="**/queue/?flag=uncertain"):
        pick_a(page)
    assert Decision.objects.filter(reviewer=md2).count() == 2
    warning = page.locator("[data-testid=filter-matching]").inner_text()
    assert "None of your 1 item to review matches flagged “uncertain” by you" in warning
    shot(page, "queue-filter-empty")
    page.goto(url("/review/next/?flag=uncertain"))
    assert (
        "Clear it to review the other 1 item." in page.locator(".messages, main").first.inner_text()
    )
