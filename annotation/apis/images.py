"""Images, their display copies and their mask versions."""

from __future__ import annotations

from django.conf import settings
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import selectors, services
from annotation.apis.common import DISPLAY_MAX, PNG, png_response
from annotation.errors import DomainError, PermissionDenied
from annotation.models import Image, ImageClass, Mask
from annotation.permissions import IsAdmin, IsAdminOrData, IsAnyRole, IsMD


class ImageOutput(serializers.ModelSerializer):
    display_url = serializers.SerializerMethodField()

    class Meta:
        model = Image
        fields = [
            "id",
            "name",
            "sha256",
            "width",
            "height",
            "source",
            "image_class",
            "patient_id",
            "status",
            "created_at",
            "display_url",
            "screening",
            "screening_flags",
        ]

    def get_display_url(self, obj: Image) -> str:
        return reverse("api:image-display", args=[obj.pk])


def _choice_param(request, name: str, choices: list[str]) -> str | None:
    """A query parameter that must be one of `choices` (or absent)."""
    value = request.query_params.get(name)
    if not value:
        return None
    if value not in choices:
        raise DomainError(f"{name} must be one of {', '.join(choices)}")
    return value


def _upload_size(file, what: str) -> None:
    limit = settings.MASKLOOP_MAX_UPLOAD_BYTES
    if file.size is not None and file.size > limit:
        raise serializers.ValidationError(
            f"{what} is {file.size / 2**20:.1f} MiB; files are limited to {limit / 2**20:.1f} MiB"
        )


class ImageListApi(APIView):
    permission_classes = [IsAnyRole]

    @extend_schema(
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=Image.Status.values),
            OpenApiParameter("class", OpenApiTypes.STR, enum=ImageClass.values),
        ],
        responses=ImageOutput(many=True),
    )
    def get(self, request):
        images = Image.objects.all()
        if wanted := _choice_param(request, "status", Image.Status.values):
            images = images.filter(status=wanted)
        if wanted := _choice_param(request, "class", ImageClass.values):
            images = images.filter(image_class=wanted)
        return Response(ImageOutput(images[:1000], many=True).data)


class ImageUploadApi(APIView):
    permission_classes = [IsAdmin]
    parser_classes = [MultiPartParser]  # a file cannot travel url-encoded

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(max_length=Image._meta.get_field("name").max_length)
        image_class = serializers.ChoiceField(choices=ImageClass.choices)
        patient_id = serializers.CharField(
            required=False,
            allow_blank=True,
            default="",
            max_length=Image._meta.get_field("patient_id").max_length,
        )
        # mypy reads `source` as Field.source; DRF takes declared fields off the class.
        source = serializers.CharField(  # type: ignore[assignment]
            required=False, default="upload", max_length=Image._meta.get_field("source").max_length
        )
        mask = serializers.FileField(required=False)

        class Meta:
            ref_name = "ImageUploadInput"

        def validate_file(self, value):
            _upload_size(value, "the image")
            return value

        def validate_mask(self, value):
            _upload_size(value, "the mask")
            return value

    @extend_schema(request=InputSerializer, responses={201: ImageOutput})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        image = services.image_create(
            data=v["file"].read(),
            name=v["file"].name,
            source=v["source"],
            image_class=v["image_class"],
            patient_id=v["patient_id"],
            mask_data=v["mask"].read() if v.get("mask") else None,
        )
        return Response(ImageOutput(image).data, status=status.HTTP_201_CREATED)


class ImageDetailApi(APIView):
    permission_classes = [IsAnyRole]

    @extend_schema(responses=ImageOutput)
    def get(self, request, image_id: int):
        return Response(ImageOutput(get_object_or_404(Image, pk=image_id)).data)


class ImageDisplayApi(APIView):
    permission_classes = [IsAnyRole]

    @extend_schema(parameters=[DISPLAY_MAX], responses=PNG)
    def get(self, request, image_id: int):
        return png_response(get_object_or_404(Image, pk=image_id).display.name, request)


class MaskOutput(serializers.ModelSerializer):
    author = serializers.CharField(source="author.username", default=None, allow_null=True)
    model_version = serializers.SerializerMethodField()
    round = serializers.IntegerField(source="round.number", default=None, allow_null=True)
    file_url = serializers.SerializerMethodField()

    class Meta:
        model = Mask
        fields = [
            "id",
            "image",
            "version",
            "source",
            "author",
            "model_version",
            "round",
            "based_on",
            "area",
            "sha256",
            "created_at",
            "file_url",
        ]

    def get_model_version(self, obj: Mask) -> str | None:
        mv = obj.model_version
        return f"{mv.arch}/{mv.encoder} v{mv.pk}" if mv else None

    def get_file_url(self, obj: Mask) -> str:
        return reverse("api:mask-file", args=[obj.pk])


class ImageMasksApi(APIView):
    """Mask versions with their provenance: never for MDs, whose reviews must stay blind."""

    parser_classes = [MultiPartParser]  # a file cannot travel url-encoded

    def get_permissions(self):
        return [IsMD()] if self.request.method == "POST" else [IsAdminOrData()]

    class InputSerializer(serializers.Serializer):
        mask = serializers.FileField()
        based_on = serializers.IntegerField(
            required=False,
            min_value=1,
            max_value=2**63 - 1,
            help_text="the mask a redraw started from: one of the candidates of the image's "
            "item waiting for a redraw; or the machine starting mask a first drawing started "
            "from (POST /api/images/{id}/starting-mask/)",
        )
        based_on_candidate = serializers.RegexField(
            r"^[A-Z]{1,2}$",
            required=False,
            help_text="the same, by the candidate's label (what the draw page sends)",
        )

        class Meta:
            ref_name = "MaskDrawInput"

        def validate_mask(self, value):
            _upload_size(value, "the mask")
            return value

    class CreatedOutput(serializers.Serializer):
        id = serializers.IntegerField()
        version = serializers.IntegerField()
        image_status = serializers.CharField()

    @extend_schema(responses={200: MaskOutput(many=True), 403: None})
    def get(self, request, image_id: int):
        image = get_object_or_404(Image, pk=image_id)
        _provenance_sealed(image.pk)
        masks = image.masks.select_related("author", "model_version", "round")
        return Response(MaskOutput(masks, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: CreatedOutput})
    def post(self, request, image_id: int):
        image = get_object_or_404(Image, pk=image_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        based_on = _start_mask(
            image,
            mask_id=data.validated_data.get("based_on"),
            label=data.validated_data.get("based_on_candidate"),
        )
        mask = services.mask_draw(
            image=image,
            author=request.user,
            data=data.validated_data["mask"].read(),
            based_on=based_on,
        )
        image.refresh_from_db()
        body = {"id": mask.pk, "version": mask.version, "image_status": image.status}
        return Response(body, status=status.HTTP_201_CREATED)


def _start_mask(image: Image, *, mask_id: int | None, label: str | None) -> Mask | None:
    """The candidate mask a redraw started from (or the machine mask a first drawing started
    from, by id), or None. One answer, 400, for every mask that is
    not one of this image's redraw candidates, whether or not it exists: no existence oracle."""
    if mask_id is None and label is None:
        return None
    allowed = selectors.redraw_start_candidates(image)
    if mask_id is not None and label is not None:
        raise DomainError("give based_on or based_on_candidate, not both")
    if label is not None:
        candidate = allowed.get(label)
        if candidate is None:
            raise DomainError(
                "based_on_candidate must be the label of a candidate of this image's redraw"
            )
        return candidate.mask
    for candidate in allowed.values():
        if candidate.mask_id == mask_id:
            return candidate.mask
    if mask_id is not None and (start := selectors.starting_mask_for_save(image, mask_id)):
        return start  # the machine starting mask of a first drawing
    raise DomainError(
        "based_on must be one of the candidate masks of this image's redraw, or the machine "
        "starting mask of its first drawing"
    )


class MaskFileApi(APIView):
    permission_classes = [IsAdminOrData]

    @extend_schema(parameters=[DISPLAY_MAX], responses={**PNG, 403: None})
    def get(self, request, mask_id: int):
        mask = get_object_or_404(Mask, pk=mask_id)
        _provenance_sealed(mask.image_id)
        return png_response(mask.file.name, request, form="mask")


def _provenance_sealed(image_id: int) -> None:
    """Masks with their sources, or a mask by its id, are refused for an image under blind
    review, to every role: laid next to what a reviewer is shown (by pixels, or by a
    colleague), they would name the source of each candidate."""
    if selectors.image_under_review(image_id):
        raise PermissionDenied(selectors.PROVENANCE_SEALED_REASON)
