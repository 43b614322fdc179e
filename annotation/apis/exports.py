"""Dataset exports: request one, follow it, download the zip."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import selectors, services, storage
from annotation.errors import DomainError
from annotation.models import Export
from annotation.permissions import IsData


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
        format = serializers.ChoiceField(
            choices=[
                ("png", "PNG masks"),
                ("coco", "COCO instance segmentation (RLE)"),
                ("dicom-seg", "DICOM-SEG per image"),
            ],
            default="png",
            help_text="png: images, PNG masks and CSVs; coco: the same plus "
            "annotations/instances.json; dicom-seg: the same plus a DICOM-SEG per image "
            "with an accepted mask in dicom-seg/.",
        )

        class Meta:
            ref_name = "ExportRequestInput"

    @extend_schema(responses=ExportOutput(many=True))
    def get(self, request):
        return Response(
            ExportOutput(Export.objects.select_related("requested_by")[:100], many=True).data
        )

    @extend_schema(request=InputSerializer, responses={202: ExportOutput})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        export = services.export_request(requested_by=request.user, filters=data.validated_data)
        # Queued: the worker counts and builds it; GET the export to follow it.
        return Response(ExportOutput(export).data, status=status.HTTP_202_ACCEPTED)


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
        # Streamed from the local folder, or a redirect to a short-lived presigned URL on S3.
        return storage.download_response(
            export.file.name,
            f"maskloop-export-{export.created_at:%Y%m%d}-{str(export.uuid)[:8]}.zip",
            content_type="application/zip",
        )


class ExportPreviewApi(APIView):
    """What an export with these filters would hold, before it is built: images by class and
    by the source of their accepted mask, and what is left out and why."""

    permission_classes = [IsData]

    class InputSerializer(serializers.Serializer):
        round = serializers.IntegerField(required=False, allow_null=True)
        classes = serializers.CharField(required=False, allow_blank=True, help_text="a,b,c")
        accepted_only = serializers.BooleanField(default=True)

        class Meta:
            ref_name = "ExportPreviewInput"

    @extend_schema(parameters=[InputSerializer], responses=OpenApiTypes.OBJECT)
    def get(self, request):
        data = self.InputSerializer(data=request.query_params)
        data.is_valid(raise_exception=True)
        filters = services.export_filters_clean(data.validated_data)
        return Response(selectors.export_preview(filters))
