"""User accounts and their roles."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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


def roles_check(roles: Iterable[str]) -> None:
    """Refuses a set of roles that breaks blindness: md together with admin or data (an MD
    must stay blind to where masks came from, which those roles show).

    Raises:
        DomainError: md with admin or data, with a message that says why.
    """
    chosen = set(roles)
    if chosen & BLIND_ROLES and chosen & SIGHTED_ROLES:
        sighted = " and ".join(sorted(chosen & SIGHTED_ROLES))
        raise DomainError(
            f"the md role cannot be combined with {sighted}: an MD reviews blind, and {sighted} "
            "shows where every mask came from; use a separate account for each"
        )


def user_set_roles(*, user: Any, roles: Sequence[str]) -> None:
    """Gives the user exactly these roles.

    Raises:
        DomainError: an unknown role, or md together with admin or data (`roles_check`).
    """
    for role in roles:
        if role not in Role.values:
            raise DomainError(f"unknown role {role!r}; roles are {', '.join(Role.values)}")
    roles_check(roles)
    groups = [Group.objects.get_or_create(name=role)[0] for role in roles]
    user.groups.set(groups)


def groups_guard(
    *, instance: Any, action: str, reverse: bool, pk_set: set[int] | None, **kwargs: Any
) -> None:
    """The last line behind `user_set_roles` and the Django admin's user editor: any addition
    of groups to a user (user.groups.add, group.user_set.add, a form's save) that would give
    them md with admin or data is refused (`roles_check`), whatever path it came by.

    Connected to m2m_changed of User.groups in AnnotationConfig.ready.
    """
    if action != "pre_add" or not pk_set:
        return
    if not reverse:  # user.groups.add(groups…)
        added = Group.objects.filter(pk__in=pk_set).values_list("name", flat=True)
        roles_check({*instance.groups.values_list("name", flat=True), *added})
        return
    user_model = instance.user_set.model  # group.user_set.add(users…)
    for user in user_model.objects.filter(pk__in=pk_set).prefetch_related("groups"):
        roles_check({*(g.name for g in user.groups.all()), instance.name})
