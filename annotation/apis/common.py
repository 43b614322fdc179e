"""What every part of the API shares: the error handler and PNG responses."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import status
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
    return drf_exception_handler(exc, context)


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
    max_side = None
    if request is not None and request.query_params.get("max"):
        try:
            max_side = int(request.query_params["max"])
        except ValueError:
            raise DomainError(f"max must be one of {_display_sizes()}") from None
    try:
        data = storage.display_copy(name, max_side, form=form)
    except ValueError as exc:
        raise DomainError(str(exc)) from None
    response = HttpResponse(data, content_type="image/png")
    response["Cache-Control"] = "private, max-age=3600"
    return response


def _display_sizes() -> str:
    return ", ".join(map(str, storage.DISPLAY_SIZES))
