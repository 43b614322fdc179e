"""Web imports: upload a zipped folder or several files, then follow the import."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import services
from annotation.errors import DomainError
from annotation.models import ImageClass, ImportJob
from annotation.permissions import IsAdmin


class ImportOutput(serializers.ModelSerializer):
    requested_by = serializers.CharField(source="requested_by.username")
    status_display = serializers.CharField(source="get_status_display")
    status_url = serializers.SerializerMethodField()
    page_url = serializers.SerializerMethodField()

    class Meta:
        model = ImportJob
        fields = [
            "uuid",
            "name",
            "size",
            "source",
            "image_class",
            "status",
            "status_display",
            "done",
            "total",
            "report",
            "failure_reason",
            "requested_by",
            "created_at",
            "finished_at",
            "status_url",
            "page_url",
        ]

    def get_status_url(self, obj: ImportJob) -> str:
        return reverse("api:import-detail", args=[obj.uuid])

    def get_page_url(self, obj: ImportJob) -> str:
        return reverse("import-detail", args=[obj.uuid])


class ImportListApi(APIView):
    permission_classes = [IsAdmin]
    parser_classes = [MultiPartParser]  # files cannot travel url-encoded

    class InputSerializer(serializers.Serializer):
        files = serializers.ListField(
            child=serializers.FileField(max_length=1000),
            allow_empty=False,
            help_text="one .zip of a folder, or images (PNG, JPEG, DICOM), masks and CSVs",
        )
        paths = serializers.ListField(
            child=serializers.CharField(max_length=1000),
            required=False,
            help_text="each file's path inside the folder chosen, in the order of `files` "
            "(a browser sends only the file's own name with it)",
        )
        source = serializers.CharField(  # type: ignore[assignment]
            required=False, allow_blank=True, default="", max_length=100
        )
        image_class = serializers.ChoiceField(
            choices=[("", "none"), *ImageClass.choices], required=False, default=""
        )

        class Meta:
            ref_name = "ImportInput"

    @extend_schema(responses=ImportOutput(many=True))
    def get(self, request):
        jobs = ImportJob.objects.select_related("requested_by")[:100]
        return Response(ImportOutput(jobs, many=True).data)

    @extend_schema(request=InputSerializer, responses={202: ImportOutput})
    def post(self, request):
        # A multipart body is a QueryDict: the list fields read every "files" and "paths" part.
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        files, paths = v["files"], v.get("paths") or []
        if paths and len(paths) != len(files):
            raise DomainError(f"{len(paths)} path(s) were sent for {len(files)} file(s)")
        names = paths or [f.name for f in files]
        job = services.import_job_create(
            requested_by=request.user,
            files=[(name, f, f.size or 0) for name, f in zip(names, files, strict=True)],
            source=v["source"],
            image_class=v["image_class"],
        )
        # Queued: a worker imports it; GET the job to follow it.
        return Response(ImportOutput(job).data, status=status.HTTP_202_ACCEPTED)


class ImportDetailApi(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(responses=ImportOutput)
    def get(self, request, job_uuid):
        job = get_object_or_404(ImportJob.objects.select_related("requested_by"), uuid=job_uuid)
        return Response(ImportOutput(job).data)
