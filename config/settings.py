"""Settings, all from environment variables.

With nothing set, maskloop runs on an embedded default: SQLite for the database and kombu's
filesystem transport for the Celery broker, both under ./var. Set DATABASE_URL and
CELERY_BROKER_URL to run on PostgreSQL and Redis.
"""

from datetime import timedelta
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("MASKLOOP_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()

DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# Security. With DJANGO_DEBUG off these pass `manage.py check --deploy` without a warning; each
# can be relaxed through its environment variable (e.g. a trial on plain HTTP).
_DEVELOPMENT_KEY = "maskloop-insecure-development-key"
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default=_DEVELOPMENT_KEY if DEBUG else "")
if not DEBUG and (
    SECRET_KEY == _DEVELOPMENT_KEY
    or SECRET_KEY.startswith("django-insecure")
    or len(SECRET_KEY) < 50
    or len(set(SECRET_KEY)) < 5
):
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is unset or too weak, and DJANGO_DEBUG is off: set DJANGO_SECRET_KEY "
        "to a random string of at least 50 characters, e.g. the output of  python -c "
        '"from django.core.management.utils import get_random_secret_key as k; print(k())"  '
        "(or set DJANGO_DEBUG=1 for a local trial)."
    )
# Only behind a proxy that terminates TLS and sets X-Forwarded-Proto (else a client could).
if env.bool("DJANGO_SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=True)
SESSION_COOKIE_AGE = env.int("DJANGO_SESSION_SECONDS", default=12 * 3600)  # one working day

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "axes",
    "annotation",
    "training",
    "inference",
    "config",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files from STATIC_ROOT under gunicorn (and from the app folders with DEBUG on).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "annotation.middleware.RequestLimitsMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a locked-out sign-in into its 429 page
    "config.error_pages.FriendlyErrorPagesMiddleware",  # the 404 / 500 pages with DEBUG on too
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "annotation.context_processors.roles",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'maskloop.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the worker write concurrently; wait for the lock instead of failing.
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
DATABASES["default"]["ATOMIC_REQUESTS"] = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"django.contrib.auth.password_validation.{name}"}
    for name in (
        "UserAttributeSimilarityValidator",
        "MinimumLengthValidator",
        "CommonPasswordValidator",
        "NumericPasswordValidator",
    )
]
# Sign-in throttling (django-axes): after AXES_FAILURE_LIMIT wrong passwords for one username
# from one address, that pair is refused (429) for the cool-off, even with the right password.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("MASKLOOP_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("MASKLOOP_LOGIN_COOLOFF_MINUTES", default=30))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_CLIENT_IP_CALLABLE = "config.security.client_ip"  # the client's, also behind the proxy
AXES_RESET_ON_SUCCESS = True
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env.str("MASKLOOP_MEDIA_ROOT", default=str(VAR_DIR / "media")))
# This host's own folders, never shared between hosts: training work folders, and local copies
# of stored files for TensorFlow and PIL (see annotation.storage.local_copy).
MASKLOOP_WORK_DIR = Path(env.str("MASKLOOP_WORK_DIR", default=str(VAR_DIR / "work")))
# How often a training's checkpoint is copied to the media storage, so that another host can
# resume it (a checkpoint holds the weights and Adam's moments: ~3× the weights).
MASKLOOP_CHECKPOINT_SECONDS = env.int("MASKLOOP_CHECKPOINT_SECONDS", default=600)
MASKLOOP_CACHE_DIR = Path(env.str("MASKLOOP_CACHE_DIR", default=str(VAR_DIR / "cache")))
# Uploads and imports: an image larger than this is refused from its header, before decoding.
MASKLOOP_MAX_IMAGE_SIDE = env.int("MASKLOOP_MAX_IMAGE_SIDE", default=8192)
MASKLOOP_MAX_IMAGE_PIXELS = env.int("MASKLOOP_MAX_IMAGE_PIXELS", default=40_000_000)
MASKLOOP_MAX_UPLOAD_BYTES = env.int("MASKLOOP_MAX_UPLOAD_BYTES", default=64 * 1024 * 1024)
# When set, a DICOM PatientID is stored as sha256(salt + id)[:16], never as it is.
MASKLOOP_PATIENT_ID_SALT = env.str("MASKLOOP_PATIENT_ID_SALT", default="")
# A PACS pull (annotation.dicomweb) tries each request this many times, backing off 2, 4, 8… s
# between tries, before it stops and says why; `ingest` run again resumes it.
MASKLOOP_DICOMWEB_ATTEMPTS = env.int("MASKLOOP_DICOMWEB_ATTEMPTS", default=5)
# Stage II prediction is split into shards of this many images, one inference task each.
MASKLOOP_PREDICT_SHARD = env.int("MASKLOOP_PREDICT_SHARD", default=256)

# Files: the MEDIA_ROOT folder (the demo, one host), or an S3-compatible object store shared by
# the web host and every worker host when MASKLOOP_S3_ENDPOINT_URL is set.
MASKLOOP_S3_ENDPOINT_URL = env.str("MASKLOOP_S3_ENDPOINT_URL", default="")
# Where browsers reach the store, when not at the endpoint the servers use (presigned downloads).
MASKLOOP_S3_PUBLIC_URL = env.str("MASKLOOP_S3_PUBLIC_URL", default="")
MASKLOOP_DOWNLOAD_URL_SECONDS = env.int("MASKLOOP_DOWNLOAD_URL_SECONDS", default=300)
STORAGES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Compressed files with content hashes in their names, served by WhiteNoise and cached for
    # good by browsers; with DEBUG on, the files as they are in static/.
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "config.staticfiles.StaticFilesStorage"
    },
}
if MASKLOOP_S3_ENDPOINT_URL:
    from botocore.config import Config as _BotoConfig

    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "endpoint_url": MASKLOOP_S3_ENDPOINT_URL,
            "bucket_name": env.str("MASKLOOP_S3_BUCKET"),
            "access_key": env.str("MASKLOOP_S3_ACCESS_KEY"),
            "secret_key": env.str("MASKLOOP_S3_SECRET_KEY"),
            "region_name": env.str("MASKLOOP_S3_REGION", default="us-east-1"),
            "location": env.str("MASKLOOP_S3_PREFIX", default=""),
            "file_overwrite": True,  # names are unique already; checkpoints replace theirs
            "default_acl": None,
            "querystring_expire": MASKLOOP_DOWNLOAD_URL_SECONDS,
            # Path-style URLs and SigV4 work on every S3-compatible store; checksums only
            # where S3 requires them, as not every store accepts the CRC headers boto3 sends
            # by default.
            "client_config": _BotoConfig(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 5, "mode": "standard"},
            ),
        },
    }
# A request body other than files (JSON, form fields) is small; files over 2.5 MB go to disk.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Sessions only: the sign-in page is where throttling happens (no Basic auth).
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "annotation.apis.common.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "maskloop API",
    "DESCRIPTION": "Collaborative ground-truth masks for COVID-19 infection on chest X-rays.",
    "VERSION": "0.1.0",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # Separate request and response components, so file fields are uploads (format: binary)
    # and read-only fields stay out of request bodies: what a generated client needs.
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "annotation.apis.schema.error_responses",
    ],
}

# Celery. The embedded default is kombu's filesystem transport: a real broker shared by the web
# process and a separate worker process, with nothing to install.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
_BROKER_DIR = VAR_DIR / "broker"
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("queue", "processed", "control"):
        (_BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_BROKER_DIR / "queue"),
        "data_folder_out": str(_BROKER_DIR / "queue"),
        "processed_folder": str(_BROKER_DIR / "processed"),
        "control_folder": str(_BROKER_DIR / "control"),
        "store_processed": False,
        "polling_interval": 0.5,
    }
# Long and lost tasks. A task runs at most its queue's time limit (a soft limit a minute or 5 %
# earlier lets it fail in words); Redis hands an unacknowledged task to another worker only
# after the visibility timeout, so that must exceed the longest limit, or a long training would
# be delivered twice. What is lost in between (a killed worker, a message the broker dropped or
# never got) the reconciler finds by its stale heartbeat and sends again (see
# annotation/services/reconcile.py), run by `celery beat` every MASKLOOP_RECONCILE_SECONDS.
MASKLOOP_TIME_LIMITS = {
    "training": env.int("MASKLOOP_TRAINING_TIME_LIMIT", default=5 * 3600),
    "inference": env.int("MASKLOOP_INFERENCE_TIME_LIMIT", default=2 * 3600),
    "default": env.int("MASKLOOP_DEFAULT_TIME_LIMIT", default=3600),
}
MASKLOOP_VISIBILITY_TIMEOUT = env.int(
    "MASKLOOP_VISIBILITY_TIMEOUT", default=max(MASKLOOP_TIME_LIMITS.values()) + 3600
)
# A worker holding a training run beats every MASKLOOP_HEARTBEAT_SECONDS; a run, prediction or
# export with no sign of life for MASKLOOP_HEARTBEAT_STALE_SECONDS is taken for lost.
MASKLOOP_HEARTBEAT_SECONDS = env.int("MASKLOOP_HEARTBEAT_SECONDS", default=30)
MASKLOOP_HEARTBEAT_STALE_SECONDS = env.int("MASKLOOP_HEARTBEAT_STALE_SECONDS", default=300)
# Predictions give no heartbeat of their own, only a report every few dozen images (after the
# model is loaded): a predicting run is taken for lost after this much silence.
MASKLOOP_PREDICTION_STALE_SECONDS = env.int("MASKLOOP_PREDICTION_STALE_SECONDS", default=900)
# How many times a run's or an export's work is sent before it fails, with its reason in words.
MASKLOOP_MAX_ATTEMPTS = env.int("MASKLOOP_MAX_ATTEMPTS", default=3)
MASKLOOP_RECONCILE_SECONDS = env.float("MASKLOOP_RECONCILE_SECONDS", default=30.0)
# An outbox message still unsent this long after it was written is the reconciler's to send.
MASKLOOP_OUTBOX_GRACE_SECONDS = env.int("MASKLOOP_OUTBOX_GRACE_SECONDS", default=10)
CELERY_TASK_ANNOTATIONS = ["config.celery:TimeLimits"]
CELERY_BEAT_SCHEDULE = {
    "reconcile": {
        "task": "annotation.tasks.reconcile",
        "schedule": MASKLOOP_RECONCILE_SECONDS,
        # A pass nobody ran in time is dropped, not queued up behind a stopped worker.
        "options": {"expires": MASKLOOP_RECONCILE_SECONDS},
    }
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": MASKLOOP_VISIBILITY_TIMEOUT,
        # A request that enqueues must not hang on an unreachable broker: it falls back to the
        # outbox (config/outbox.py).
        "socket_connect_timeout": 5,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "training.tasks.*": {"queue": "training"},
    "inference.tasks.*": {"queue": "inference"},
}
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# Training: which preset a round uses unless its form says otherwise.
MASKLOOP_DEFAULT_PRESET = env.str("MASKLOOP_DEFAULT_PRESET", default="tiny")
MASKLOOP_LEASE_SECONDS = env.int("MASKLOOP_LEASE_SECONDS", default=300)  # an MD's hold on an item
MASKLOOP_UNDO_SECONDS = env.int("MASKLOOP_UNDO_SECONDS", default=120)  # an MD may undo a pick
# Items opened or withdrawn per transaction when a round opens or ends (round_open_batch).
MASKLOOP_BULK_BATCH = env.int("MASKLOOP_BULK_BATCH", default=200)
# Screening at import (annotation/screening.py): a flagged image waits for an admin's keep or
# exclude before any round takes it. Distances are in bits of a 256-bit perceptual hash.
MASKLOOP_NEAR_DUPLICATE_DISTANCE = env.int("MASKLOOP_NEAR_DUPLICATE_DISTANCE", default=12)
MASKLOOP_SCREEN_MIN_SIDE = env.int("MASKLOOP_SCREEN_MIN_SIDE", default=224)
MASKLOOP_SCREEN_BLANK_SPREAD = env.int("MASKLOOP_SCREEN_BLANK_SPREAD", default=16)
MASKLOOP_SCREEN_MIN_CONTRAST = env.int("MASKLOOP_SCREEN_MIN_CONTRAST", default=64)
MASKLOOP_SCREEN_CLIPPED_FRACTION = env.float("MASKLOOP_SCREEN_CLIPPED_FRACTION", default=0.4)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # dicomweb-client logs each request at INFO: a PACS pull (annotation.dicomweb) would drown.
    "loggers": {"dicomweb_client": {"level": "WARNING"}},
}

# The web import (annotation/importing.py): the largest upload, and what its zip may unpack to,
# checked from the zip's directory before anything is extracted (zip bombs).
MASKLOOP_IMPORT_MAX_UPLOAD_BYTES = env.int("MASKLOOP_IMPORT_MAX_UPLOAD_BYTES", default=2 * 1024**3)
MASKLOOP_IMPORT_MAX_FILES = env.int("MASKLOOP_IMPORT_MAX_FILES", default=20_000)
MASKLOOP_IMPORT_MAX_UNPACKED_BYTES = env.int(
    "MASKLOOP_IMPORT_MAX_UNPACKED_BYTES", default=8 * 1024**3
)
