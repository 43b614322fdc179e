"""The friendly error pages with DEBUG on (as the demo runs): a view's crash answers 500.html
and logs the traceback; the API keeps Django's own handling."""

import logging

from django.http import HttpResponse
from django.test import RequestFactory

from config.error_pages import FriendlyErrorPagesMiddleware


def test_a_crash_with_debug_on_answers_the_friendly_page_and_logs_it(settings, caplog):
    settings.DEBUG = True
    middleware = FriendlyErrorPagesMiddleware(HttpResponse)
    page = RequestFactory().get("/rounds/")
    with caplog.at_level(logging.ERROR, logger="django.request"):
        response = middleware.process_exception(page, RuntimeError("boom"))
    assert response is not None and response.status_code == 500
    assert b"Something went wrong on our side" in response.content
    assert b"boom" not in response.content and "boom" in caplog.text
    assert (
        middleware.process_exception(RequestFactory().get("/api/rounds/"), RuntimeError()) is None
    )
    settings.DEBUG = False  # Django's handler500 answers with the same page
    assert middleware.process_exception(page, RuntimeError()) is None
