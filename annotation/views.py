"""Server-rendered pages. Each one reads through selectors and writes through services."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from annotation import selectors, services
from annotation.errors import DomainError
from annotation.forms import ExportForm, RoundStartForm, round_start_arguments
from annotation.models import Export, Image, ReviewItem, Role, Round
from annotation.permissions import role_required


@login_required
def home(request):
    roles = selectors.user_roles(request.user)
    if Role.MD in roles:
        return redirect("queue")
    if Role.ADMIN in roles:
        return redirect("rounds")
    if Role.DATA in roles:
        return redirect("exports")
    return render(request, "annotation/no_role.html", status=403)


@role_required(Role.MD)
def queue(request):
    return render(request, "annotation/queue.html", {"queue": selectors.md_queue(request.user)})


@role_required(Role.MD)
def draw(request, image_id: int):
    image = get_object_or_404(Image, pk=image_id)
    if image.status not in services.DRAWABLE:
        messages.error(
            request, f"{image.name} cannot be drawn now: {image.get_status_display().lower()}."
        )
        return redirect("queue")
    start_masks = []
    item = image.review_items.filter(status=ReviewItem.Status.REDRAW).order_by("-id").first()
    if item is not None:
        start_masks = [
            {
                "label": f"Candidate {c.label}",
                "candidate": c.label,
                "url": reverse("api:item-candidate", args=[item.uuid, c.label]),
            }
            for c in selectors.item_candidates(item)
        ]
    return render(
        request,
        "annotation/draw.html",
        {
            "image": image,
            "display_url": reverse("api:image-display", args=[image.pk]),
            "save_url": reverse("api:image-masks", args=[image.pk]),
            "start_masks": start_masks,
            "purpose": "redraw" if item is not None else "draw",
            "next_url": reverse("queue"),
        },
    )


@role_required(Role.MD)
def review_next(request):
    item = services.item_claim(reviewer=request.user)
    if item is None:
        messages.info(request, "Nothing left to review. Thank you!")
        return redirect("queue")
    return redirect("review", item_uuid=item.uuid)


@role_required(Role.MD, Role.ADMIN)
def review(request, item_uuid):
    item = get_object_or_404(ReviewItem, uuid=item_uuid)
    adjudicating = item.status == ReviewItem.Status.ADJUDICATION
    if adjudicating and not selectors.user_has_role(request.user, Role.ADMIN):
        messages.error(request, "This item is waiting for an admin to break a tie.")
        return redirect("queue")
    if not adjudicating and (
        item.status != ReviewItem.Status.OPEN or not selectors.user_has_role(request.user, Role.MD)
    ):
        messages.info(request, "That item is no longer open for review.")
        return redirect(
            "review-next" if selectors.user_has_role(request.user, Role.MD) else "rounds"
        )
    if not adjudicating:
        try:
            services.lease_take(item=item, reviewer=request.user)
        except DomainError as exc:
            messages.info(request, f"That image is not yours to review now: {exc}.")
            return redirect("review-next")
    # The item's data and its first (smallest) images come with the page: no request stands
    # between the page's scripts and the item's first frame.
    payload = selectors.blind_item_payload(item)
    return render(
        request,
        "annotation/review.html",
        {
            "item": payload,
            "first_images": selectors.first_display_images(item, payload),
            "decision_url": reverse(
                "api:item-adjudicate" if adjudicating else "api:item-decision", args=[item.uuid]
            ),
            # An admin breaking a tie goes back to the rounds, not on to an MD's queue.
            "next_api_url": "" if adjudicating else reverse("api:item-next"),
            # The page renews the MD's leases on its items (this one's URL, by item id).
            "lease_url": "" if adjudicating else reverse("api:item-lease", args=[item.uuid]),
            "queue_url": reverse("rounds" if adjudicating else "queue"),
            "adjudicating": adjudicating,
        },
    )


@role_required(Role.ADMIN)
def rounds(request):
    form = RoundStartForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            rnd = services.round_start(
                started_by=request.user, **round_start_arguments(form.cleaned_data)
            )
        except DomainError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"Round {rnd.number} started.")
            return redirect("round-detail", number=rnd.number)
    counts = {s.label: Image.objects.filter(status=s.value).count() for s in Image.Status}
    return render(
        request,
        "annotation/rounds.html",
        {
            "form": form,
            "rounds": Round.objects.select_related("started_by"),
            "image_counts": counts,
        },
    )


@role_required(Role.ADMIN)
def round_detail(request, number: int):
    rnd = get_object_or_404(Round, number=number)
    if request.method == "POST" and request.POST.get("action") == "cancel":
        try:
            rnd = services.round_cancel(round=rnd, by=request.user)
            left = rnd.progress.get("total", 0) - rnd.progress.get("done", 0)
            more = f" {left} unreviewed items are being withdrawn." if left else ""
            messages.success(request, f"Round {rnd.number} cancelled.{more}")
        except DomainError as exc:
            messages.error(request, str(exc))
        return redirect("round-detail", number=number)
    return render(
        request,
        "annotation/round_detail.html",
        {
            "round": rnd,
            "api_url": reverse("api:round-detail", args=[rnd.number]),
        },
    )


@role_required(Role.DATA)
def exports(request):
    form = ExportForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.export_request(requested_by=request.user, filters=form.cleaned_data)
        except DomainError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, "Export queued; it appears below when it is ready.")
            return redirect("exports")
    exports = list(Export.objects.select_related("requested_by")[:50])
    for export in exports:
        export.filters_text = selectors.export_filters_text(export.filters)  # type: ignore[attr-defined]
    return render(
        request,
        "annotation/exports.html",
        {
            "form": form,
            "exports": exports,
            "list_api": reverse("api:export-list"),
            "preview_api": reverse("api:export-preview"),
            "noted": selectors.recently_noted_images(),
        },
    )


@role_required(Role.ADMIN, Role.DATA)
def image_history(request, image_id: int):
    """Everything that happened to one image, newest first. Not for MDs: it names who drew
    and which network made each mask."""
    image = get_object_or_404(Image, pk=image_id)
    notes = selectors.image_notes(image, viewer=request.user)
    return render(
        request,
        "annotation/history.html",
        {
            "image": image,
            "events": selectors.image_history(image),
            "notes": notes,
            "flagged": any(f["set_by"] for f in notes["flags"]),
        },
    )
