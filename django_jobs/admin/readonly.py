"""A ModelAdmin that shows rows and never edits them: workers and the protocol own them."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest


class ReadOnlyAdmin(admin.ModelAdmin):
    """No add or change from the admin; viewing follows the usual permission.

    Deleting is refused too, unless ``deletable`` is set: then Django's delete
    permission decides (a subclass may narrow it further).
    """

    deletable = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.deletable and super().has_delete_permission(request, obj)
