"""The friendly 404 and 500 pages, with DEBUG on as well (the demo runs with DEBUG on).

With DEBUG off Django answers with `handler404` / `handler500` (config/urls.py) and the
templates 404.html and 500.html. With DEBUG on it would show its technical pages instead,
which a demo's users should never see: this middleware answers with the same pages, and
writes the traceback of a server error to the log (the console of `runserver`) instead.
API paths keep their JSON answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseServerError
from django.template import loader
from django.views import defaults

from annotation.apis.common import not_found

logger = logging.getLogger("django.request")


class FriendlyErrorPagesMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        # A path that matched no route: with DEBUG on, Django's technical 404 page was made
        # before any view (or process_exception) ran, so it is replaced here.
        if (
            settings.DEBUG
            and response.status_code == 404
            and getattr(request, "resolver_match", None) is None
        ):
            return not_found(request)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not settings.DEBUG or request.path.startswith("/api/"):
            return None  # Django's own handlers already answer with the friendly pages
        if isinstance(exception, Http404):
            return not_found(request, exception)
        logger.error("Internal Server Error: %s", request.path, exc_info=exception)
        return server_error_page()


def server_error_page() -> HttpResponse:
    """500.html, rendered without the request: whatever failed may be what a request context
    needs (the database, the session)."""
    try:
        return HttpResponseServerError(loader.get_template("500.html").render())
    except Exception:  # the templates themselves are broken: Django's plain page
        return defaults.server_error(HttpRequest())
