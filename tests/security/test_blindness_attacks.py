"""Blindness, attacked server-side: each test is what an MD (or a role mix) would try to learn
or do that the blind review must not allow, and asserts the clear refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.test import Client
from django.utils import timezone

from annotation import imaging, selectors, services
from annotation.errors import DomainError
from annotation.models import Candidate, Decision, Mask, ReviewItem, ReviewLease, Role

pytestmark = pytest.mark.django_db


def next_item(client) -> str | None:
    response = client.get("/api/review-items/next/")
    assert response.status_code in (200, 204), response.content
    return response.json()["id"] if response.status_code == 200 else None


def decide(client, item_uuid, choice: str = "A"):
    return client.post(
        f"/api/review-items/{item_uuid}/decision/", {"choice": choice, "seconds": 3}, format="json"
    )


# ------------------------------------------------ an MD never reviews a mask they drew


def test_the_author_of_every_manual_mask_is_handed_no_item_and_lists_none(
    reviewing_round, drawer, md, api
):
    rnd = reviewing_round(images=3)
    assert Mask.objects.filter(source=Mask.Source.DRAWN, author=drawer).count() == 3
    assert next_item(api(drawer)) is None
    assert selectors.review_count_for(drawer) == 0
    assert services.item_claim(reviewer=drawer) is None
    assert not ReviewLease.objects.filter(reviewer=drawer).exists()
    # another MD is handed them as usual
    assert next_item(api(md)) in {str(u) for u in rnd.items.values_list("uuid", flat=True)}
    assert selectors.review_count_for(md) == 3


def test_the_author_cannot_take_a_lease_on_their_own_item_by_its_id(reviewing_round, drawer, api):
    item = reviewing_round(images=2).items.first()
    response = api(drawer).post(f"/api/review-items/{item.uuid}/lease/")
    assert response.status_code == 403
    assert "you drew one of this image's candidate masks" in response.json()["detail"]
    assert not ReviewLease.objects.exists()


def test_the_author_cannot_decide_on_their_own_item_by_its_id(reviewing_round, drawer, api):
    item = reviewing_round(images=2).items.first()
    for choice in ("A", "B", "none"):
        response = decide(api(drawer), item.uuid, choice)
        assert response.status_code == 403, response.content
        assert "stays blind" in response.json()["detail"]
    assert not Decision.objects.exists()
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.OPEN


def test_the_author_opening_the_review_page_is_sent_on_without_a_lease(
    reviewing_round, drawer, api
):
    item = reviewing_round(images=2).items.first()
    response = api(drawer).get(f"/review/{item.uuid}/")
    assert response.status_code == 302
    assert str(item.uuid) not in response["Location"]
    assert not ReviewLease.objects.exists()


def test_a_lease_held_before_the_author_check_is_never_handed_back(reviewing_round, drawer):
    """Even a lease row that slipped in (e.g. written before this rule) hands nothing out."""
    item = reviewing_round(images=2).items.first()
    services.leases._lease_save(item=item, reviewer=drawer, now=timezone.now())
    assert services.item_claim(reviewer=drawer) is None


def test_the_author_of_a_redrawn_mask_is_not_handed_the_item_that_holds_it(
    reviewing_round, md, md2, api
):
    """md redraws an image; when an item later holds that redraw, md is not its reviewer."""
    rnd = reviewing_round(images=2)
    item = rnd.items.order_by("id").first()
    start = item.candidates.get(label="A").mask
    redraw = Mask.objects.create(
        image=item.image,
        version=item.image.masks.count() + 1,
        file=start.file.name,
        sha256=start.sha256,
        area=start.area,
        source=Mask.Source.DRAWN,
        author=md,
        based_on=start,
    )
    labels = set(item.candidates.values_list("label", flat=True))
    Candidate.objects.create(item=item, mask=redraw, label=chr(max(map(ord, labels)) + 1))
    handed = {next_item(api(md)) for _ in range(3)}
    assert str(item.uuid) not in handed
    assert decide(api(md), item.uuid).status_code == 403
    assert next_item(api(md2)) == str(item.uuid)


# ------------------------------------------------ machine maps of images under review


def test_an_md_cannot_open_the_machine_map_of_an_image_under_review(
    reviewing_round, md, admin_user, data_user, api
):
    item = reviewing_round(images=2).items.first()
    image_id = item.image_id
    for path in (f"/images/{image_id}/map/", f"/api/images/{image_id}/infection-map/"):
        response = api(md).get(path)
        assert response.status_code == 403, (path, response.status_code)
        assert "under blind review" in response.content.decode()
    # the refusal comes before any network is needed: admins and data users are not refused
    # for the review (they get the map, or a clear 409 while no final network exists)
    for user in (admin_user, data_user):
        assert api(user).get(f"/api/images/{image_id}/infection-map/").status_code != 403


def test_the_map_list_gives_an_md_no_link_to_the_map_of_an_image_under_review(
    reviewing_round, md, data_user, api
):
    item = reviewing_round(images=2).items.first()
    link = f"/images/{item.image_id}/map/"
    page = api(md).get("/maps/")
    assert page.status_code == 200
    assert link not in page.content.decode()
    assert "Under review" in page.content.decode()
    assert link in api(data_user).get("/maps/").content.decode()


def test_a_settled_image_s_map_is_open_to_mds_again(reviewing_round, md, md2, api):
    item = reviewing_round(images=2).items.first()
    assert api(md).get(f"/api/images/{item.image_id}/infection-map/").status_code == 403
    assert decide(api(md2), item.uuid).status_code == 201  # one reviewer per item: settled
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.ACCEPTED
    assert api(md).get(f"/api/images/{item.image_id}/infection-map/").status_code != 403


# ------------------------------------------------ role mixes that would read provenance


@pytest.mark.parametrize(
    "roles", [[Role.MD, Role.ADMIN], [Role.MD, Role.DATA], [Role.DATA, Role.MD, Role.ADMIN]]
)
def test_the_md_role_cannot_be_combined_with_a_role_that_reads_provenance(roles):
    user = get_user_model().objects.create_user(username="mixed", password="mixed-pass-123")
    with pytest.raises(DomainError, match="the md role cannot be combined with"):
        services.user_set_roles(user=user, roles=roles)
    assert not user.groups.exists()


def test_an_md_keeps_their_role_when_a_mix_is_refused(md):
    with pytest.raises(DomainError):
        services.user_set_roles(user=md, roles=[Role.MD, Role.ADMIN])
    assert set(md.groups.values_list("name", flat=True)) == {Role.MD}


def test_admin_with_data_is_still_allowed(db):
    user = get_user_model().objects.create_user(username="ops", password="ops-pass-123")
    services.user_set_roles(user=user, roles=[Role.ADMIN, Role.DATA])
    assert set(user.groups.values_list("name", flat=True)) == {Role.ADMIN, Role.DATA}


# ------------------------------------------------ based_on: recorded, and no existence oracle


def _redraw_item(reviewing_round, reviewer) -> ReviewItem:
    item = reviewing_round(images=2).items.first()
    services.decision_create(item=item, reviewer=reviewer, choice="none", seconds=2)
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.REDRAW
    return item


def _post_mask(client, image, **fields):
    drawing = imaging.encode_mask(np.zeros((image.height, image.width), dtype=bool))
    upload = SimpleUploadedFile("mask.png", drawing, content_type="image/png")
    return client.post(f"/api/images/{image.pk}/masks/", {"mask": upload, **fields})


def test_the_draw_page_offers_candidates_by_label_and_never_by_mask_id(reviewing_round, md, api):
    item = _redraw_item(reviewing_round, md)
    page = api(md).get(f"/draw/{item.image_id}/").content.decode()
    assert '"candidate": "A"' in page
    for mask_id in item.candidates.values_list("mask_id", flat=True):
        assert f'"based_on": {mask_id}' not in page and f'"id": {mask_id}' not in page
    script = (settings.BASE_DIR / "static" / "js" / "draw.js").read_text()
    assert 'form.append("based_on_candidate", startedFrom)' in script


def test_a_redraw_started_from_a_candidate_records_it(reviewing_round, md, api):
    item = _redraw_item(reviewing_round, md)
    start = item.candidates.get(label="B").mask
    response = _post_mask(api(md), item.image, based_on_candidate="B")
    assert response.status_code == 201, response.content
    assert Mask.objects.get(pk=response.json()["id"]).based_on == start


def test_based_on_answers_the_same_400_whether_or_not_the_mask_exists(
    reviewing_round, make_image, drawer, md, api
):
    item = _redraw_item(reviewing_round, md)
    elsewhere = make_image(manual_by=drawer).masks.get()  # exists, but of another image
    missing = Mask.objects.order_by("-pk").first().pk + 1000  # does not exist
    masks, files = Mask.objects.count(), _media_files()
    answers = set()
    for mask_id in (elsewhere.pk, missing):
        response = _post_mask(api(md), item.image, based_on=mask_id)
        assert response.status_code == 400
        answers.add(response.content)
    for label in ("Z", "QQ"):
        response = _post_mask(api(md), item.image, based_on_candidate=label)
        assert response.status_code == 400
    assert len(answers) == 1, answers  # one answer: nothing tells the ids apart
    assert Mask.objects.count() == masks and _media_files() == files
    # a candidate of this image's redraw, by id, is taken
    start = item.candidates.get(label="A").mask
    response = _post_mask(api(md), item.image, based_on=start.pk)
    assert response.status_code == 201
    assert Mask.objects.get(pk=response.json()["id"]).based_on == start


def test_based_on_is_refused_for_an_image_that_is_not_being_redrawn(make_image, md, api):
    image = make_image()
    other = make_image(manual_by=md).masks.get()
    response = _post_mask(api(md), image, based_on=other.pk)
    assert response.status_code == 400
    assert not image.masks.exists()


def _media_files() -> set[str]:
    root = Path(settings.MEDIA_ROOT)
    return {str(p) for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------ a re-run round: the MD's mask comes back


def _served(client, item: ReviewItem) -> dict[str, bytes]:
    """Every candidate form the review and draw pages may fetch, by label and form."""
    out = {}
    for candidate in selectors.item_candidates(item):
        for form in ("", "?overlay=1"):
            url = f"/api/review-items/{item.uuid}/candidates/{candidate.label}.png{form}"
            response = client.get(url)
            assert response.status_code == 200, url
            out[f"{candidate.label}{form}"] = response.content
    return out


def _cached(item: ReviewItem) -> dict[str, bool]:
    from django.core.files.storage import default_storage

    return {
        c.label: default_storage.exists(
            f"display-cache/items/{item.uuid}/{c.label}/overlay-full.png"
        )
        for c in selectors.item_candidates(item)
    }


def test_a_re_run_round_serves_the_md_s_mask_as_new_bytes_from_no_cache_of_its_own(
    reviewing_round, drawer, admin_user, md, api
):
    """The attack: after a cancel and a new round, the manual mask is the candidate whose
    overlay comes back at once (cached in round 1) or byte for byte as in round 1."""
    from annotation.services.rounds import round_warm_display_copies
    from tests.conftest import finish_runs_with, shifted

    first = reviewing_round(images=2)
    client = api(md)
    item1 = first.items.order_by("id").first()
    round1 = _served(client, item1)
    manual = item1.candidates.get(mask__source=Mask.Source.DRAWN).mask
    # No copy is kept under the mask file's own name, for a later item to find.
    media = _media_files()
    assert not [f for f in media if "display-cache" in f and manual.file.name in f]

    services.round_cancel(round=first, by=admin_user)
    services.round_withdraw_batch(round_id=first.pk)
    second = services.round_start(
        stage="I",
        started_by=admin_user,
        networks=[("unet", "densenet121"), ("unetpp", "densenet121")],
        folds=2,
        preset="tiny",
    )
    finish_runs_with(second, shifted)
    item2 = second.items.get(image=item1.image)
    assert item2.candidates.filter(mask=manual).exists()  # the same mask file is offered again

    # Nothing of item 2 is ready before the item is warmed, then every candidate is: none is
    # served from a cache that the others miss.
    assert set(_cached(item2).values()) == {False}
    round_warm_display_copies(item_ids=[item2.pk])
    assert set(_cached(item2).values()) == {True}

    round2 = _served(client, item2)
    assert not set(round2.values()) & set(round1.values()), "bytes seen in round 1 again"
    # The same pixels (it is the same mask), in bytes that match nothing served before.
    label = item2.candidates.get(mask=manual).label
    old_label = item1.candidates.get(mask=manual).label
    assert _pixels(round2[label]).tolist() == _pixels(round1[old_label]).tolist()
    assert len(set(round2.values())) == len(round2)  # and no two candidates share bytes


def _pixels(data: bytes) -> np.ndarray:
    import io

    from PIL import Image as PILImage

    return np.asarray(PILImage.open(io.BytesIO(data)))


# ------------------------------------------------ identical candidates are shown once


def _finish_with(rnd, predict) -> None:
    """Like tests.conftest.finish_runs_with, but the masks are written as the inference
    workers write them (zlib's RLE strategy): bytes unlike the MD's mask for equal pixels."""
    from annotation import storage
    from annotation.models import Image
    from training.models import ModelVersion, TrainingRun
    from training.nets.predict import mask_png

    for run in rnd.training_runs.all():
        mv = ModelVersion.objects.create(
            run=run,
            arch=run.arch,
            encoder=run.encoder,
            config=run.config,
            weights="none.h5",
            data_version="test",
        )
        for image in Image.objects.filter(pk__in=run.target_image_ids):
            pixels = predict(image, run)
            data = mask_png(pixels)
            mask = Mask.objects.create(
                image=image,
                version=services.images.mask_next_version(image_id=image.pk),
                file=storage.store(f"masks/{image.pk}/run{run.pk}.png", data),
                sha256=imaging.sha256_bytes(data),
                area=int(pixels.sum()),
                source=Mask.Source.PREDICTED,
                model_version=mv,
                round=rnd,
            )
            services.candidate_add(round=rnd, image_id=image.pk, mask=mask)
        run.status = TrainingRun.Status.SUCCEEDED
        run.save(update_fields=["status"])
    services.round_advance(round_id=rnd.pk)


def test_identical_candidates_are_shown_once_and_a_pick_records_them_honestly(
    make_image, drawer, admin_user, md, data_user, api
):
    """unet predicts the MD's own mask exactly, unetpp and dla predict nothing: the item shows
    two labels, not four, and nothing tells which holds the MD's drawing."""
    from annotation.models import GroundTruth, Round

    for _ in range(2):
        make_image(manual_by=drawer)
    rnd = services.round_start(
        stage="I",
        started_by=admin_user,
        networks=[("unet", "densenet121"), ("unetpp", "densenet121"), ("dla", "densenet121")],
        folds=2,
        preset="tiny",
    )

    def predict(image, run):
        if run.arch == "unet":
            return imaging.read_mask_png(image.masks.get(source="drawn").file.read())
        return np.zeros((image.height, image.width), dtype=bool)

    _finish_with(rnd, predict)
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.REVIEWING
    item = rnd.items.order_by("id").first()
    body = api(md).get(f"/api/review-items/{item.uuid}/").json()
    assert [c["label"] for c in body["candidates"]] == ["A", "B"]
    assert item.candidates.count() == 4 and item.candidates.filter(label="").count() == 2
    # Each label shows one of the two masks; the served overlays differ.
    served = _served(api(md), item)
    assert served["A"] != served["B"]

    # A pick of the label that stands for the MD's mask and unet's records the MD's mask as
    # ground truth, with unet's kept as merged into it (for admins and exports).
    manual = item.candidates.get(mask__source=Mask.Source.DRAWN)
    assert manual.label in ("A", "B")
    twin = manual.merged.get()
    assert twin.mask.model_version.arch == "unet"
    response = decide(api(md), item.uuid, manual.label)
    assert response.status_code == 201, response.content
    decision = Decision.objects.get(item=item)
    assert decision.candidate == manual
    assert GroundTruth.objects.get(item=item).mask == manual.mask
    empties = item.candidates.exclude(pk__in=[manual.pk, twin.pk])
    assert {c.merged_into_id is None for c in empties} == {True, False}  # one kept, one merged
    stats = selectors.round_statistics(rnd)
    # Neither preferred: counted apart, not as a win of the MD's mask over the machine's.
    assert stats["manual_identical_picked"] == 1
    assert stats["manual_compared"] == 0 and stats["machine_preferred"] == 0
    # An unlabelled (merged) candidate cannot be picked by an empty label.
    other = rnd.items.exclude(pk=item.pk).get()
    assert decide(api(md), other.uuid, "").status_code == 400
    with pytest.raises(DomainError):
        services.decision_create(item=other, reviewer=md, choice="", seconds=1)


# ------------------------------------------------ the Django admin's user editor


def _admin_change(client, user, groups) -> object:
    return client.post(
        f"/django-admin/auth/user/{user.pk}/change/",
        {
            "username": user.username,
            "first_name": "",
            "last_name": "",
            "email": "",
            "is_active": "on",
            "groups": [g.pk for g in groups],
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
        },
    )


def test_the_admin_user_editor_refuses_md_with_admin_or_data(md, api):
    from django.contrib.auth.models import Group

    staff = get_user_model().objects.create_superuser("root", password="root-pass-123456")
    client = api(staff)
    md_group, admin_group = (
        Group.objects.get(name=Role.MD),
        Group.objects.get_or_create(name=Role.ADMIN)[0],
    )
    response = _admin_change(client, md, [md_group, admin_group])
    assert response.status_code == 200  # the form again, with the reason
    assert "the md role cannot be combined with admin" in response.content.decode()
    assert set(md.groups.values_list("name", flat=True)) == {Role.MD}
    # the same editor still saves an allowed change
    response = _admin_change(client, md, [admin_group])
    assert response.status_code == 302, response.content.decode()[:2000]
    assert set(md.groups.values_list("name", flat=True)) == {Role.ADMIN}


def test_groups_added_by_any_path_cannot_mix_md_with_a_sighted_role(md, admin_user):
    from django.contrib.auth.models import Group

    admin_group = Group.objects.get(name=Role.ADMIN)
    data_group = Group.objects.get_or_create(name=Role.DATA)[0]
    # (each in its own savepoint: the refusal rolls back the transaction it happens in)
    with pytest.raises(DomainError, match="cannot be combined with admin"), transaction.atomic():
        md.groups.add(admin_group)
    with pytest.raises(DomainError, match="cannot be combined with data"), transaction.atomic():
        data_group.user_set.add(md)
    with pytest.raises(DomainError, match="cannot be combined"), transaction.atomic():
        Group.objects.get(name=Role.MD).user_set.add(admin_user)
    assert set(md.groups.values_list("name", flat=True)) == {Role.MD}
    assert set(admin_user.groups.values_list("name", flat=True)) == {Role.ADMIN}


# ------------------------------------------------ adjudication is blind


def test_an_admin_breaks_a_tie_blind(reviewing_round, drawer, md, md2, admin_user, api):
    rnd = reviewing_round(images=2, reviewers=2)
    item = rnd.items.order_by("id").first()
    assert decide(api(md), item.uuid, "A").status_code == 201
    assert decide(api(md2), item.uuid, "B").status_code == 201
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.ADJUDICATION
    client = api(admin_user)
    page = client.get(f"/review/{item.uuid}/")
    assert page.status_code == 200
    body = client.get(f"/api/review-items/{item.uuid}/").json()
    assert [c["label"] for c in body["candidates"]] == ["A", "B", "C"]
    secrets = [drawer.username, item.image.name, item.image.sha256]
    for c in item.candidates.select_related("mask__model_version"):
        secrets += [f'"{c.mask_id}"', c.mask.sha256, c.mask.file.name]
    text = page.content.decode() + str(body)
    for word in (*secrets, "drawn", "predicted", "densenet", "unetpp"):
        assert word not in text, f"{word!r} shown to the admin breaking the tie"
    # Where the masks came from stays sealed, in the API and in the Django admin, until decided.
    assert client.get(f"/api/images/{item.image_id}/masks/").status_code == 403
    staff = get_user_model().objects.create_superuser("root", password="root-pass-123456")
    listing = api(staff).get("/django-admin/annotation/mask/").content.decode()
    assert item.image.name not in listing
    response = client.post(
        f"/api/review-items/{item.uuid}/adjudicate/", {"choice": "A"}, format="json"
    )
    assert response.status_code == 201
    masks = client.get(f"/api/images/{item.image_id}/masks/")
    assert masks.status_code == 200
    assert {m["source"] for m in masks.json()} == {"drawn", "predicted"}
    assert item.image.name in api(staff).get("/django-admin/annotation/mask/").content.decode()


# ------------------------------------------------ provenance of images under review


def test_provenance_endpoints_refuse_an_image_under_review_to_every_role(
    reviewing_round, make_image, admin_user, data_user, api
):
    item = reviewing_round(images=2).items.first()
    candidate_mask = item.candidates.first().mask_id
    for user in (admin_user, data_user):
        for path in (
            f"/api/images/{item.image_id}/masks/",
            f"/api/masks/{candidate_mask}/file.png",
        ):
            response = api(user).get(path)
            assert response.status_code == 403, (user, path)
            assert "under blind review" in response.json()["detail"]
        # The image's history page names every mask's author and network.
        client = Client()
        client.force_login(user)
        page = client.get(f"/images/{item.image_id}/history/")
        assert page.status_code == 403, user
        assert "under blind review" in page.content.decode()
    settled = make_image(manual_by=admin_user)
    assert api(data_user).get(f"/api/images/{settled.pk}/masks/").status_code == 200
    client = Client()
    client.force_login(data_user)
    assert client.get(f"/images/{settled.pk}/history/").status_code == 200
    mask = settled.masks.get().pk
    assert api(data_user).get(f"/api/masks/{mask}/file.png").status_code == 200


def test_an_md_cannot_get_the_map_of_an_image_under_review_by_uploading_it_to_the_demo(
    reviewing_round, admin_user, md, api
):
    from annotation.models import Round
    from training.models import ModelVersion, TrainingRun

    item = reviewing_round(images=2).items.select_related("image").first()
    final = Round.objects.create(
        number=90, stage=Round.Stage.FINAL, status=Round.Status.DONE, started_by=admin_user
    )
    run = TrainingRun.objects.create(
        round=final, arch="unet", encoder="densenet121", status=TrainingRun.Status.SUCCEEDED
    )
    ModelVersion.objects.create(
        run=run, arch="unet", encoder="densenet121", weights="none.h5", data_version="t"
    )
    original = item.image.original.read()
    upload = SimpleUploadedFile("cxr.png", original, content_type="image/png")
    response = api(md).post("/api/infer/", {"file": upload}, format="multipart")
    assert response.status_code == 403, response.content
    assert "under blind review" in response.json()["detail"]
    assert selectors.image_under_review_by_content(item.image.sha256)
    assert not selectors.image_under_review_by_content("0" * 64)
