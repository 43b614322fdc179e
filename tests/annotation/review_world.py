"""A round open for blind review, made with bulk inserts: many items and many MDs in a fraction
of a second, for the hand-out and concurrency tests (tests/annotation/test_leases.py,
test_concurrency.py).

The rows are those `round_advance` leaves behind (items open, candidates labelled, images in
review). One phantom CXR and one mask file are stored and shared by every row, so the review
page and the PNG endpoints serve real images.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from annotation import imaging, storage
from annotation.models import Candidate, Image, ImageClass, Mask, ReviewItem, Role, Round
from annotation.phantoms import make_phantom

_seq = itertools.count(1)


@dataclass
class World:
    round: Round
    items: list[ReviewItem]  # in hand-out order
    mds: list[Any]
    admins: list[Any]


def _users(prefix: str, n: int, role: str) -> list[Any]:
    User = get_user_model()
    users = User.objects.bulk_create(
        [User(username=f"{prefix}{next(_seq)}", password="!") for _ in range(n)]
    )
    Group.objects.get_or_create(name=role)[0].user_set.add(*users)
    return users


def open_round(
    *, items: int, mds: int, reviewers: int = 1, admins: int = 1, candidates: int = 3
) -> World:
    """Round 1 (Stage II) in review with `items` open items of `candidates` predicted masks."""
    admin_users = _users("boss", admins, Role.ADMIN)
    rnd = Round.objects.create(
        number=1,
        stage=Round.Stage.STAGE_II,
        status=Round.Status.REVIEWING,
        started_by=admin_users[0],
        reviewers_per_item=reviewers,
    )
    n = next(_seq)
    phantom = make_phantom(n, size=64)
    display = storage.store(f"display/w{n}.png", imaging.encode_png(phantom.image))
    mask_file = storage.store(f"masks/w{n}.png", imaging.encode_mask(phantom.infection))
    images = Image.objects.bulk_create(
        [
            Image(
                name=f"w{n}_{i}.png",
                original=display,
                display=display,
                sha256=f"{n:032x}{i:032x}",
                width=64,
                height=64,
                source="tests",
                image_class=ImageClass.COVID,
                patient_id=f"P{i}",
                status=Image.Status.IN_REVIEW,
            )
            for i in range(items)
        ]
    )
    masks = Mask.objects.bulk_create(
        [
            Mask(
                image=img,
                version=c + 1,
                file=mask_file,
                sha256=f"{img.pk:032x}{c:032x}",
                area=100 + c,
                source=Mask.Source.PREDICTED,
                round=rnd,
            )
            for img in images
            for c in range(candidates)
        ]
    )
    open_items = ReviewItem.objects.bulk_create(
        [ReviewItem(round=rnd, image=img, status=ReviewItem.Status.OPEN) for img in images]
    )
    Candidate.objects.bulk_create(
        [
            Candidate(item=item, mask=masks[k * candidates + c], label="ABCDEFGH"[c])
            for k, item in enumerate(open_items)
            for c in range(candidates)
        ]
    )
    return World(
        round=rnd,
        items=sorted(open_items, key=lambda i: i.pk),
        mds=_users("md", mds, Role.MD),
        admins=admin_users,
    )
