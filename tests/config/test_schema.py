"""The OpenAPI schema is served and covers every API operation."""

import pytest
import yaml

pytestmark = pytest.mark.django_db


def test_schema_is_served_and_lists_every_api_path(api, md):
    response = api(md).get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    paths = set(schema["paths"])
    for path in [
        "/api/images/",
        "/api/images/upload/",
        "/api/images/{image_id}/masks/",
        "/api/rounds/",
        "/api/rounds/{number}/cancel/",
        "/api/review-items/next/",
        "/api/review-items/{item_uuid}/decision/",
        "/api/exports/",
        "/api/exports/{export_uuid}/download/",
    ]:
        assert path in paths, path
    decision = schema["paths"]["/api/review-items/{item_uuid}/decision/"]["post"]
    assert "requestBody" in decision


@pytest.fixture
def schema(api, md):
    response = api(md).get("/api/schema/")
    assert response.status_code == 200
    return yaml.safe_load(response.content)


def _component(schema, ref):
    return schema["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]


def _body_schema(schema, path, method, content_type):
    body = schema["paths"][path][method]["requestBody"]["content"]
    return _component(schema, body[content_type]["schema"])


def test_file_fields_are_binary_uploads(schema):
    """A generated client uploads a file only if the field is `format: binary`, not a URI."""
    for path, fields in [
        ("/api/images/upload/", ["file", "mask"]),
        ("/api/images/{image_id}/masks/", ["mask"]),
        ("/api/infer/", ["file"]),
    ]:
        body = _body_schema(schema, path, "post", "multipart/form-data")
        for field in fields:
            assert body["properties"][field]["type"] == "string", (path, field)
            assert body["properties"][field]["format"] == "binary", (path, field)


def test_mask_author_and_round_are_nullable(schema):
    """A predicted mask has no author and a manual one no round: both answer null."""
    mask = schema["components"]["schemas"]["MaskOutput"]["properties"]
    assert mask["author"].get("nullable") is True
    assert mask["round"].get("nullable") is True


def test_every_operation_documents_its_errors(schema):
    error = schema["components"]["schemas"]["Error"]
    assert error["properties"]["detail"]["type"] == "string"
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            responses = operation["responses"]
            for code in ("400", "403"):
                ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Error", (path, method, code)
            if "{" in path:
                assert "404" in responses, (path, method)
            if method == "post":
                assert "409" in responses, (path, method)
    assert "413" in schema["paths"]["/api/images/upload/"]["post"]["responses"]
    assert "413" in schema["paths"]["/api/infer/"]["post"]["responses"]


def test_round_start_takes_json_only(schema, api, admin_user):
    """`networks` is a list of lists: no form can carry it, so only JSON is advertised."""
    content = schema["paths"]["/api/rounds/"]["post"]["requestBody"]["content"]
    assert list(content) == ["application/json"]
    response = api(admin_user).post("/api/rounds/", {"stage": "stage1"}, format="multipart")
    assert response.status_code == 415


def test_uploads_are_multipart_only(schema, api, md, make_image):
    """A file cannot travel url-encoded: only multipart is advertised, and a form is refused."""
    for path in ["/api/images/upload/", "/api/images/{image_id}/masks/", "/api/infer/"]:
        content = schema["paths"][path]["post"]["requestBody"]["content"]
        assert list(content) == ["multipart/form-data"], path
    image = make_image()
    response = api(md).post(
        f"/api/images/{image.pk}/masks/", "mask=x", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 415


def test_an_api_path_that_matches_no_route_answers_json(api, md):
    """An id not even of the path's type never reaches a view; it still gets the documented
    JSON error, not Django's HTML page."""
    response = api(md).get("/api/review-items/not-a-uuid/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found."}
    page = api(md).get("/no-such-page/")
    assert page.status_code == 404
    assert page["Content-Type"].startswith("text/html")
