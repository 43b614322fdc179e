"""The REST API: one view per operation, validate → service → serialize."""

from __future__ import annotations

import base64
import uuid

from django.db.models import Prefetch
from django.http import FileResponse, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from annotation import selectors, services, storage
from annotation.errors import DomainError
from annotation.imaging import InvalidImageError
from annotation.models import Export, Image, ImageClass, Mask, ReviewItem, Round
from annotation.permissions import IsAdmin, IsAdminOrData, IsAnyRole, IsData, IsMD, IsReviewer


def exception_handler(exc, context):
    """Domain and input errors become a JSON `detail` with the reason, never a 500."""
    if isinstance(exc, DomainError):
        return Response({"detail": str(exc)}, status=exc.status_code)
    if isinstance(exc, InvalidImageError):
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    return drf_exception_handler(exc, context)


PNG = {(200, "image/png"): OpenApiTypes.BINARY}
DISPLAY_MAX = OpenApiParameter(
    "max",
    OpenApiTypes.INT,
    enum=list(storage.DISPLAY_SIZES),
    description="A cached copy no larger than this on its long side, for display "
    "(masks stay 0/255). Default: the stored file at full size.",
)
OVERLAY = OpenApiParameter(
    "overlay",
    OpenApiTypes.INT,
    enum=[1],
    description="The mask as an RGBA overlay: translucent fill, opaque one-pixel outline.",
)


def png_response(name: str, request=None, *, form: str = "image") -> HttpResponse:
    """A stored PNG with no file name attached: a name would identify the image or mask.

    `?max=1024` (512, 1024, 1536 or 2048) serves a cached downscaled copy for fast display;
    `form` says how to make it (see storage.display_copy).
    """
    max_side = None
    if request is not None and request.query_params.get("max"):
        try:
            max_side = int(request.query_params["max"])
        except ValueError:
            raise DomainError(f"max must be one of {_display_sizes()}") from None
    try:
        data = storage.display_copy(name, max_side, form=form)
    except ValueError as exc:
        raise DomainError(str(exc)) from None
    response = HttpResponse(data, content_type="image/png")
    response["Cache-Control"] = "private, max-age=3600"
    return response


def _display_sizes() -> str:
    return ", ".join(map(str, storage.DISPLAY_SIZES))


# ---------------------------------------------------------------- images


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
        ]

    def get_display_url(self, obj: Image) -> str:
        return reverse("api:image-display", args=[obj.pk])


class ImageListApi(APIView):
    permission_classes = [IsAnyRole]

    @extend_schema(responses=ImageOutput(many=True))
    def get(self, request):
        images = Image.objects.all()
        if request.query_params.get("status"):
            images = images.filter(status=request.query_params["status"])
        if request.query_params.get("class"):
            images = images.filter(image_class=request.query_params["class"])
        return Response(ImageOutput(images[:1000], many=True).data)


class ImageUploadApi(APIView):
    permission_classes = [IsAdmin]
    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField()
        image_class = serializers.ChoiceField(choices=ImageClass.choices)
        patient_id = serializers.CharField(required=False, allow_blank=True, default="")
        source = serializers.CharField(required=False, default="upload")
        mask = serializers.FileField(required=False)

        class Meta:
            ref_name = "ImageUploadInput"

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
    author = serializers.CharField(source="author.username", default=None)
    model_version = serializers.SerializerMethodField()
    round = serializers.IntegerField(source="round.number", default=None)
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

    parser_classes = [MultiPartParser, FormParser]

    def get_permissions(self):
        return [IsMD()] if self.request.method == "POST" else [IsAdminOrData()]

    class InputSerializer(serializers.Serializer):
        mask = serializers.FileField()
        based_on = serializers.IntegerField(required=False)

        class Meta:
            ref_name = "MaskDrawInput"

    class CreatedOutput(serializers.Serializer):
        id = serializers.IntegerField()
        version = serializers.IntegerField()
        image_status = serializers.CharField()

    @extend_schema(responses=MaskOutput(many=True))
    def get(self, request, image_id: int):
        image = get_object_or_404(Image, pk=image_id)
        masks = image.masks.select_related("author", "model_version", "round")
        return Response(MaskOutput(masks, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: CreatedOutput})
    def post(self, request, image_id: int):
        image = get_object_or_404(Image, pk=image_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        based_on = None
        if data.validated_data.get("based_on"):
            based_on = Mask.objects.filter(pk=data.validated_data["based_on"]).first()
            if based_on is None:
                raise DomainError("the mask to start from does not exist")
        mask = services.mask_draw(
            image=image,
            author=request.user,
            data=data.validated_data["mask"].read(),
            based_on=based_on,
        )
        image.refresh_from_db()
        body = {"id": mask.pk, "version": mask.version, "image_status": image.status}
        return Response(body, status=status.HTTP_201_CREATED)


class MaskFileApi(APIView):
    permission_classes = [IsAdminOrData]

    @extend_schema(parameters=[DISPLAY_MAX], responses=PNG)
    def get(self, request, mask_id: int):
        return png_response(get_object_or_404(Mask, pk=mask_id).file.name, request, form="mask")


# ---------------------------------------------------------------- rounds


class RunOutput(serializers.Serializer):
    id = serializers.IntegerField()
    arch = serializers.CharField()
    encoder = serializers.CharField()
    fold = serializers.IntegerField(allow_null=True)
    status = serializers.CharField()
    status_display = serializers.CharField(source="get_status_display")
    epoch = serializers.IntegerField()
    epochs = serializers.IntegerField()
    step = serializers.IntegerField()
    steps = serializers.IntegerField()
    loss = serializers.FloatField(allow_null=True)
    loss_history = serializers.ListField(child=serializers.FloatField())
    predicted = serializers.IntegerField()
    targets = serializers.SerializerMethodField()
    progress = serializers.FloatField()
    failure_reason = serializers.CharField()
    metrics = serializers.SerializerMethodField()

    def get_targets(self, obj) -> int:
        return len(obj.target_image_ids)

    def get_metrics(self, obj) -> dict:
        mv = getattr(obj, "model_version", None)
        return mv.metrics if mv else {}


class RoundOutput(serializers.ModelSerializer):
    started_by = serializers.CharField(source="started_by.username")
    stage_display = serializers.CharField(source="get_stage_display")
    status_display = serializers.CharField(source="get_status_display")

    class Meta:
        model = Round
        fields = [
            "number",
            "stage",
            "stage_display",
            "status",
            "status_display",
            "config",
            "reviewers_per_item",
            "started_by",
            "created_at",
            "finished_at",
            "failure_reason",
        ]


class RoundListApi(APIView):
    permission_classes = [IsAdmin]

    class InputSerializer(serializers.Serializer):
        stage = serializers.ChoiceField(choices=Round.Stage.choices)
        networks = serializers.ListField(
            child=serializers.ListField(child=serializers.CharField(), min_length=2, max_length=2),
            required=False,
        )
        folds = serializers.IntegerField(min_value=2, max_value=10, default=5)
        preset = serializers.ChoiceField(choices=["tiny", "small", "paper"], default="tiny")
        epochs = serializers.IntegerField(min_value=1, max_value=500, required=False)
        input_size = serializers.IntegerField(min_value=32, max_value=1024, required=False)
        reviewers_per_item = serializers.IntegerField(min_value=1, max_value=9, default=1)
        seed = serializers.IntegerField(default=0)
        freeze_encoder = serializers.BooleanField(default=False)
        test_fraction = serializers.FloatField(min_value=0.05, max_value=0.5, default=0.2)

        class Meta:
            ref_name = "RoundStartInput"

    @extend_schema(responses=RoundOutput(many=True))
    def get(self, request):
        return Response(RoundOutput(Round.objects.select_related("started_by"), many=True).data)

    @extend_schema(request=InputSerializer, responses={201: RoundOutput})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        overrides = {k: v[k] for k in ("epochs", "input_size") if k in v}
        if v["freeze_encoder"]:
            overrides["freeze_encoder"] = True
        rnd = services.round_start(
            stage=v["stage"],
            started_by=request.user,
            networks=v.get("networks"),
            folds=v["folds"],
            preset=v["preset"],
            overrides=overrides,
            reviewers_per_item=v["reviewers_per_item"],
            seed=v["seed"],
            test_fraction=v["test_fraction"],
        )
        return Response(RoundOutput(rnd).data, status=status.HTTP_201_CREATED)


class RoundDetailApi(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(responses=RoundOutput)
    def get(self, request, number: int):
        rnd = get_object_or_404(Round.objects.select_related("started_by"), number=number)
        runs = rnd.training_runs.select_related("model_version").order_by("fold", "id")
        body = RoundOutput(rnd).data
        body["runs"] = RunOutput(runs, many=True).data
        body["statistics"] = selectors.round_statistics(rnd)
        body["adjudication"] = [
            {"id": str(i.uuid), "page_url": reverse("review", args=[i.uuid])}
            for i in rnd.items.filter(status=ReviewItem.Status.ADJUDICATION)
        ]
        return Response(body)


class RoundCancelApi(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(request=None, responses=RoundOutput)
    def post(self, request, number: int):
        rnd = get_object_or_404(Round, number=number)
        return Response(RoundOutput(services.round_cancel(round=rnd, by=request.user)).data)


# ---------------------------------------------------------------- blind review


class BlindCandidateOutput(serializers.Serializer):
    label = serializers.CharField()
    mask_url = serializers.CharField(help_text="the mask, 0/255 grayscale")
    overlay_url = serializers.CharField(help_text="the mask coloured for drawing on the CXR")


class BlindItemOutput(serializers.Serializer):
    id = serializers.UUIDField()
    round = serializers.IntegerField()
    status = serializers.CharField()
    image_url = serializers.CharField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    candidates = BlindCandidateOutput(many=True)
    decision_url = serializers.CharField()
    page_url = serializers.CharField()


class NextUrlOutput(serializers.Serializer):
    next_url = serializers.CharField()


def blind_item_payload(item: ReviewItem) -> dict:
    """What a reviewer sees: an opaque id, the CXR, and candidates known only by label."""
    return {
        "id": str(item.uuid),
        "round": item.round.number,
        "status": item.status,
        "image_url": reverse("api:item-image", args=[item.uuid]),
        "width": item.image.width,
        "height": item.image.height,
        "candidates": [
            _blind_candidate(item, c.label) for c in selectors.item_candidates(item)
        ],
        "decision_url": reverse(
            "api:item-adjudicate"
            if item.status == ReviewItem.Status.ADJUDICATION
            else "api:item-decision",
            args=[item.uuid],
        ),
        "page_url": reverse("review", args=[item.uuid]),
    }


def _blind_candidate(item: ReviewItem, label: str) -> dict:
    mask_url = reverse("api:item-candidate", args=[item.uuid, label])
    return {"label": label, "mask_url": mask_url, "overlay_url": f"{mask_url}?overlay=1"}


def first_display_images(item: ReviewItem, payload: dict) -> dict[str, str]:
    """The smallest display copies of the item's CXR and of every overlay, as data: URIs keyed
    by the URLs static/js/review.js would ask for them at. The review page carries them, so its
    first frame needs no image request; sharper copies are fetched when the view needs them."""
    smallest = storage.DISPLAY_SIZES[0]
    max_side = smallest if max(payload["width"], payload["height"]) > smallest else None
    files = [(payload["image_url"], item.image.display.name, "image")]
    masks = {c.label: c.mask.file.name for c in item.candidates.select_related("mask")}
    files += [(c["overlay_url"], masks[c["label"]], "overlay") for c in payload["candidates"]]
    images = {}
    for url, name, form in files:
        if max_side:
            url += f"{'&' if '?' in url else '?'}max={max_side}"
        data = storage.display_copy(name, max_side, form=form)
        images[url] = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return images


def _visible_item(request, item_uuid) -> ReviewItem:
    item = get_object_or_404(
        ReviewItem.objects.select_related("round", "image").prefetch_related(
            Prefetch("candidates")
        ),
        uuid=item_uuid,
    )
    if item.status not in (
        ReviewItem.Status.OPEN,
        ReviewItem.Status.ADJUDICATION,
        ReviewItem.Status.REDRAW,
    ):
        raise DomainError(f"this item is {item.get_status_display().lower()}")
    return item


class ReviewItemApi(APIView):
    permission_classes = [IsReviewer]

    @extend_schema(responses=BlindItemOutput)
    def get(self, request, item_uuid):
        return Response(blind_item_payload(_visible_item(request, item_uuid)))


class ReviewNextApi(APIView):
    permission_classes = [IsMD]

    @extend_schema(responses={200: BlindItemOutput, 204: None})
    def get(self, request):
        current = None
        if request.query_params.get("after"):
            try:
                after = uuid.UUID(request.query_params["after"])
            except ValueError:
                raise DomainError("'after' must be a review item id") from None
            current = ReviewItem.objects.filter(uuid=after).first()
        item = selectors.next_item_for(request.user, after=current)
        if item is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(blind_item_payload(item))


class ReviewItemImageApi(APIView):
    permission_classes = [IsReviewer]

    @extend_schema(parameters=[DISPLAY_MAX], responses=PNG)
    def get(self, request, item_uuid):
        return png_response(_visible_item(request, item_uuid).image.display.name, request)


class ReviewCandidateApi(APIView):
    permission_classes = [IsReviewer]

    @extend_schema(parameters=[DISPLAY_MAX, OVERLAY], responses=PNG)
    def get(self, request, item_uuid, label: str):
        item = _visible_item(request, item_uuid)
        candidate = item.candidates.filter(label=label).select_related("mask").first()
        if candidate is None:
            raise DomainError(f"no candidate {label!r} in this item")
        overlay = request.query_params.get("overlay")
        if overlay not in (None, "1"):
            raise DomainError("overlay must be 1 (the mask coloured for drawing) or left out")
        return png_response(
            candidate.mask.file.name, request, form="overlay" if overlay else "mask"
        )


class DecisionInput(serializers.Serializer):
    choice = serializers.CharField(max_length=10)
    seconds = serializers.FloatField(min_value=0, max_value=86400, default=0)
    round = serializers.IntegerField(required=False)


class ReviewDecisionApi(APIView):
    permission_classes = [IsMD]
    parser_classes = [JSONParser, FormParser]

    @extend_schema(request=DecisionInput, responses={201: NextUrlOutput})
    def post(self, request, item_uuid):
        item = get_object_or_404(ReviewItem, uuid=item_uuid)
        data = DecisionInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        services.decision_create(
            item=item,
            reviewer=request.user,
            choice=v["choice"],
            seconds=v["seconds"],
            round_number=v.get("round"),
        )
        nxt = selectors.next_item_for(request.user)
        return Response(
            {"next_url": reverse("review", args=[nxt.uuid]) if nxt else reverse("queue")},
            status=status.HTTP_201_CREATED,
        )


class ReviewAdjudicateApi(APIView):
    permission_classes = [IsAdmin]
    parser_classes = [JSONParser, FormParser]

    @extend_schema(request=DecisionInput, responses={201: NextUrlOutput})
    def post(self, request, item_uuid):
        item = get_object_or_404(ReviewItem, uuid=item_uuid)
        data = DecisionInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.decision_adjudicate(
            item=item,
            admin=request.user,
            choice=data.validated_data["choice"],
            seconds=data.validated_data["seconds"],
        )
        return Response({"next_url": reverse("rounds")}, status=status.HTTP_201_CREATED)


# ---------------------------------------------------------------- exports


class ExportOutput(serializers.ModelSerializer):
    requested_by = serializers.CharField(source="requested_by.username")
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Export
        fields = [
            "uuid",
            "status",
            "progress",
            "filters",
            "image_count",
            "size",
            "sha256",
            "requested_by",
            "created_at",
            "finished_at",
            "failure_reason",
            "download_url",
        ]

    def get_download_url(self, obj: Export) -> str | None:
        if obj.status != Export.Status.DONE:
            return None
        return reverse("api:export-download", args=[obj.uuid])


class ExportListApi(APIView):
    permission_classes = [IsData]

    class InputSerializer(serializers.Serializer):
        round = serializers.IntegerField(required=False, allow_null=True)
        classes = serializers.ListField(child=serializers.CharField(), required=False)
        accepted_only = serializers.BooleanField(default=True)

        class Meta:
            ref_name = "ExportRequestInput"

    @extend_schema(responses=ExportOutput(many=True))
    def get(self, request):
        return Response(
            ExportOutput(Export.objects.select_related("requested_by")[:100], many=True).data
        )

    @extend_schema(request=InputSerializer, responses={201: ExportOutput})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        export = services.export_request(requested_by=request.user, filters=data.validated_data)
        return Response(ExportOutput(export).data, status=status.HTTP_201_CREATED)


class ExportDetailApi(APIView):
    permission_classes = [IsData]

    @extend_schema(responses=ExportOutput)
    def get(self, request, export_uuid):
        return Response(ExportOutput(get_object_or_404(Export, uuid=export_uuid)).data)


class ExportDownloadApi(APIView):
    permission_classes = [IsData]

    @extend_schema(responses={(200, "application/zip"): OpenApiTypes.BINARY})
    def get(self, request, export_uuid):
        export = get_object_or_404(Export, uuid=export_uuid)
        if export.status != Export.Status.DONE:
            raise DomainError(f"the export is {export.get_status_display().lower()}, not ready")
        return FileResponse(
            storage.open_file(export.file.name),
            as_attachment=True,
            filename=f"maskloop-export-{export.created_at:%Y%m%d}-{str(export.uuid)[:8]}.zip",
            content_type="application/zip",
        )
