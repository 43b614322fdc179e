"""Blindness, attacked server-side: each test is what an MD (or a role mix) would try to learn
or do that the blind review must not allow, and asserts the clear refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
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
