"""Comments and flags on an image: read them, add a comment, set or clear one's own flags.

The draw page addresses the image by its id; the review page by the item's opaque id, so
nothing new about the image reaches a blind reviewer. An MD reads only their own notes
(annotation/selectors/history.py says why).
"""

from __future__ import annotations

from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import selectors, services
from annotation.errors import DomainError
from annotation.models import Image, ImageFlag, ReviewItem
from annotation.permissions import IsAnyRole, IsReviewer


class NotesOutput(serializers.Serializer):
    class Comment(serializers.Serializer):
        by = serializers.CharField()
        text = serializers.CharField()
        created_at = serializers.DateTimeField()

    class Flag(serializers.Serializer):
        flag = serializers.CharField()
        name = serializers.CharField()
        mine = serializers.BooleanField()
        set_by = serializers.ListField(child=serializers.CharField())

    comments = Comment(many=True)
    flags = Flag(many=True)
    see_all = serializers.BooleanField()


class NotesInput(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, max_length=2000)
    flags = serializers.DictField(child=serializers.BooleanField(), required=False)

    def validate_flags(self, value):
        unknown = sorted(set(value) - set(ImageFlag.values))
        if unknown:
            raise serializers.ValidationError(f"unknown flag {', '.join(unknown)}")
        return value


class _NotesApi(APIView):
    """Everyone with a role reads (an MD only their own notes); MDs and admins write."""

    def get_permissions(self):
        if self.request.method == "POST":
            return [IsReviewer()]
        return [IsAnyRole()]

    def image(self, request, **kwargs) -> Image:
        raise NotImplementedError

    @extend_schema(responses=NotesOutput)
    def get(self, request, **kwargs):
        image = self.image(request, **kwargs)
        return Response(NotesOutput(selectors.image_notes(image, viewer=request.user)).data)

    @extend_schema(request=NotesInput, responses={201: NotesOutput})
    def post(self, request, **kwargs):
        image = self.image(request, **kwargs)
        data = NotesInput(data=request.data)
        data.is_valid(raise_exception=True)
        flags = data.validated_data.get("flags") or {}
        comment = (data.validated_data.get("comment") or "").strip()
        if not flags and not comment:
            raise DomainError("write a comment or set a flag")
        with transaction.atomic():
            if flags:
                services.image_flags_set(image=image, author=request.user, flags=flags)
            if comment:
                services.image_comment_add(image=image, author=request.user, text=comment)
        return Response(
            NotesOutput(selectors.image_notes(image, viewer=request.user)).data,
            status=status.HTTP_201_CREATED,
        )


class ImageNotesApi(_NotesApi):
    def image(self, request, **kwargs) -> Image:
        return get_object_or_404(Image, pk=kwargs["image_id"])


class ReviewItemNotesApi(_NotesApi):
    def image(self, request, **kwargs) -> Image:
        return get_object_or_404(
            ReviewItem.objects.select_related("image"), uuid=kwargs["item_uuid"]
        ).image
