"""What every part of the API shares: the error handler and PNG responses."""

from __future__ import annotations

import re
import traceback

from django.core.exceptions import (
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.db import DataError
from django.http import HttpResponse, JsonResponse
from django.views import defaults
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import status
from rest_framework.exceptions import ErrorDetail, ParseError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from annotation import storage
from annotation.errors import DomainError
from annotation.imaging import InvalidImageError


def exception_handler(exc, context):
    """Domain and input errors become a JSON `detail` with the reason, never a 500."""
    if isinstance(exc, DomainError):
        return Response({"detail": str(exc)}, status=exc.status_code)
    if isinstance(exc, InvalidImageError):
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, RequestDataTooBig):
        return Response(
            {"detail": "the request body is larger than the limit"},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, (TooManyFieldsSent, TooManyFilesSent)):
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, SuspiciousOperation):
        return Response({"detail": "the request is malformed"}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, RecursionError) and _raised_by_a_parser(exc):
        exc = ParseError("JSON parse error - nested too deeply")
    if isinstance(exc, DataError):
        # The database refused a value the serializers let through (out of range, too long):
        # the request's fault, said as such, never a 500. The first line is the reason.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid value"
        return Response(
            {"detail": f"a value does not fit its field: {reason}"},
            status=status.HTTP_400_BAD_REQUEST,
        )
    response = drf_exception_handler(exc, context)
    if response is not None:
        response.data = _printable(response.data)
    return response


def not_found(request, exception=None):
    """The site's 404 handler: under /api/ (an id that is not even of the path's type, so no
    view ran) the JSON error the schema documents; elsewhere Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
    return defaults.page_not_found(request, exception)


def _raised_by_a_parser(exc: BaseException) -> bool:
    # json nests one Python call per bracket: "[" * 100_000 exhausts the stack while parsing.
    return any(
        frame.filename.endswith(("rest_framework/parsers.py", "json/decoder.py"))
        for frame in traceback.extract_tb(exc.__traceback__)
    )


_SURROGATE = re.compile("[\ud800-\udfff]")


def _printable(data):
    """Error details echo the input; a lone surrogate in it (valid in JSON's \\u escapes, not in
    UTF-8) would make the 400 itself fail to render. It becomes U+FFFD."""
    if isinstance(data, str):
        cleaned = _SURROGATE.sub("\ufffd", data)
        if cleaned == data:
            return data
        return ErrorDetail(cleaned, code=getattr(data, "code", None))
    if isinstance(data, dict):
        return {key: _printable(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_printable(value) for value in data]
    return data


PNG = {(200, "image/png"): OpenApiTypes.BINARY}
DISPLAY_MAX = OpenApiParameter(
    "max",
    OpenApiTypes.INT,
    enum=list(storage.DISPLAY_SIZES),
    description="A cached copy no larger than this on its long side, for display "
    "(masks stay 0/255). Default: the stored file at full size.",
)
OVERLAY = OpenApiParameter(
    "overlay",
    OpenApiTypes.INT,
    enum=[1],
    description="The mask as an RGBA overlay: translucent fill, opaque one-pixel outline.",
)


def png_response(name: str | None, request=None, *, form: str = "image") -> HttpResponse:
    """A stored PNG with no file name attached: a name would identify the image or mask.

    `?max=1024` (512, 1024, 1536 or 2048) serves a cached downscaled copy for fast display;
    `form` says how to make it (see storage.display_copy).
    """
    try:
        data = storage.display_copy(name, display_max(request), form=form)
    except ValueError as exc:
        raise DomainError(str(exc)) from None
    return png_bytes_response(data)


def display_max(request) -> int | None:
    """The `?max=` of a display request (checked against the sizes by storage), or None."""
    if request is None or not request.query_params.get("max"):
        return None
    try:
        return int(request.query_params["max"])
    except ValueError:
        raise DomainError(f"max must be one of {_display_sizes()}") from None


def png_bytes_response(data: bytes) -> HttpResponse:
    """PNG bytes as a response, with no file name attached."""
    response = HttpResponse(data, content_type="image/png")
    response["Cache-Control"] = "private, max-age=3600"
    return response


def _display_sizes() -> str:
    return ", ".join(map(str, storage.DISPLAY_SIZES))
