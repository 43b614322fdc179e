"""Blindness, attacked server-side: each test is what an MD (or a role mix) would try to learn
or do that the blind review must not allow, and asserts the clear refusal."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from annotation import selectors, services
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
