"""Roles are groups (md, admin, data), checked on the server for every page and API call."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission

from annotation.models import Role
from annotation.selectors import user_has_role


def role_permission(*roles: str) -> type[BasePermission]:
    """A DRF permission class admitting users with any of `roles`."""

    class HasRole(BasePermission):
        message = f"this needs the role {' or '.join(roles)}"

        def has_permission(self, request, view) -> bool:
            return bool(request.user and user_has_role(request.user, *roles))

    HasRole.__name__ = f"HasRole_{'_'.join(roles)}"
    return HasRole


IsMD = role_permission(Role.MD)
IsAdmin = role_permission(Role.ADMIN)
IsData = role_permission(Role.DATA)
IsReviewer = role_permission(Role.MD, Role.ADMIN)
IsAdminOrData = role_permission(Role.ADMIN, Role.DATA)
IsAnyRole = role_permission(Role.MD, Role.ADMIN, Role.DATA)


def role_required(*roles: str) -> Callable:
    """Page decorator: anonymous users go to sign-in; signed-in users without the role get 403."""

    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not user_has_role(request.user, *roles):
                raise PermissionDenied(f"this page needs the role {' or '.join(roles)}")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator
