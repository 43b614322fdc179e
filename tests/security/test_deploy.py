"""Deployment hardening: production settings, static files under gunicorn, sign-in throttling,
password rules, session-only API authentication and a read-only admin for provenance rows.

The settings tests start fresh processes with the environment of a production host (DEBUG
off, no test overrides), since settings are read once per process.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from annotation.models import Decision, GroundTruth, Mask
from training.models import ModelVersion, TrainingRun

ROOT = Path(__file__).resolve().parents[2]


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This process's environment as a production host would have it: none of the tests'
    relaxations (pyproject's pytest env), SQLite and the broker in a folder of its own."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "MASKLOOP_")) and k not in ("DATABASE_URL",)
    }
    env.pop("CELERY_BROKER_URL", None)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(64),
        MASKLOOP_VAR_DIR=str(tmp_path / "var"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# --- production settings ---------------------------------------------------------------------


def test_production_settings_pass_check_deploy_without_a_warning(tmp_path):
    result = manage(production_env(tmp_path), "check", "--deploy", "--fail-level", "WARNING")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "no issues" in output and "WARNING" not in output, output


@pytest.mark.parametrize(
    "key",
    [None, "", "change-me", "maskloop-insecure-development-key", "django-insecure-" + "x" * 60],
)
def test_without_debug_a_missing_or_weak_secret_key_refuses_to_start(tmp_path, key):
    env = production_env(tmp_path)
    if key is None:
        del env["DJANGO_SECRET_KEY"]
    else:
        env["DJANGO_SECRET_KEY"] = key
    result = manage(env, "check")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "set DJANGO_SECRET_KEY" in result.stderr, result.stderr


def test_with_debug_on_the_demo_starts_without_a_key(tmp_path):
    env = production_env(tmp_path, DJANGO_DEBUG="1")
    del env["DJANGO_SECRET_KEY"]
    result = manage(env, "check")
    assert result.returncode == 0, result.stderr


def test_the_demo_s_embedded_sqlite_database_takes_every_migration_and_the_seed(tmp_path):
    # `make demo` runs on SQLite, the suite on PostgreSQL: a migration only PostgreSQL can run
    # (e.g. an index with NULLS LAST) would break the demo and nothing else.
    env = production_env(tmp_path, DJANGO_DEBUG="1")
    for args in (("migrate", "--no-input", "-v0"), ("seed_demo",), ("migrate", "--check")):
        result = manage(env, *args)
        assert result.returncode == 0, f"{args}: {result.stderr[-2000:]}"
    assert (tmp_path / "var" / "maskloop.sqlite3").is_file()


def test_production_defaults_are_secure_and_can_be_relaxed_from_the_environment(tmp_path):
    code = (
        "import json; from django.conf import settings as s; print(json.dumps({k: getattr(s, k, "
        "None) for k in ('SECURE_SSL_REDIRECT', 'SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', "
        "'SECURE_HSTS_SECONDS', 'SECURE_PROXY_SSL_HEADER', 'SESSION_COOKIE_AGE')}))"
    )
    prod = json.loads(manage(production_env(tmp_path), "shell", "-c", code).stdout.splitlines()[-1])
    assert prod == {
        "SECURE_SSL_REDIRECT": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": 31_536_000,
        "SECURE_PROXY_SSL_HEADER": None,  # only behind a proxy that sets it
        "SESSION_COOKIE_AGE": 12 * 3600,
    }
    relaxed = production_env(
        tmp_path,
        DJANGO_SECURE_PROXY_SSL_HEADER="1",
        DJANGO_SECURE_HSTS_SECONDS="3600",
        DJANGO_SESSION_SECONDS="600",
    )
    got = json.loads(manage(relaxed, "shell", "-c", code).stdout.splitlines()[-1])
    assert got["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert (got["SECURE_HSTS_SECONDS"], got["SESSION_COOKIE_AGE"]) == (3600, 600)


# --- static files under gunicorn -------------------------------------------------------------


def _get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_gunicorn_serves_the_collected_static_files(tmp_path):
    """As the compose file's web service runs: collectstatic, then gunicorn on the WSGI app,
    DEBUG off, behind a proxy that terminates TLS."""
    env = production_env(tmp_path, DJANGO_SECURE_PROXY_SSL_HEADER="1")
    collected = manage(env, "collectstatic", "--no-input", "-v0")
    assert collected.returncode == 0, collected.stderr
    static_root = tmp_path / "var" / "staticfiles"
    manifest = json.loads((static_root / "staticfiles.json").read_text())["paths"]
    hashed = manifest["js/review.js"]
    assert hashed != "js/review.js" and (static_root / f"{hashed}.gz").is_file()

    log = tmp_path / "gunicorn.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi:application"]
            + ["--bind", "127.0.0.1:0", "--workers", "1", "--error-logfile", "-"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        port = None
        while port is None and time.monotonic() < deadline and server.poll() is None:
            found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", log.read_text())
            port = found and int(found.group(1))
            time.sleep(0.2)
        assert port, log.read_text()
        base = f"http://127.0.0.1:{port}"
        https = {"X-Forwarded-Proto": "https", "Accept-Encoding": "gzip"}

        status, headers, body = _get(f"{base}/static/js/review.js", {"X-Forwarded-Proto": "https"})
        assert status == 200, (status, log.read_text())
        assert body == (ROOT / "static" / "js" / "review.js").read_bytes()
        assert "javascript" in headers["Content-Type"]

        status, headers, body = _get(f"{base}/static/{hashed}", https)
        assert status == 200 and headers.get("Content-Encoding") == "gzip"
        assert "immutable" in headers["Cache-Control"]  # hashed names are cached for good
        assert "max-age=31536000" in headers["Strict-Transport-Security"]

        # Pages name the hashed copies (the sign-in page needs no database row).
        status, _, page = _get(f"{base}/accounts/login/", {"X-Forwarded-Proto": "https"})
        assert status == 200
        assert f'href="/static/{manifest["css/app.css"]}"'.encode() in page
        status, _, _ = _get(f"{base}/static/{manifest['css/app.css']}", https)
        assert status == 200
        # Plain HTTP is sent to HTTPS.
        status, headers, _ = _get(f"{base}/static/js/review.js", {})
        assert status == 301 and headers["Location"].startswith("https://")
    finally:
        server.terminate()
        server.wait(timeout=30)


# --- sign-in: throttling, password rules, no Basic auth --------------------------------------


def _sign_in(client: Client, username: str, password: str):
    return client.post(reverse("login"), {"username": username, "password": password})


def _signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_wrong_passwords_lock_the_account_out_for_the_cool_off(settings, md, md2):
    client = Client(REMOTE_ADDR="203.0.113.7")
    limit = settings.AXES_FAILURE_LIMIT
    for attempt in range(1, limit):
        response = _sign_in(client, "md1", f"wrong-{attempt}")
        assert response.status_code == 200 and not _signed_in(client)  # the form again
    response = _sign_in(client, "md1", "wrong-last")
    assert response.status_code == 429
    assert b"too many login attempts" in response.content

    # The right password during the cool-off is refused too.
    response = _sign_in(client, "md1", "md1-pass")
    assert response.status_code == 429 and not _signed_in(client)

    # Locked by username and address: another user from there, or md1 from elsewhere, may sign in.
    assert _sign_in(client, "md2", "md2-pass").status_code == 302 and _signed_in(client)
    elsewhere = Client(REMOTE_ADDR="198.51.100.9")
    assert _sign_in(elsewhere, "md1", "md1-pass").status_code == 302 and _signed_in(elsewhere)

    # Once the cool-off has passed, md1 signs in from the first address.
    AccessAttempt.objects.update(
        attempt_time=AccessAttempt.objects.first().attempt_time
        - settings.AXES_COOLOFF_TIME
        - timedelta(minutes=1)
    )
    again = Client(REMOTE_ADDR="203.0.113.7")
    assert _sign_in(again, "md1", "md1-pass").status_code == 302 and _signed_in(again)


def test_behind_the_proxy_the_lockout_is_per_client_not_per_proxy(settings, md):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    proxy = "10.0.0.2"  # every request reaches gunicorn from the proxy
    attacker = Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="1.2.3.4, 203.0.113.66")
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        response = _sign_in(attacker, "md1", f"guess-{attempt}")
    assert response.status_code == 429
    # A forged left-most entry does not get the attacker out of the lockout...
    forged = Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="198.51.100.1, 203.0.113.66")
    assert _sign_in(forged, "md1", "md1-pass").status_code == 429
    # ...and md1 at their own desk, through the same proxy, is not locked out.
    desk = Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="192.0.2.10")
    assert _sign_in(desk, "md1", "md1-pass").status_code == 302 and _signed_in(desk)


def test_the_admin_sign_in_is_throttled_too(settings, admin_user):
    admin_user.is_staff = True
    admin_user.save()
    client = Client(REMOTE_ADDR="203.0.113.8")
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        response = client.post(
            "/django-admin/login/", {"username": "boss", "password": f"nope-{attempt}"}
        )
    assert response.status_code == 429
    response = client.post("/django-admin/login/", {"username": "boss", "password": "boss-pass"})
    assert response.status_code == 429 and not _signed_in(client)


@pytest.mark.parametrize(
    "password", ["short1", "password123", "12345678901234", "drhouse-md", "drhousemd1"]
)
def test_weak_passwords_are_refused(db, password):
    user = get_user_model()(username="drhouse-md", email="drhouse@example.org")
    with pytest.raises(ValidationError):
        validate_password(password, user)


def test_a_decent_password_passes(db):
    user = get_user_model()(username="drhouse-md")
    validate_password("violet-kettle-92-harbour", user)


def test_the_api_does_not_take_basic_auth(admin_user):
    credentials = base64.b64encode(b"boss:boss-pass").decode()
    client = Client(HTTP_AUTHORIZATION=f"Basic {credentials}")
    response = client.get("/api/rounds/")
    assert response.status_code in (401, 403)
    assert "Basic" not in response.get("WWW-Authenticate", "")
    assert not _signed_in(client)


# --- the Django admin is read-only for provenance --------------------------------------------


@pytest.fixture
def staff(admin_user):
    admin_user.is_staff = True
    admin_user.is_superuser = True
    admin_user.save()
    client = Client()
    client.force_login(admin_user)
    return client


def _admin_url(obj, action: str) -> str:
    meta = obj._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_{action}", args=[obj.pk])


def test_staff_can_view_but_not_change_or_delete_masks_decisions_and_ground_truth(
    staff, reviewing_round, md
):
    from annotation import services

    rnd = reviewing_round(images=2)
    item = rnd.items.first()
    candidate = item.candidates.get(label="B")
    services.decision_create(item=item, reviewer=md, choice="B", seconds=3.0)
    decision = Decision.objects.get(item=item)
    truth = GroundTruth.objects.get(image=item.image)
    mask = candidate.mask
    rows = [mask, decision, truth]
    before = [(type(o).objects.count(), type(o).objects.filter(pk=o.pk).values()[0]) for o in rows]

    for obj in rows:
        assert staff.get(_admin_url(obj, "change")).status_code == 200  # viewable
        listing = staff.get(
            reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_changelist")
        )
        assert listing.status_code == 200
        assert b"delete_selected" not in listing.content  # no bulk delete action
        assert staff.post(_admin_url(obj, "change"), {"_save": "Save"}).status_code == 403
        assert staff.post(_admin_url(obj, "delete"), {"post": "yes"}).status_code == 403
        add = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_add")
        assert staff.post(add, {}).status_code == 403

    after = [(type(o).objects.count(), type(o).objects.filter(pk=o.pk).values()[0]) for o in rows]
    assert after == before


def test_model_versions_and_runs_are_read_only_too(staff, reviewing_round):
    reviewing_round(images=2)
    for obj in (ModelVersion.objects.first(), TrainingRun.objects.first()):
        assert staff.get(_admin_url(obj, "change")).status_code == 200
        assert staff.post(_admin_url(obj, "delete"), {"post": "yes"}).status_code == 403
    assert ModelVersion.objects.exists() and Mask.objects.exists()
