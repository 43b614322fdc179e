"""User accounts and their roles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib.auth.models import Group

from annotation.errors import DomainError
from annotation.models import (
    Role,
)


def user_set_roles(*, user: Any, roles: Sequence[str]) -> None:
    for role in roles:
        if role not in Role.values:
            raise DomainError(f"unknown role {role!r}; roles are {', '.join(Role.values)}")
    groups = [Group.objects.get_or_create(name=role)[0] for role in roles]
    user.groups.set(groups)
