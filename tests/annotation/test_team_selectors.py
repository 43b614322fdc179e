"""Each MD's progress and agreement on the admins' dashboard (annotation/selectors/team.py),
checked against figures computed by hand on a small world: three MDs deciding the same items
through the real review services, an admin breaking a tie, a redraw, a skip and an earlier
round."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotation import imaging, selectors, services
from annotation.models import Candidate, Decision, ReviewItem, Round
from tests.annotation.review_world import open_round

pytestmark = pytest.mark.django_db


def pick(item, md, choice):
    services.decision_create(item=item, reviewer=md, choice=choice, seconds=3.0)


@pytest.fixture
def team(make_image):
    """Round 1, three reviewers per item, MDs a, b, c:

    item 1: a A, b A, c B      → accepted A
    item 2: a, b, c none       → redraw, redrawn by a
    item 3: a A, b B, c C      → tie, the admin picks B → accepted B
    item 4: a C, b C           → still open (c skipped it)
    and in another round (number 2, done), a and b picked the same candidate of one item.
    `a` also drew a first mask of another image.
    """
    world = open_round(items=4, mds=3, reviewers=3)
    a, b, c = world.mds
    one, two, three, four = world.items
    for md, choice in ((a, "A"), (b, "A"), (c, "B")):
        pick(one, md, choice)
    for md in (a, b, c):
        pick(two, md, "none")
    for md, choice in ((a, "A"), (b, "B"), (c, "C")):
        pick(three, md, choice)
    services.decision_adjudicate(item=three, admin=world.admins[0], choice="B")
    pick(four, a, "C")
    pick(four, b, "C")
    services.item_skip(item=four, reviewer=c)
    two.image.refresh_from_db()
    services.mask_draw(
        image=two.image, author=a, data=imaging.encode_mask(np.ones((64, 64), dtype=bool))
    )
    make_image(manual_by=a)
    # Another round's item, decided alike by a and b (set down directly: history).
    other = Round.objects.create(
        number=2, stage=Round.Stage.STAGE_II, status=Round.Status.DONE, started_by=world.admins[0]
    )
    item = ReviewItem.objects.create(round=other, image=four.image, status=ReviewItem.Status.OPEN)
    candidate = Candidate.objects.create(item=item, mask=four.candidates.first().mask, label="A")
    for md in (a, b):
        Decision.objects.create(item=item, reviewer=md, candidate=candidate, seconds=6.0)
    return world


def test_each_md_row_matches_the_hand_counts(team):
    a, b, c = team.mds
    report = selectors.round_team(team.round)
    rows = {r.username: r for r in report.mds}
    ra, rb, rc = rows[a.username], rows[b.username], rows[c.username]
    assert (ra.reviewed_round, ra.reviewed_total) == (4, 5)
    assert (rb.reviewed_round, rb.reviewed_total) == (4, 5)
    assert (rc.reviewed_round, rc.reviewed_total) == (3, 3)
    # a redrew item 2 (not counted as a drawing) and drew one first mask, in no round.
    assert (ra.redrawn_round, ra.redrawn_total) == (1, 1)
    assert (ra.drawn_round, ra.drawn_total) == (0, 1)
    assert (rb.redrawn_total, rb.drawn_total) == (0, 0)
    assert (rc.skipped_round, rc.skipped_total) == (1, 1)
    # 4 picks of 3 s each in round 1: 1200 an hour; overall 5 picks in 18 s: 1000 an hour.
    assert ra.per_hour_round == pytest.approx(1200)
    assert ra.per_hour_total == pytest.approx(1000)
    assert ra.last_active is not None


def test_agreement_with_the_outcome_counts_settled_shared_items(team):
    a, b, c = team.mds
    rows = {r.username: r for r in selectors.round_team(team.round).mds}
    # Settled items 1 (A), 2 (none) and 3 (B, the admin's): a matches 1 and 2, b all three,
    # c only 2. Item 4 is open: it counts nowhere here.
    assert (rows[a.username].matched_round, rows[a.username].shared_round) == (2, 3)
    assert (rows[b.username].matched_round, rows[b.username].shared_round) == (3, 3)
    assert (rows[c.username].matched_round, rows[c.username].shared_round) == (1, 3)
    assert rows[c.username].agreement_round == pytest.approx(1 / 3)


def test_pairwise_agreement_and_kappa_match_the_hand_computed_values(team):
    a, b, c = team.mds
    report = selectors.round_team(team.round)
    pairs = {frozenset((p.first, p.second)): p for p in report.pairs_round}
    ab = pairs[frozenset((a.username, b.username))]
    # Items 1–4: (A, A), (none, none), (A, B), (C, C): 3 of 4 alike; p_e = 1/4 → κ = 2/3.
    assert (ab.shared, ab.agreed) == (4, 3)
    assert ab.kappa == pytest.approx(2 / 3)
    # a, c on items 1–3: (A, B), (none, none), (A, C): p_o = 1/3, p_e = 1/9 → κ = 1/4.
    ac = pairs[frozenset((a.username, c.username))]
    assert (ac.shared, ac.agreed) == (3, 1)
    assert ac.kappa == pytest.approx(0.25)
    # b, c: (A, B), (none, none), (B, C): p_o = 1/3, p_e = 2/9 → κ = 1/7.
    bc = pairs[frozenset((b.username, c.username))]
    assert bc.kappa == pytest.approx(1 / 7)
    # Over every round a and b also share the earlier round's item, picked alike: 4 of 5.
    total = {frozenset((p.first, p.second)): p for p in report.pairs_total}
    assert (
        total[frozenset((a.username, b.username))].shared,
        total[frozenset((a.username, b.username))].agreed,
    ) == (5, 4)


def test_an_undone_pick_counts_nowhere(team):
    a = team.mds[0]
    Decision.objects.filter(reviewer=a, item__round__number=2).update(
        revoked_at="2020-01-01T00:00Z"
    )
    rows = {r.username: r for r in selectors.round_team(team.round).mds}
    assert rows[a.username].reviewed_total == 4
    pairs = selectors.round_team(team.round).pairs_total
    assert max(p.shared for p in pairs) == 4


def test_the_report_takes_a_fixed_number_of_queries_whatever_the_size(team):
    with CaptureQueriesContext(connection) as before:
        selectors.round_team(team.round)
    # Three more shared items in the other round, each decided by all three MDs.
    other = Round.objects.get(number=2)
    for source in team.items[:3]:
        item = ReviewItem.objects.create(round=other, image=source.image)
        candidate = Candidate.objects.create(
            item=item, mask=source.candidates.first().mask, label="A"
        )
        Decision.objects.bulk_create(
            [Decision(item=item, reviewer=md, candidate=candidate, seconds=1) for md in team.mds]
        )
    with CaptureQueriesContext(connection) as after:
        report = selectors.round_team(team.round)
    assert len(after) == len(before) <= 8
    assert max(p.shared for p in report.pairs_total) == 8


def test_the_api_gives_admins_the_table_and_nobody_else(team, api):
    admin = team.admins[0]
    body = api(admin).get(f"/api/rounds/{team.round.number}/team/").json()
    assert {m["username"] for m in body["mds"]} >= {md.username for md in team.mds}
    assert all("kappa" in p for p in body["pairs_round"])
    assert api(team.mds[0]).get(f"/api/rounds/{team.round.number}/team/").status_code == 403
