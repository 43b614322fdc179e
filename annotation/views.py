"""Server-rendered pages. Each one reads through selectors and writes through services."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from annotation import selectors, services
from annotation.errors import DomainError
from annotation.forms import (
    STAGE_NETWORK_SET,
    ExportForm,
    PacsPullForm,
    PretrainForm,
    RoundStartForm,
    round_start_arguments,
)
from annotation.models import (
    Export,
    Image,
    ImageClass,
    ImageFlag,
    ImportJob,
    PacsPull,
    ReviewItem,
    Role,
    Round,
    Screening,
)
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
    only, error = _queue_filter(request)
    if error:
        messages.error(request, error)
    matching = selectors.review_count_for(request.user, only=only) if only else None
    return render(
        request,
        "annotation/queue.html",
        {
            "queue": selectors.md_queue(request.user),
            "only": only,
            "only_text": only.describe(),
            "only_query": only.query(),
            "matching": matching,
            "filter_choices": _filter_choices(),
        },
    )


def _queue_filter(request) -> tuple[selectors.QueueFilter, str]:
    """The MD's queue filter from the query (class, round, flag), and an error in a sentence
    when a value is wrong (the filter is then empty)."""
    try:
        return selectors.queue_filter_parse(request.GET), ""
    except DomainError as exc:
        return selectors.QueueFilter(), f"The queue filter was not applied: {exc}."


def _filter_choices() -> dict:
    """What the queue's filter form offers: the classes, the rounds under review, the flags."""
    return {
        "classes": ImageClass.choices,
        "rounds": [r.number for r in selectors.reviewing_rounds()],
        "flags": ImageFlag.choices,
    }


@role_required(Role.MD)
def draw(request, image_id: int):
    image = get_object_or_404(Image, pk=image_id)
    if image.status not in services.DRAWABLE:
        # A finished redraw, or an image drawn or taken into a round since the link was made:
        # a page that says what happened and where to go, not a silent redirect.
        return render(
            request,
            "annotation/draw_closed.html",
            {
                "image": image,
                "reason": selectors.draw_closed_reason(image, user=request.user),
                "next_url": _next_draw_url(exclude=image.pk),
            },
        )
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
    saved_url = reverse("draw-saved", args=[image.pk])
    starting = None
    if item is None and selectors.starting_mask_refusal(image) is None:
        # A first drawing: the newest network's mask to start from, once there is one.
        mv = selectors.starting_model()
        if mv is None:
            starting = {"reason": selectors.NO_STARTING_MODEL}
        else:
            rnd = mv.run.round
            starting = {
                "url": reverse("inference:api-starting-mask", args=[image.pk]),
                "model": f"{mv.arch} · {mv.encoder} of round {rnd.number} "
                f"({rnd.get_stage_display()})",
            }
    return render(
        request,
        "annotation/draw.html",
        {
            "image": image,
            "display_url": reverse("api:image-display", args=[image.pk]),
            "save_url": reverse("api:image-masks", args=[image.pk]),
            "start_masks": start_masks,
            "starting": starting,
            "purpose": "redraw" if item is not None else "draw",
            # After a save the page opens one of these; each says "Saved" and moves on.
            "next_url": saved_url,
            "save_next_url": f"{saved_url}?next=1",
            "has_next": _next_draw_url(exclude=image.pk) is not None,
        },
    )


@role_required(Role.MD)
def draw_saved(request, image_id: int):
    """Where the draw page goes after a save: a message saying what was saved, then the MD's
    queue, or with ?next=1 the next image waiting for a redraw or a first mask."""
    image = get_object_or_404(Image, pk=image_id)
    mask = selectors.latest_drawing_by(image, user=request.user)
    if mask is None:
        messages.error(request, f"Nothing of yours is saved on {image.name} yet.")
        if image.status in services.DRAWABLE:
            return redirect("draw", image_id=image.pk)
        return redirect("queue")
    accepted = image.ground_truths.filter(mask=mask).exists()
    what = "your redraw is its ground truth now" if accepted else "ready for the next Stage I round"
    messages.success(request, f"Saved {image.name} (mask version {mask.version}): {what}.")
    if request.GET.get("next"):
        next_url = _next_draw_url(exclude=image.pk)
        if next_url is not None:
            return redirect(next_url)
        messages.info(request, "No other image is waiting for a drawing or a redraw.")
    return redirect("queue")


def _next_draw_url(*, exclude: int) -> str | None:
    image_id = selectors.next_image_to_draw(exclude=exclude)
    return None if image_id is None else reverse("draw", args=[image_id])


@role_required(Role.MD)
def review_next(request):
    only, error = _queue_filter(request)
    if error:
        messages.error(request, error)
        return redirect("queue")
    item = services.item_claim(reviewer=request.user, only=only)
    if item is None:
        if only:
            rest = selectors.review_count_for(request.user)
            messages.info(
                request,
                f"Nothing left to review with your filter ({only.describe()}). "
                + (
                    f"Clear it to review the other {rest} item{'s' if rest != 1 else ''}."
                    if rest
                    else "Nothing else is waiting either."
                ),
            )
            return redirect(f"{reverse('queue')}?{only.query()}")
        messages.info(request, "Nothing left to review. Thank you!")
        return redirect("queue")
    url = reverse("review", args=[item.uuid])
    return redirect(f"{url}?{only.query()}" if only else url)


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
    # The MD's queue filter stays in the page's URL, so every next item honours it.
    only = selectors.QueueFilter() if adjudicating else _queue_filter(request)[0]
    keep = f"?{only.query()}" if only else ""
    if not adjudicating:
        try:
            services.lease_take(item=item, reviewer=request.user)
        except DomainError as exc:
            messages.info(request, f"That image is not yours to review now: {exc}.")
            return redirect(reverse("review-next") + keep)
    # The item's data and its first (smallest) images come with the page: no request stands
    # between the page's scripts and the item's first frame.
    payload = selectors.blind_item_payload(item)
    context = selectors.review_context(item, request.user)
    return render(
        request,
        "annotation/review.html",
        {
            "item": {**payload, "context": context},
            "context": context,
            "first_images": selectors.first_display_images(item, payload),
            "decision_url": reverse(
                "api:item-adjudicate" if adjudicating else "api:item-decision", args=[item.uuid]
            ),
            # An admin breaking a tie goes back to the rounds, not on to an MD's queue.
            "next_api_url": "" if adjudicating else reverse("api:item-next") + keep,
            "filter_query": keep,
            "filter_text": only.describe(),
            # The page renews the MD's leases on its items (this one's URL, by item id).
            "lease_url": "" if adjudicating else reverse("api:item-lease", args=[item.uuid]),
            "skip_url": "" if adjudicating else reverse("api:item-skip", args=[item.uuid]),
            "undo_url": "" if adjudicating else reverse("api:item-undo", args=[item.uuid]),
            "undo_seconds": settings.MASKLOOP_UNDO_SECONDS,
            "queue_url": reverse("rounds") if adjudicating else reverse("queue") + keep,
            "adjudicating": adjudicating,
        },
    )


@role_required(Role.ADMIN)
def rounds(request):
    options = selectors.round_start_options()
    form = RoundStartForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            rnd = services.round_start(
                started_by=request.user, **round_start_arguments(form.cleaned_data)
            )
        except DomainError as exc:
            messages.error(request, f"The round did not start. {_sentence(str(exc))}")
        else:
            messages.success(
                request,
                f"Round {rnd.number} ({rnd.get_stage_display()}) started: "
                f"{rnd.training_runs.count()} trainings queued.",
            )
            return redirect("round-detail", number=rnd.number)
    if not form.is_bound:  # the first stage that can start now, else Stage I
        stage = next((o.stage for o in options if o.possible), Round.Stage.STAGE_I)
        form.initial = {"stage": stage, "network_set": STAGE_NETWORK_SET[Round.Stage(stage)]}
    counts = {
        s.label: Image.objects.filter(status=s.value).count()
        for s in Image.Status
        if s != Image.Status.ACCEPTED
    }
    return render(
        request,
        "annotation/rounds.html",
        {
            "pretrain_form": PretrainForm(),
            "pretrainings": selectors.pretrainings_recent(),
            "form": form,
            "rounds": selectors.rounds_with_shown_status(),
            "image_counts": counts,
            "ground_truth": selectors.ground_truth_counts(),
            "start_options": options,
            "can_start": any(o.possible for o in options),
            "stage_network_sets": {str(k): v for k, v in STAGE_NETWORK_SET.items()},
        },
    )


def _sentence(text: str) -> str:
    """A service's reason as a sentence: capitalised, with a full stop."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else f"{text}."


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
            messages.error(request, f"Round {number} was not cancelled. {_sentence(str(exc))}")
        return redirect("round-detail", number=number)
    return render(
        request,
        "annotation/round_detail.html",
        {
            "round": rnd,
            "api_url": reverse("api:round-detail", args=[rnd.number]),
            "team": selectors.round_team(rnd) if rnd.stage != Round.Stage.FINAL else None,
            "team_api_url": reverse("api:round-team", args=[rnd.number]),
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
    and which network made each mask; and for nobody while the image is under blind review."""
    image = get_object_or_404(Image, pk=image_id)
    if selectors.image_under_review(image.pk):
        raise PermissionDenied(selectors.PROVENANCE_SEALED_REASON.capitalize() + ".")
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


@role_required(Role.ADMIN)
def screening(request):
    """Images flagged at import, near-duplicates beside the image they resemble, with keep /
    exclude buttons; ?state=kept or excluded lists the decided ones (and can change them)."""
    if request.method == "POST":
        state = request.POST.get("state", "")
        back = reverse("screening") + (f"?state={state}" if state in Screening.values else "")
        image_id = request.POST.get("image_id", "")
        image = Image.objects.filter(pk=int(image_id)).first() if image_id.isdigit() else None
        if image is None:
            messages.error(request, "No such image.")
            return redirect(back)
        try:
            image = services.screening_decide(
                image=image,
                decided_by=request.user,
                decision=request.POST.get("decision", ""),
                reason=request.POST.get("reason", ""),
            )
        except DomainError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"{image.name}: {image.get_screening_display().lower()}.")
        return redirect(back)
    state = request.GET.get("state", Screening.PENDING)
    if state not in (Screening.PENDING, Screening.KEPT, Screening.EXCLUDED):
        state = Screening.PENDING
    return render(
        request,
        "annotation/screening.html",
        {
            "state": state,
            "flagged": selectors.screening_flagged(state=state),
            "counts": selectors.screening_counts(),
        },
    )


@role_required(Role.ADMIN)
def pacs(request):
    """Pull CXRs from a PACS: the form queues a pull (a worker runs it), the table shows each
    pull's progress and report. The page reloads itself while a pull is under way."""
    from annotation.services.pacs import pacs_pull_request

    form = PacsPullForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            pull = pacs_pull_request(requested_by=request.user, **form.cleaned_data)
        except DomainError as exc:
            messages.error(request, f"The pull was not started. {_sentence(str(exc))}")
        else:
            messages.success(request, f"Pull {pull.pk} from {pull.server} queued.")
            return redirect("pacs")
    pulls = list(PacsPull.objects.select_related("requested_by")[:30])
    return render(
        request,
        "annotation/pacs.html",
        {
            "form": form,
            "pulls": pulls,
            "active": any(
                p.status in (PacsPull.Status.QUEUED, PacsPull.Status.RUNNING) for p in pulls
            ),
            "max_attempts": settings.MASKLOOP_MAX_ATTEMPTS,
        },
    )


@role_required(Role.ADMIN)
def imports(request, job_uuid=None):
    """The web import: upload a zipped folder or several files (the page posts them to the
    import API with a progress bar), follow the import, and read each import's report."""
    job = None
    if job_uuid is not None:
        job = get_object_or_404(ImportJob.objects.select_related("requested_by"), uuid=job_uuid)
    return render(
        request,
        "annotation/imports.html",
        {
            "job": job,
            "report": selectors.import_report(job) if job is not None else None,
            "jobs": ImportJob.objects.select_related("requested_by")[:20],
            "classes": ImageClass.choices,
            "list_api": reverse("api:import-list"),
            "limits": selectors.import_limits_text(),
        },
    )


@role_required(Role.ADMIN)
def encoder_pretrain(request):
    """Starts a self-supervised pretraining of an encoder (the Rounds page's button)."""
    if request.method != "POST":
        return redirect("rounds")
    form = PretrainForm(request.POST)
    if not form.is_valid():
        messages.error(request, "The pretraining did not start: choose an encoder and a preset.")
        return redirect("rounds")
    try:
        row = services.encoder_pretrain_start(
            encoder=form.cleaned_data["encoder"],
            preset=form.cleaned_data["preset"],
            started_by=request.user,
        )
    except DomainError as exc:
        messages.error(request, f"The pretraining did not start. {_sentence(str(exc))}")
    else:
        messages.success(
            request,
            f"Pretraining #{row.pk} of {row.encoder} queued on {len(row.image_ids)} images; "
            "once done, a round can start from it (Advanced: starting weights).",
        )
    return redirect("rounds")
