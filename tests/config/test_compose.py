"""docker-compose.yml parses and runs the stack the deployment needs (Docker does not run here)."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("web", "training", "default")


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_names_the_services_and_reserves_a_gpu_for_training():
    services = compose()["services"]
    assert {"postgres", "redis", "objectstore", "web", "training", "default"} <= set(services)
    assert "gunicorn" in services["web"]["command"]
    devices = services["training"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "-Q training" in services["training"]["command"]
    assert "--max-tasks-per-child 1" in services["training"]["command"]


def test_web_and_workers_share_only_postgres_redis_and_the_object_store():
    spec = compose()
    services = spec["services"]
    assert "media" not in spec.get("volumes", {}), "no shared media volume any more"
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert "postgres://" in env["DATABASE_URL"]  # ${DATABASE_URL:-…} on other hosts
        assert "redis://" in env["CELERY_BROKER_URL"]
        assert "objectstore:8333" in env["MASKLOOP_S3_ENDPOINT_URL"]
        for key in ("BUCKET", "ACCESS_KEY", "SECRET_KEY"):
            assert env[f"MASKLOOP_S3_{key}"], key
        assert "MASKLOOP_MEDIA_ROOT" not in env
        assert not env["MASKLOOP_WORK_DIR"].startswith("/data/media")
        # A volume, if any, is the host's own scratch space, never one another service mounts.
        for volume in services[name].get("volumes", []):
            source = volume.split(":")[0]
            others = [o for o in APP_SERVICES if o != name]
            assert not any(volume in services[o].get("volumes", []) for o in others), source
        assert "objectstore" in services[name]["depends_on"]


def test_the_object_store_is_seaweedfs_with_its_s3_api_and_a_healthcheck():
    store = compose()["services"]["objectstore"]
    assert store["image"].startswith("chrislusf/seaweedfs")
    assert store["command"].split()[0] == "server" and "-s3" in store["command"].split()
    assert "-s3.port=8333" in store["command"]
    assert "8333" in " ".join(store["healthcheck"]["test"])


def test_the_secret_key_has_no_fallback_and_the_web_app_expects_tls_in_front():
    for name in APP_SERVICES:
        env = compose()["services"][name]["environment"]
        assert env["DJANGO_SECRET_KEY"].startswith("${DJANGO_SECRET_KEY:?")  # required
        assert "change-me" not in env["DJANGO_SECRET_KEY"]
        assert "DJANGO_DEBUG" not in env
        assert env["DJANGO_SECURE_PROXY_SSL_HEADER"].endswith(":-true}")
        assert env["DJANGO_SECURE_SSL_REDIRECT"].endswith(":-true}")


def test_the_image_collects_the_static_files_that_gunicorn_serves():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "manage.py collectstatic --no-input" in dockerfile
    # Collected after the whole tree is copied in, so static/ is there.
    assert dockerfile.index("COPY . .") < dockerfile.index("collectstatic")
    assert "gunicorn config.wsgi:application" in compose()["services"]["web"]["command"]
