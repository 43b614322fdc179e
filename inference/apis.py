"""Infection maps over the API: a stored image's, or an uploaded CXR's (the demo).

Both answer the same JSON; the maps are PNG data URLs at the image's own resolution, so the
browser can lay the infection map exactly over the CXR. Nothing uploaded is stored.
"""

from __future__ import annotations

import base64

from django.conf import settings
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import imaging, selectors, services, storage
from annotation.errors import Conflict, DomainError
from annotation.models import Image
from annotation.permissions import IsAnyRole, IsMD
from inference import analysis


class SeverityOutput(serializers.Serializer):
    infected_fraction = serializers.FloatField(help_text="Infected pixels / all pixels.")
    lung_fraction = serializers.FloatField(allow_null=True)
    right_lung_fraction = serializers.FloatField(allow_null=True, help_text="Patient's right.")
    left_lung_fraction = serializers.FloatField(allow_null=True, help_text="Patient's left.")
    grade = serializers.IntegerField(allow_null=True, help_text="0-4, with a lung mask only.")
    label = serializers.CharField(allow_null=True)  # type: ignore[assignment]  # not Field.label
    lung_split = serializers.CharField(allow_null=True)


class ModelOutput(serializers.Serializer):
    id = serializers.IntegerField()
    arch = serializers.CharField()
    encoder = serializers.CharField()
    input_size = serializers.IntegerField(allow_null=True)
    round = serializers.IntegerField()
    card = serializers.DictField(
        help_text="Preset, input size, training masks, held-out metrics (Wilson and eq. 13 "
        "intervals) and whether the network is validated (training.validation)."
    )


class ValidationOutput(serializers.Serializer):
    validated = serializers.BooleanField(
        help_text="False: the output is for testing only; no detection is to be reported."
    )
    reasons = serializers.ListField(child=serializers.CharField())
    threshold = serializers.CharField(help_text="The rule, in words.")
    min_held_out_images = serializers.IntegerField()
    min_input_size = serializers.IntegerField()


class AnalysisOutput(serializers.Serializer):
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    detected = serializers.BooleanField(help_text="COVID-19: some pixel of the map >= 0.5.")
    validation = ValidationOutput()
    threshold = serializers.FloatField()
    epsilon = serializers.FloatField(help_text="Probabilities below it are not drawn.")
    max_probability = serializers.FloatField()
    severity = SeverityOutput()
    cxr = serializers.CharField(help_text="The CXR as a PNG data URL.")
    map = serializers.CharField(help_text="The infection map as a PNG data URL.")
    map_lungs = serializers.CharField(
        allow_null=True,
        help_text="The infection map inside the lung mask only (PNG data URL), or null without "
        "a lung mask.",
    )
    gradcam = serializers.CharField(
        allow_null=True, help_text="Grad-CAM of the classifier as a PNG data URL, or null."
    )
    models = ModelOutput(many=True)
    classifier = ModelOutput(allow_null=True)


DISPLAY_SIDES = (512, 1024, 1536, 2048)
MAX_PARAMETER = OpenApiParameter(
    "max",
    OpenApiTypes.INT,
    enum=list(DISPLAY_SIDES),
    description="Return the CXR and maps no larger than this on their long side "
    "(detection and severity are still measured at full resolution). Default: full size.",
)


def _max_side(request) -> int | None:
    raw = request.query_params.get("max")
    if not raw:
        return None
    if not raw.isdigit() or int(raw) not in DISPLAY_SIDES:
        raise DomainError(f"max must be one of {', '.join(map(str, DISPLAY_SIDES))}")
    return int(raw)


class InferApi(APIView):
    """Analyses an uploaded CXR (PNG, JPEG or DICOM) with the final networks; keeps nothing."""

    permission_classes = [IsAnyRole]
    parser_classes = [MultiPartParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(max_length=255)

        class Meta:
            ref_name = "InferInput"

    @extend_schema(
        request=InputSerializer,
        parameters=[MAX_PARAMETER],
        responses={200: AnalysisOutput, 403: None},
    )
    def post(self, request):
        # Everything that needs no upload comes first: the body is parsed (and a large file
        # streamed to disk) only once the request can succeed.
        max_side = _max_side(request)
        models, classifier = analysis.final_ensemble()  # 409 before reading the body
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        limit = settings.MASKLOOP_MAX_UPLOAD_BYTES
        if upload.size is not None and upload.size > limit:
            raise DomainError(
                f"{upload.name} is {upload.size / 2**20:.1f} MiB; files are limited to "
                f"{limit / 2**20:.1f} MiB"
            )
        data = upload.read()
        # An MD uploading the original of an image under blind review would get the machine
        # map that ImageMapApi refuses them.
        if selectors.maps_hidden_from(request.user) and selectors.image_under_review_by_content(
            imaging.sha256_bytes(data)
        ):
            raise PermissionDenied(selectors.UNDER_REVIEW_REASON)
        gray = analysis.decode_upload(data, upload.name or "the file")
        result = analysis.analyse(gray, models, classifier=classifier)
        return Response(analysis.analysis_payload(result, max_side=max_side))


class ImageMapApi(APIView):
    """The infection map of a stored image (its display copy), with per-lung severity when the
    image has a lung mask."""

    permission_classes = [IsAnyRole]

    @extend_schema(parameters=[MAX_PARAMETER], responses={200: AnalysisOutput, 403: None})
    def get(self, request, image_id: int):
        max_side = _max_side(request)
        image = get_object_or_404(Image, pk=image_id)
        if selectors.maps_hidden_from(request.user) and selectors.image_under_review(image.pk):
            raise PermissionDenied(selectors.UNDER_REVIEW_REASON)
        result = analysis.image_analyse(image)
        return Response(analysis.analysis_payload(result, max_side=max_side))


class StartingMaskApi(APIView):
    """A machine mask to start an MD's first drawing from: the newest finished round's network
    predicts the image (at once, as the demo does; the tiny model takes well under a second),
    and the mask is kept as a machine mask version (source predicted, provenance its model
    version, in no round) that the drawing then records as its `based_on`.

    Refused (409, in a sentence) before any model exists, and for an image that is not waiting
    for a first drawing or has an item under review: an MD never sees a machine mask there."""

    permission_classes = [IsMD]

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField(help_text="The mask: send it as based_on when saving.")
        version = serializers.IntegerField()
        area = serializers.IntegerField(help_text="Foreground pixels.")
        model = serializers.CharField(help_text="The network that made it, in words.")
        png = serializers.CharField(help_text="The binary mask as a PNG data URL.")

        class Meta:
            ref_name = "StartingMaskOutput"

    @extend_schema(request=None, responses={200: OutputSerializer, 409: None})
    def post(self, request, image_id: int):
        image = get_object_or_404(Image, pk=image_id)
        reason = selectors.starting_mask_refusal(image)
        if reason is not None:
            raise Conflict(reason)
        mv = selectors.starting_model()
        if mv is None:
            raise Conflict(selectors.NO_STARTING_MODEL)
        mask = selectors.starting_mask_of(image, mv)
        if mask is None:
            pixels = analysis.image_starting_mask(image, mv)
            mask = services.starting_mask_save(image=image, mask=pixels, model_version=mv)
        rnd = mv.run.round
        png = base64.b64encode(storage.read(mask.file.name)).decode("ascii")
        return Response(
            {
                "id": mask.pk,
                "version": mask.version,
                "area": mask.area,
                "model": f"{mv.arch} · {mv.encoder} of round {rnd.number} "
                f"({rnd.get_stage_display()})",
                "png": f"data:image/png;base64,{png}",
            }
        )
