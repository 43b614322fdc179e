"""Rounds: start one, follow its training and review, cancel it."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import selectors, services
from annotation.forms import RoundStartInput, round_start_arguments
from annotation.models import ReviewItem, Round
from annotation.permissions import IsAdmin
from training.validation import run_card


class RunOutput(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    arch = serializers.CharField(help_text="Blank for a classifier.")
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
    card = serializers.SerializerMethodField(
        help_text="The network as the pages describe it: preset, input size, training masks, "
        "held-out metrics with Wilson and eq. 13 intervals, and whether it is validated."
    )

    def get_targets(self, obj) -> int:
        return len(obj.target_image_ids)

    def get_metrics(self, obj) -> dict:
        mv = getattr(obj, "model_version", None)
        return mv.metrics if mv else {}

    def get_card(self, obj) -> dict:
        return run_card(obj)


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
            "progress",
        ]


class RoundListApi(APIView):
    permission_classes = [IsAdmin]
    parser_classes = [JSONParser]  # `networks` is a list of lists: no form can carry it

    InputSerializer = RoundStartInput  # the Rounds page takes the same

    @extend_schema(responses=RoundOutput(many=True))
    def get(self, request):
        return Response(RoundOutput(Round.objects.select_related("started_by"), many=True).data)

    @extend_schema(request=InputSerializer, responses={201: RoundOutput})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rnd = services.round_start(
            started_by=request.user, **round_start_arguments(data.validated_data)
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


class RoundTeamApi(APIView):
    """Each MD's progress and agreement in the round and overall, and the pairwise agreement
    of MDs on the items they both decided (annotation/selectors/team.py). Admins only: it
    names who picked what."""

    permission_classes = [IsAdmin]

    @extend_schema(responses={200: None})
    def get(self, request, number: int):
        rnd = get_object_or_404(Round, number=number)
        return Response(selectors.round_team(rnd).as_dict())
