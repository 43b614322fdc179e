"""Signing in and out, and what each role sees and may open, in Chromium."""

from __future__ import annotations

import pytest

from tests.browser.helpers import BROWSER

pytestmark = BROWSER


def menu(page) -> list[str]:
    return [t.strip() for t in page.locator("nav.topnav > a:not(.brand)").all_inner_texts()]


def test_an_md_sees_only_their_menu_and_cannot_open_admin_or_data_pages(
    page, sign_in, url, shot, md, reviewing_round
):
    rnd = reviewing_round(images=2)
    # A wrong password is refused with a message.
    page.goto(url("/accounts/login/"))
    page.fill("input[name=username]", md.username)
    page.fill("input[name=password]", "not-the-password")
    page.click("form button[type=submit]")
    page.wait_for_load_state()
    assert "/accounts/login/" in page.url
    assert "didn't match" in page.inner_text("main")
    shot(page, "wrong-password")

    sign_in(page, md)
    assert page.url == url("/queue/")
    shot(page, "queue")
    assert menu(page) == ["My queue", "Review", "Infection maps", "Demo"]
    assert page.inner_text(".who") == "md1 · md"

    for step, path in [
        ("rounds", "/rounds/"),
        ("round-detail", f"/rounds/{rnd.number}/"),
        ("exports", "/exports/"),
        ("api-rounds", "/api/rounds/"),
        ("api-exports", "/api/exports/"),
        ("api-masks", f"/api/images/{rnd.items.first().image_id}/masks/"),
    ]:
        response = page.goto(url(path))
        assert response is not None and response.status == 403, f"{path}: {response.status}"
        shot(page, f"forbidden-{step}")

    # Django's own admin is for staff only: an MD is asked to sign in as staff there.
    page.goto(url("/django-admin/"))
    assert "/django-admin/login/" in page.url
    shot(page, "django-admin")

    page.goto(url("/queue/"))
    with page.expect_navigation(url="**/accounts/login/"):
        page.click("nav.topnav button:has-text('Sign out')")
    shot(page, "signed-out")
    assert menu(page) == []
    response = page.goto(url("/queue/"))
    assert "/accounts/login/?next=/queue/" in page.url
    shot(page, "queue-signed-out")
    response = page.goto(url("/api/review-items/next/"))
    assert response is not None and response.status in (401, 403)


@pytest.mark.parametrize(
    "who, start, entries",
    [
        (
            "admin_user",
            "/rounds/",
            ["Rounds", "Screening", "Import", "PACS", "Replays", "Infection maps", "Demo"],
        ),
        ("data_user", "/exports/", ["Exports", "Infection maps", "Demo"]),
    ],
)
def test_admins_and_the_data_team_see_only_their_menu(
    page, sign_in, url, shot, request, who, start, entries
):
    user = request.getfixturevalue(who)
    sign_in(page, user)
    assert page.url == url(start)
    shot(page, "start")
    assert menu(page) == entries
    forbidden = "/queue/" if who == "admin_user" else "/rounds/"
    response = page.goto(url(forbidden))
    assert response is not None and response.status == 403
    shot(page, "forbidden")
