"""The environment a benchmark needs to load Django's settings outside `make demo`.

Benchmarks run with DEBUG off (as production does: no query log growing in memory), so the
settings want a real secret key; over plain loopback HTTP they must not redirect to HTTPS.
"""

from __future__ import annotations

import os
import secrets


def django_env(**extra: str) -> dict[str, str]:
    """Sets (where unset) and returns the variables a benchmark's Django process needs."""
    values = {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "DJANGO_SECURE_COOKIES": "false",
        **extra,
    }
    for name, value in values.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in values}


def setup_django(**extra: str) -> None:
    """`django_env`, then `django.setup()`: for a benchmark that uses the ORM in-process."""
    django_env(**extra)
    import django

    django.setup()
