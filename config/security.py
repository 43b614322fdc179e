"""Who is signing in, as sign-in throttling (django-axes) counts failures by address."""

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str | None:
    """The client's address: REMOTE_ADDR, or behind the TLS proxy (SECURE_PROXY_SSL_HEADER set)
    the address that proxy appended last to X-Forwarded-For.

    Behind a proxy REMOTE_ADDR is the proxy's own, the same for everyone: throttling by it would
    lock a username out for every client at once. The right-most X-Forwarded-For entry is the one
    our proxy wrote (earlier entries come from the client and may be forged).
    """
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if getattr(settings, "SECURE_PROXY_SSL_HEADER", None) and forwarded.strip():
        return forwarded.split(",")[-1].strip()
    return request.META.get("REMOTE_ADDR")
