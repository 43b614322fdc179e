"""Pages: the list of images with infection maps, one image's map, and the upload demo."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, render
from django.urls import reverse

from annotation import selectors
from annotation.models import Image, ImageClass, Role
from annotation.permissions import role_required
from inference import analysis

ANY_ROLE = (Role.MD, Role.ADMIN, Role.DATA)
PAGE_SIZE = 50


def _ensemble_context() -> dict:
    try:
        models, classifier = analysis.final_ensemble()
    except analysis.NoFinalModelsError as exc:
        return {"final_models": [], "classifier": None, "no_models_reason": str(exc)}
    return {"final_models": models, "classifier": classifier}


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
