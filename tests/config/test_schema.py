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
