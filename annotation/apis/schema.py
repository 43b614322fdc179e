"""OpenAPI post-processing: every operation documents the errors the API can answer."""

from __future__ import annotations

import copy
import threading

from drf_spectacular.views import SpectacularAPIView

ERROR_SCHEMA = {
    "type": "object",
    "description": "An error. `detail` says why; a rejected body instead maps each field "
    "(or `non_field_errors`) to its reasons.",
    "properties": {"detail": {"type": "string", "readOnly": True}},
    "additionalProperties": True,
}

_REASONS = {
    "400": "The request is invalid; the body says why.",
    "403": "Not logged in, or the user's role may not do this.",
    "404": "Nothing with this id.",
    "409": "The workflow is not in a state that allows this (e.g. a round is running).",
    "413": "The upload is larger than the limit.",
}
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_METHODS = ("get", "post", "put", "patch", "delete")
# Reads that depend on the workflow: the next item to review, a map without a final ensemble.
_GETS_WITH_CONFLICT = ("/review-items/next/", "/infection-map/")


def error_responses(result, generator, request, public):
    """drf-spectacular postprocessing hook: adds the shared Error component and, per operation,
    the 4xx answers it can give (400 and 403 everywhere, 404 with a path parameter, 409 on
    writes, 413 with an uploaded body)."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, item in result.get("paths", {}).items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            codes = ["400", "403"]
            if "{" in path:
                codes.append("404")
            if method != "get" or path.endswith(_GETS_WITH_CONFLICT):
                codes.append("409")
            body = operation.get("requestBody", {}).get("content", {})
            if "multipart/form-data" in body or path.startswith("/api/infer"):
                codes.append("413")
            responses = operation.setdefault("responses", {})
            for code in codes:
                # An operation may already name the code (`409: None`): it gets the body too.
                response = responses.setdefault(code, {"description": _REASONS[code]})
                if not response.get("description"):
                    response["description"] = _REASONS[code]
                response.setdefault("content", copy.deepcopy(_ERROR_CONTENT))
    return result


class SchemaView(SpectacularAPIView):
    """`/api/schema/`, built by one thread at a time.

    drf-spectacular resolves its optional extensions lazily, on the first schema build, by
    rewriting class attributes (`OpenApiFilterExtension.target_class` and the like) without a
    lock: two threads building the first schema at once (gunicorn threads, or schemathesis
    signing in as three roles) can see one half-rewritten and answer 500 ('NoneType' object
    has no attribute 'startswith'). The schema is built rarely, so building it under a lock
    costs nothing that matters.
    """

    _building = threading.Lock()

    def _get_schema_response(self, request):
        with self._building:
            return super()._get_schema_response(request)
