"""Who a user is: their roles."""

from __future__ import annotations

from typing import Any

from annotation.models import (
    Role,
)


def user_roles(user: Any) -> set[str]:
    if not user.is_authenticated:
        return set()
    cached = getattr(user, "_maskloop_roles", None)
    if cached is None:
        cached = set(user.groups.filter(name__in=Role.values).values_list("name", flat=True))
        user._maskloop_roles = cached
    return cached


def user_has_role(user: Any, *roles: str) -> bool:
    return bool(user_roles(user) & set(roles))
