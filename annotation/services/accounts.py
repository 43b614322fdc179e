"""User accounts and their roles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib.auth.models import Group

from annotation.errors import DomainError
from annotation.models import (
    Role,
)

# An MD reviews blind. Admins and the data team see where every mask came from (rounds,
# statistics, exports): one person holding both could tell their candidates apart.
BLIND_ROLES = frozenset({Role.MD})
SIGHTED_ROLES = frozenset({Role.ADMIN, Role.DATA})


def user_set_roles(*, user: Any, roles: Sequence[str]) -> None:
    """Gives the user exactly these roles.

    Raises:
        DomainError: an unknown role, or md together with admin or data (an MD must stay blind
            to where masks came from, which those roles show).
    """
    for role in roles:
        if role not in Role.values:
            raise DomainError(f"unknown role {role!r}; roles are {', '.join(Role.values)}")
    chosen = set(roles)
    if chosen & BLIND_ROLES and chosen & SIGHTED_ROLES:
        sighted = " and ".join(sorted(chosen & SIGHTED_ROLES))
        raise DomainError(
            f"the md role cannot be combined with {sighted}: an MD reviews blind, and {sighted} "
            "shows where every mask came from; use a separate account for each"
        )
    groups = [Group.objects.get_or_create(name=role)[0] for role in roles]
    user.groups.set(groups)
