"""docker-compose.yml parses and runs the stack the deployment needs (Docker does not run here)."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_names_the_services_and_reserves_a_gpu_for_training():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "web", "training", "default"} <= set(services)
    assert "gunicorn" in services["web"]["command"]
    devices = services["training"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "-Q training" in services["training"]["command"]
    assert "--max-tasks-per-child 1" in services["training"]["command"]
    for name in ("web", "training", "default"):
        assert "media:/data/media" in services[name]["volumes"]
        assert services[name]["environment"]["DATABASE_URL"].startswith("postgres://")
        assert services[name]["environment"]["CELERY_BROKER_URL"].startswith("redis://")
