"""Limits every request must keep, checked before any view or parser reads the body."""

from __future__ import annotations

import re

from django.conf import settings
from django.http import HttpResponse, JsonResponse

# NUL and the other C0 control characters (and DEL) never belong in a path or a query: PostgreSQL
# cannot even store a NUL, so one would otherwise surface as a server error deep in a query.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def request_limit(content_type: str) -> int:
    """The largest body accepted: files and their form fields, or the small body of any other
    request (JSON, a form)."""
    if content_type.startswith("multipart/form-data"):
        return settings.MASKLOOP_MAX_UPLOAD_BYTES + settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


class RequestLimitsMiddleware:
    """413 for a body over the upload limit (by its Content-Length, so nothing is read or
    stored), 400 for a NUL or other control character in the path or the query string."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _refuse(request, 400, "the Content-Length header is not a number")
        limit = request_limit(request.META.get("CONTENT_TYPE", ""))
        if length > limit:
            return _refuse(
                request,
                413,
                f"the request is {length / 2**20:.1f} MiB; the limit is {limit / 2**20:.1f} MiB",
            )
        if CONTROL.search(request.path_info):
            return _refuse(request, 400, "the address holds a NUL or other control character")
        for key, values in request.GET.lists():
            if CONTROL.search(key) or any(CONTROL.search(v) for v in values):
                return _refuse(
                    request,
                    400,
                    f"the query parameter {key[:40]!r} holds a NUL or other control character",
                )
        return self.get_response(request)


def _refuse(request, status: int, detail: str) -> HttpResponse:
    if request.path_info.startswith("/api/"):
        return JsonResponse({"detail": detail}, status=status)
    return HttpResponse(detail, status=status, content_type="text/plain; charset=utf-8")
