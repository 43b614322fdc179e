"""A Django admin page that shows rows and never writes them."""

from django.contrib import admin
from django.http import HttpRequest


class ReadOnlyAdmin(admin.ModelAdmin):
    """View only: no add, change or delete page, and no delete action.

    For provenance (masks, decisions, ground truth, model versions) and for rows whose status
    only the services' state machine may change (rounds, review items, training runs).
    """

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
