"""Fixtures for the browser tests: a real Chromium driven by Playwright against `live_server`.

Each test gets a fresh browser context (own cookies, 1366×768) and page; `sign_in` goes through
the real /accounts/login/ form; `shot("step")` saves artifacts/screenshots/<test>-<step>.png.
Page errors (uncaught exceptions in the page's JavaScript) fail the test.

`celery_workers` starts real `celery worker` processes (training, inference+default) once per
module, on the live test database and the test broker (Redis); a test that needs them asks for
`worker`, which also points the media folder at the one the workers use.

New page tests (e.g. the infection-map demo page) need only `pytestmark = BROWSER` (from
tests.browser.helpers), the `page`, `sign_in`, `url` and `shot` fixtures, and the user and
image fixtures of tests/conftest.py. Test file names must differ from every other test file's
name in tests/ (there are no __init__.py files).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

# Playwright's sync API keeps an asyncio loop running in this thread; the ORM calls the tests
# make between browser steps are still plain synchronous code.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402

from tests.browser.helpers import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.workers import ARTIFACTS  # noqa: E402
from tests.workers import celery_workers as running_workers  # noqa: E402

SCREENSHOTS = ARTIFACTS / "screenshots"
VIEWPORT = {"width": 1366, "height": 768}


# ---------------------------------------------------------------- browser and pages


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"the browser tests need Chromium at {CHROMIUM} (make test installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, live_server) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    console: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(f"{pg.url}: {exc}"))
    pg.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    pg.console_messages = console
    yield pg
    context.close()
    assert not errors, "JavaScript errors in the page:\n" + "\n".join(errors)


@pytest.fixture
def url(live_server):
    """`url("/queue/")` → the live server's absolute address."""

    def make(path: str) -> str:
        return live_server.url + path

    return make


@pytest.fixture
def shot(request):
    """`shot(page, "step")` saves artifacts/screenshots/<test>-<step>.png and returns its path."""
    test = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(pg: Page, step: str, **kwargs) -> Path:
        path = SCREENSHOTS / f"{test}-{step}.png"
        pg.screenshot(path=str(path), **kwargs)
        return path

    return take


@pytest.fixture
def sign_in(url, shot):
    """Signs `user` in through the real sign-in form (password as tests/conftest.make_user sets
    it); lands on the role's start page."""

    def do(pg: Page, user, password: str | None = None) -> Page:
        pg.goto(url("/accounts/login/"))
        shot(pg, f"sign-in-{user.username}")
        pg.fill("input[name=username]", user.username)
        pg.fill("input[name=password]", password or f"{user.username}-pass")
        with pg.expect_navigation():
            pg.click("form button[type=submit]")
        assert "/accounts/login/" not in pg.url, f"{user.username} could not sign in"
        shot(pg, f"signed-in-{user.username}")
        return pg

    return do


# ---------------------------------------------------------------- Celery workers


@pytest.fixture(scope="module")
def celery_workers(django_db_setup, tmp_path_factory):
    """The real workers, shared by the tests of a module (the database is still flushed between
    tests: workers only read the ids they are sent)."""
    with running_workers("browser", tmp_path_factory.mktemp("worker-media")) as workers:
        yield workers


@pytest.fixture
def worker(celery_workers, settings):
    """The module's workers, with this test's media in the folder they read and write."""
    if not celery_workers.alive():
        pytest.fail(f"a Celery worker died; see {celery_workers.logs}")
    settings.MEDIA_ROOT = str(celery_workers.media_root)
    return celery_workers
