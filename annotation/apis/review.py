"""Blind review: an MD sees an item's CXR and its candidates by label only, never their source."""

from __future__ import annotations

import uuid

from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import selectors, services, storage
from annotation.apis.common import (
    DISPLAY_MAX,
    OVERLAY,
    PNG,
    display_max,
    png_bytes_response,
    png_response,
)
from annotation.errors import DomainError
from annotation.models import ReviewItem
from annotation.permissions import IsAdmin, IsMD, IsReviewer
from annotation.services.leases import lease_seconds
from annotation.services.review import undo_seconds


class BlindCandidateOutput(serializers.Serializer):
    label = serializers.CharField()  # type: ignore[assignment]  # a field, not Field.label
    mask_url = serializers.CharField(help_text="the mask, 0/255 grayscale")
    overlay_url = serializers.CharField(help_text="the mask coloured for drawing on the CXR")


class ReviewContextOutput(serializers.Serializer):
    image_name = serializers.CharField(help_text='the file name, or "withheld"')
    image_class = serializers.CharField()
    patient = serializers.CharField(help_text='empty when unknown, or "withheld"')
    round = serializers.IntegerField()
    position = serializers.IntegerField(help_text="this item is n of total in the round")
    total = serializers.IntegerField()
    decided_in_round = serializers.IntegerField()
    decided_today = serializers.IntegerField()


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
    context = ReviewContextOutput()  # type: ignore[assignment]  # a field, not Field.context


def item_payload(item: ReviewItem, user) -> dict:
    """The blind item and its context for this user (selectors.review_context)."""
    return {**selectors.blind_item_payload(item), "context": selectors.review_context(item, user)}


class NextUrlOutput(serializers.Serializer):
    next_url = serializers.CharField()


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
        item = _visible_item(request, item_uuid)
        if item.status == ReviewItem.Status.OPEN:
            services.lease_renew(item=item, reviewer=request.user)  # if they hold one
        return Response(item_payload(item, request.user))


class ReviewNextApi(APIView):
    """Hands this MD an item and leases it to them: their current one first; with `after`
    (the item on screen) a different one, the prefetched next item. `class`, `round` and
    `flag` restrict it to the MD's queue filter (the image's class, a round's number, a flag
    the MD set themselves); 204 when nothing is left that matches."""

    permission_classes = [IsMD]

    @extend_schema(
        parameters=[
            OpenApiParameter("after", str, description="the item on screen (prefetch)"),
            OpenApiParameter("class", str, description="only images of this class"),
            OpenApiParameter("round", int, description="only items of this round"),
            OpenApiParameter("flag", str, description="only images you flagged so"),
        ],
        responses={200: BlindItemOutput, 204: None},
    )
    def get(self, request):
        only = selectors.queue_filter_parse(request.query_params)
        current = None
        if request.query_params.get("after"):
            try:
                after = uuid.UUID(request.query_params["after"])
            except ValueError:
                raise DomainError("'after' must be a review item id") from None
            current = ReviewItem.objects.filter(uuid=after).first()
        item = services.item_claim(reviewer=request.user, after=current, only=only)
        if item is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(item_payload(item, request.user))


class LeaseOutput(serializers.Serializer):
    expires_at = serializers.DateTimeField()
    seconds = serializers.IntegerField(help_text="how long a lease lasts unless renewed")


class ReviewLeaseApi(APIView):
    """This MD's hold on an item: POST takes or renews it (the open review page does so every
    minute), DELETE gives the item back to the pool."""

    permission_classes = [IsMD]

    @extend_schema(request=None, responses={200: LeaseOutput, 409: None})
    def post(self, request, item_uuid):
        item = get_object_or_404(ReviewItem, uuid=item_uuid)
        expires_at = services.lease_take(item=item, reviewer=request.user)
        return Response(LeaseOutput({"expires_at": expires_at, "seconds": lease_seconds()}).data)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request, item_uuid):
        item = get_object_or_404(ReviewItem, uuid=item_uuid)
        services.lease_release(item=item, reviewer=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ReviewSkipApi(APIView):
    """The MD passes on the item for now: it goes back to the pool and comes back to them only
    after their other items."""

    permission_classes = [IsMD]

    @extend_schema(request=None, responses={204: None})
    def post(self, request, item_uuid):
        item = get_object_or_404(ReviewItem, uuid=item_uuid)
        services.item_skip(item=item, reviewer=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class UndoOutput(serializers.Serializer):
    page_url = serializers.CharField(help_text="the item's review page, to pick again")


class ReviewUndoApi(APIView):
    """Undoes the MD's pick on the item within the grace window (MASKLOOP_UNDO_SECONDS), while
    no other MD has decided on it and it has not resolved; the item is theirs again."""

    permission_classes = [IsMD]

    @extend_schema(request=None, responses={200: UndoOutput, 409: None})
    def post(self, request, item_uuid):
        item = get_object_or_404(ReviewItem, uuid=item_uuid)
        services.decision_undo(item=item, reviewer=request.user)
        return Response({"page_url": reverse("review", args=[item.uuid])})


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
        try:
            data = storage.candidate_display_copy(
                candidate.mask.file.name,
                display_max(request),
                form="overlay" if overlay else "mask",
                item_key=str(item.uuid),
                label=candidate.label,
            )
        except ValueError as exc:
            raise DomainError(str(exc)) from None
        return png_bytes_response(data)


class DecisionInput(serializers.Serializer):
    choice = serializers.CharField(max_length=10)
    seconds = serializers.FloatField(min_value=0, max_value=86400, default=0)
    round = serializers.IntegerField(required=False)


class DecisionOutput(NextUrlOutput):
    undo_url = serializers.CharField(
        allow_null=True,
        help_text="where to undo this pick, while it may be undone: null when the pick settled "
        "the item (then it is final at once)",
    )
    undo_seconds = serializers.IntegerField(help_text="how long a pick may be undone")


class ReviewDecisionApi(APIView):
    permission_classes = [IsMD]
    parser_classes = [JSONParser, FormParser]

    @extend_schema(request=DecisionInput, responses={201: DecisionOutput})
    def post(self, request, item_uuid):
        item = get_object_or_404(ReviewItem, uuid=item_uuid)
        data = DecisionInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        decision = services.decision_create(
            item=item,
            reviewer=request.user,
            choice=v["choice"],
            seconds=v["seconds"],
            round_number=v.get("round"),
        )
        undoable = decision.item.status == ReviewItem.Status.OPEN
        # The page hands the MD their next item (leased) when it opens.
        return Response(
            {
                "next_url": reverse("review-next"),
                "undo_url": reverse("api:item-undo", args=[item.uuid]) if undoable else None,
                "undo_seconds": undo_seconds(),
            },
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
