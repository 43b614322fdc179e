"""Pages: the list of images with infection maps, one image's map, and the upload demo."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, render
from django.urls import reverse

from annotation import selectors
from annotation.models import Image, ImageClass, Role, Round
from annotation.permissions import role_required
from inference import analysis
from inference.maps import EPSILON, THRESHOLD
from training.validation import ensemble_verdict, run_card

ANY_ROLE = (Role.MD, Role.ADMIN, Role.DATA)
PAGE_SIZE = 50


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f}"


def _metric_cell(card: dict, level: str, name: str) -> dict[str, str]:
    m = card["levels"].get(level, {}).get(name)
    if not m or m["value"] is None:
        return {"text": "—", "title": "not measured"}
    return {
        "text": f"{_pct(m['value'])} ({_pct(m['low'])}–{_pct(m['high'])})",
        "title": f"Wilson 95 % interval {_pct(m['low'])}–{_pct(m['high'])} %; the paper's eq. 13 "
        f"interval (normal approximation, clipped to 0–100 %): "
        f"{_pct(m['paper_low'])}–{_pct(m['paper_high'])} %",
    }


def _card(mv) -> dict:
    card = run_card(mv.run, mv)
    card["sensitivity"] = _metric_cell(card, "image", "sensitivity")
    card["specificity"] = _metric_cell(card, "image", "specificity")
    card["pixel_f1"] = _metric_cell(card, "pixel", "f1")
    return card


def _what_is_missing() -> dict:
    """Where the loop stands when no final round has finished: what is missing, and which
    step provides it."""
    final = Round.objects.filter(stage=Round.Stage.FINAL).order_by("-number").first()
    active = Round.objects.filter(status__in=Round.ACTIVE).order_by("-number").first()
    images = Image.objects.count()
    accepted = Image.objects.filter(status=Image.Status.ACCEPTED).count()
    state: dict = {"images": images, "accepted": accepted, "active": active}
    if not images:
        state["missing"] = "No images have been imported yet, so no network can be trained."
        state["step"] = "import"
    elif active is not None and active.stage == Round.Stage.FINAL:
        state["missing"] = (
            f"Final round {active.number} is training the infection-map networks; the maps "
            "appear here as soon as it finishes."
        )
        state["step"] = "watch"
    elif active is not None:
        state["missing"] = (
            f"No final model yet. Round {active.number} ({active.get_stage_display()}) is "
            f"{active.get_status_display().lower()}; a final round can start once it is "
            "finished or cancelled."
        )
        state["step"] = "finish"
    else:
        last = ""
        if final is not None and final.status in (Round.Status.FAILED, Round.Status.CANCELLED):
            why = f": {final.failure_reason}" if final.failure_reason else ""
            last = (
                f" The last final round ({final.number}) {final.get_status_display().lower()}{why}."
            )
        state["missing"] = (
            "No final model yet: the infection maps are drawn by the networks of a final round, "
            f"trained on the accepted masks ({accepted} of {images} images have one).{last}"
        )
        state["step"] = "start"
    return state


def _ensemble_context() -> dict:
    try:
        models, classifier = analysis.final_ensemble()
    except analysis.NoFinalModelsError as exc:
        return {
            "final_models": [],
            "classifier": None,
            "no_models_reason": str(exc),
            "loop": _what_is_missing(),
        }
    cards = [_card(mv) for mv in models]
    return {
        "final_models": models,
        "classifier": classifier,
        "cards": cards,
        "classifier_card": _card(classifier) if classifier is not None else None,
        "validation": ensemble_verdict(cards),
        "threshold": THRESHOLD,
        "epsilon": EPSILON,
    }


@role_required(*ANY_ROLE)
def map_list(request):
    chosen = request.GET.get("class", "")
    images = Image.objects.annotate(under_review=selectors.under_review())
    if chosen in ImageClass.values:
        images = images.filter(image_class=chosen)
    else:
        chosen = ""
    page = Paginator(images, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "inference/map_list.html",
        {
            "page": page,
            "classes": ImageClass.choices,
            "chosen": chosen,
            "maps_hidden": selectors.maps_hidden_from(request.user),
            **_ensemble_context(),
        },
    )


@role_required(*ANY_ROLE)
def image_map(request, image_id: int):
    image = get_object_or_404(Image, pk=image_id)
    if selectors.maps_hidden_from(request.user) and selectors.image_under_review(image.pk):
        raise PermissionDenied(selectors.UNDER_REVIEW_REASON)
    context = _ensemble_context()
    return render(
        request,
        "inference/image_map.html",
        {
            "image": image,
            "api_url": reverse("inference:api-image-map", args=[image.pk]),
            "display_url": reverse("api:image-display", args=[image.pk]),
            "previous": Image.objects.filter(pk__lt=image.pk).order_by("-pk").first(),
            "next": Image.objects.filter(pk__gt=image.pk).order_by("pk").first(),
            **context,
        },
    )


@role_required(*ANY_ROLE)
def demo(request):
    return render(
        request,
        "inference/demo.html",
        {"api_url": reverse("inference:api-infer"), **_ensemble_context()},
    )
