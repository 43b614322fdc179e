"""Who may open what: every page and API endpoint × every role, from one policy table.

Pages: anonymous users are sent to sign-in, signed-in users without the role get 403, users
with the role get the page (or a redirect the view makes on purpose, e.g. /review/next/ with
nothing left sends the MD to the queue).
APIs: anonymous → 401/403, wrong role → 403, right role → anything but 401/403 (an empty POST
may well be a 400: that proves the request got past the permission check).

The table must list every URL route (except django-admin and the sign-in pages, tested below
on their own); `test_the_table_covers_every_route` fails when a new route is not added here.
"""

from __future__ import annotations

import uuid

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, resolve

from annotation import services, storage
from annotation.models import Export, ImportJob, ReplayRun, ReviewItem

pytestmark = pytest.mark.django_db

ANON, NOBODY, MD, ADMIN, DATA = "anonymous", "no-role", "md", "admin", "data"
ROLES = (ANON, NOBODY, MD, ADMIN, DATA)
ANY_ROLE = frozenset({MD, ADMIN, DATA})
SIGNED_IN = frozenset({NOBODY, MD, ADMIN, DATA})


def only(*roles: str) -> frozenset[str]:
    return frozenset(roles)


# {image} an image that needs a first mask      {mask}   a mask (drawn by an MD)
# {round} a round in blind review               {item}   an open review item of that round
# {export} a finished export
# {replay} a replay run with its report written
POLICY: list[tuple[str, str, frozenset[str]]] = [
    # ---------------------------------------------------------------- pages
    ("GET", "/", ANY_ROLE),
    ("GET", "/queue/", only(MD)),
    ("GET", "/draw/{image}/", only(MD)),
    ("GET", "/draw/{image}/saved/", only(MD)),
    ("GET", "/review/next/", only(MD)),
    ("GET", "/review/{item}/", only(MD, ADMIN)),
    ("GET", "/rounds/", only(ADMIN)),
    ("POST", "/rounds/", only(ADMIN)),
    ("GET", "/rounds/{round}/", only(ADMIN)),
    ("POST", "/rounds/{round}/", only(ADMIN)),
    ("GET", "/rounds/pretrain/", only(ADMIN)),
    ("POST", "/rounds/pretrain/", only(ADMIN)),
    ("GET", "/exports/", only(DATA)),
    ("POST", "/exports/", only(DATA)),
    ("GET", "/screening/", only(ADMIN)),
    ("POST", "/screening/", only(ADMIN)),
    ("GET", "/pacs/", only(ADMIN)),
    ("POST", "/pacs/", only(ADMIN)),
    ("GET", "/images/{image}/history/", only(ADMIN, DATA)),  # provenance
    ("GET", "/replay/", only(ADMIN)),
    ("GET", "/replay/{replay}/", only(ADMIN)),
    ("GET", "/replay/{replay}/report.md", only(ADMIN)),
    # ---------------------------------------------------------------- API: images and masks
    ("GET", "/api/images/", ANY_ROLE),
    ("POST", "/api/images/upload/", only(ADMIN)),
    ("GET", "/api/images/{image}/", ANY_ROLE),
    ("GET", "/api/images/{image}/display.png", ANY_ROLE),
    ("GET", "/api/images/{image}/masks/", only(ADMIN, DATA)),  # provenance
    ("POST", "/api/images/{image}/masks/", only(MD)),  # drawing
    ("GET", "/api/masks/{mask}/file.png", only(ADMIN, DATA)),
    ("GET", "/api/images/{image}/notes/", ANY_ROLE),  # an MD reads only their own
    ("POST", "/api/images/{image}/notes/", only(MD, ADMIN)),
    # ---------------------------------------------------------------- API: rounds
    ("GET", "/api/rounds/", only(ADMIN)),
    ("POST", "/api/rounds/", only(ADMIN)),
    ("GET", "/api/rounds/{round}/", only(ADMIN)),
    ("POST", "/api/rounds/{round}/cancel/", only(ADMIN)),
    ("GET", "/api/rounds/{round}/team/", only(ADMIN)),  # names who picked what
    # ---------------------------------------------------------------- API: blind review
    ("GET", "/api/review-items/next/", only(MD)),
    ("GET", "/api/review-items/{item}/", only(MD, ADMIN)),
    ("GET", "/api/review-items/{item}/image.png", only(MD, ADMIN)),
    ("GET", "/api/review-items/{item}/candidates/A.png", only(MD, ADMIN)),
    ("POST", "/api/review-items/{item}/decision/", only(MD)),
    ("POST", "/api/review-items/{item}/lease/", only(MD)),
    ("DELETE", "/api/review-items/{item}/lease/", only(MD)),
    ("POST", "/api/review-items/{item}/skip/", only(MD)),
    ("POST", "/api/review-items/{item}/undo/", only(MD)),
    ("POST", "/api/review-items/{item}/adjudicate/", only(ADMIN)),
    ("GET", "/api/review-items/{item}/notes/", ANY_ROLE),
    ("POST", "/api/review-items/{item}/notes/", only(MD, ADMIN)),
    # ---------------------------------------------------------------- API: exports
    ("GET", "/api/exports/", only(DATA)),
    ("POST", "/api/exports/", only(DATA)),
    ("GET", "/api/exports/{export}/", only(DATA)),
    ("GET", "/api/exports/{export}/download/", only(DATA)),
    ("GET", "/api/exports/preview/", only(DATA)),
    # ---------------------------------------------------------------- infection maps and demo
    ("GET", "/maps/", ANY_ROLE),
    ("GET", "/images/{image}/map/", ANY_ROLE),
    ("GET", "/demo/", ANY_ROLE),
    ("POST", "/api/infer/", ANY_ROLE),
    ("GET", "/api/images/{image}/infection-map/", ANY_ROLE),
    # ---------------------------------------------------------------- API: schema
    ("GET", "/api/schema/", SIGNED_IN),
    # ---------------------------------------------------------------- web import (helper import)
    ("GET", "/imports/", only(ADMIN)),
    ("GET", "/imports/{import_job}/", only(ADMIN)),
    ("GET", "/api/imports/", only(ADMIN)),
    ("POST", "/api/imports/", only(ADMIN)),
    ("GET", "/api/imports/{import_job}/", only(ADMIN)),
    # ---------------------------------------------------------------- draw: machine starting mask
    ("POST", "/api/images/{image}/starting-mask/", only(MD)),
]


def _cases():
    for method, url, allowed in POLICY:
        for role in ROLES:
            yield pytest.param(method, url, allowed, role, id=f"{method} {url} as {role}")


class World(dict):
    """The real objects that the URL placeholders name, each made on first use."""

    def __init__(self, *, make_image, reviewing_round, md, data_user):
        super().__init__()
        self._make_image = make_image
        self._reviewing_round = reviewing_round
        self._md = md
        self._data_user = data_user
        self._round = None

    def __missing__(self, key: str):
        value = getattr(self, f"_new_{key}")()
        self[key] = value
        return value

    def _the_round(self):
        if self._round is None:
            self._round = self._reviewing_round(images=2)
        return self._round

    def _new_image(self):
        return self._make_image().pk

    def _new_mask(self):
        return self._make_image(manual_by=self._md).masks.get().pk

    def _new_round(self):
        return self._the_round().number

    def _new_item(self):
        item = self._the_round().items.first()
        assert item.status == ReviewItem.Status.OPEN
        return item.uuid

    def _new_export(self):
        name = storage.store("exports/test.zip", b"PK\x05\x06" + b"\0" * 18)  # an empty zip
        export = Export.objects.create(
            requested_by=self._data_user,
            status=Export.Status.DONE,
            file=name,
            size=22,
            progress=1.0,
        )
        return export.uuid

    def _new_import_job(self):
        job = ImportJob.objects.create(
            requested_by=self._data_user, name="phantoms.zip", source="phantoms"
        )
        return job.uuid

    def _new_replay(self):
        name = storage.store("replay/test/report.md", b"# Replay\n")
        run = ReplayRun.objects.create(
            dataset="phantoms",
            status=ReplayRun.Status.DONE,
            progress={"files": {"report.md": name}},
        )
        return run.uuid


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """A role matrix signs in hundreds of users; the default hasher is slow on purpose."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world(make_image, reviewing_round, md, data_user):
    return World(make_image=make_image, reviewing_round=reviewing_round, md=md, data_user=data_user)


@pytest.fixture
def client_as(api, request):
    fixtures = {NOBODY: "nobody", MD: "md", ADMIN: "admin_user", DATA: "data_user"}

    def client(role: str):
        return api(request.getfixturevalue(fixtures[role]) if role != ANON else None)

    return client


def _is_login_redirect(response) -> bool:
    return response.status_code == 302 and response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize(("method", "url", "allowed", "role"), list(_cases()))
def test_policy(method, url, allowed, role, world, client_as):
    path = url.format_map(world)
    response = getattr(client_as(role), method.lower())(path)
    response.close()
    status = response.status_code
    is_api = path.startswith("/api/")

    if role == ANON and role not in allowed:
        if is_api:
            assert status in (401, 403), f"anonymous {method} {path} gave {status}"
        else:
            assert _is_login_redirect(response), f"anonymous {method} {path} gave {status}"
            assert f"next={path}" in response["Location"]
    elif role not in allowed:
        assert status == 403, f"{role} {method} {path} gave {status}, expected 403"
    else:
        assert status not in (401, 403), f"{role} {method} {path} was refused ({status})"
        assert status < 500
        assert not _is_login_redirect(response), f"{role} was sent to sign in by {path}"
        if not is_api:
            assert status in (200, 302), f"{role} {method} {path} gave {status}"


# ---------------------------------------------------------------- the table itself


def _routes(patterns, prefix: str = "") -> set[str]:
    routes: set[str] = set()
    for p in patterns:
        if isinstance(p, URLResolver):
            routes |= _routes(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            routes.add(prefix + str(p.pattern))
    return routes


def test_the_table_covers_every_route():
    every = {
        r
        for r in _routes(get_resolver().url_patterns)
        if not r.startswith(("django-admin/", "accounts/"))
    }
    placeholders = {"image": 1, "mask": 1, "round": 1, "item": uuid.uuid4(), "export": uuid.uuid4()}
    placeholders["import_job"] = uuid.uuid4()
    placeholders["replay"] = uuid.uuid4()
    covered = {resolve(url.format(**placeholders)).route for _, url, _ in POLICY}
    assert every - covered == set(), "routes missing from POLICY"


def test_the_table_keeps_provenance_from_mds_and_decisions_from_admins():
    """The rules that blind review rests on, stated once more so that an edit of the table
    that breaks them fails here with a name that says why."""
    allowed = {(method, url): roles for method, url, roles in POLICY}
    for method, url in [
        ("GET", "/api/images/{image}/masks/"),
        ("GET", "/api/masks/{mask}/file.png"),
        ("GET", "/api/rounds/"),
        ("GET", "/api/rounds/{round}/"),
        ("GET", "/api/rounds/{round}/team/"),
        ("GET", "/rounds/"),
        ("GET", "/rounds/{round}/"),
        ("GET", "/images/{image}/history/"),
    ]:
        assert MD not in allowed[method, url], f"MDs must not reach {url}"
    for method, url in [
        ("GET", "/api/review-items/{item}/"),
        ("GET", "/api/review-items/{item}/candidates/A.png"),
        ("GET", "/api/review-items/next/"),
        ("GET", "/review/{item}/"),
    ]:
        assert DATA not in allowed[method, url], f"the data team must not reach {url}"
    assert ADMIN in allowed["GET", "/api/review-items/{item}/"]
    assert ADMIN not in allowed["POST", "/api/review-items/{item}/decision/"]
    assert allowed["POST", "/api/review-items/{item}/adjudicate/"] == {ADMIN}


# ---------------------------------------------------------------- behaviour behind the roles


def test_admin_adjudicates_a_tie_but_cannot_cast_a_reviewers_decision(
    reviewing_round, md, md2, admin_user, api
):
    item = reviewing_round(images=2, reviewers=2).items.first()
    services.decision_create(item=item, reviewer=md, choice="A", seconds=1)
    services.decision_create(item=item, reviewer=md2, choice="B", seconds=1)
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.ADJUDICATION
    admin = api(admin_user)

    page = admin.get(f"/review/{item.uuid}/")
    assert page.status_code == 200
    body = admin.get(f"/api/review-items/{item.uuid}/").json()
    assert body["decision_url"] == f"/api/review-items/{item.uuid}/adjudicate/"

    refused = admin.post(f"/api/review-items/{item.uuid}/decision/", {"choice": "A"}, format="json")
    assert refused.status_code == 403
    done = admin.post(f"/api/review-items/{item.uuid}/adjudicate/", {"choice": "A"}, format="json")
    assert done.status_code == 201
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.ACCEPTED


def test_an_md_cannot_adjudicate_and_is_sent_back_from_a_tied_item(
    reviewing_round, md, md2, md3, api
):
    item = reviewing_round(images=2, reviewers=2).items.first()
    services.decision_create(item=item, reviewer=md, choice="A", seconds=1)
    services.decision_create(item=item, reviewer=md2, choice="none", seconds=1)
    client = api(md3)
    assert (
        client.post(
            f"/api/review-items/{item.uuid}/adjudicate/", {"choice": "A"}, format="json"
        ).status_code
        == 403
    )
    page = client.get(f"/review/{item.uuid}/")
    assert page.status_code == 302 and page["Location"] == "/queue/"
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.ADJUDICATION


def test_an_md_with_nothing_to_review_is_sent_to_the_queue(md, api):
    response = api(md).get("/review/next/")
    assert response.status_code == 302 and response["Location"] == "/queue/"


def test_home_sends_each_role_to_its_own_page(md, admin_user, data_user, nobody, api):
    assert api(md).get("/")["Location"] == "/queue/"
    assert api(admin_user).get("/")["Location"] == "/rounds/"
    assert api(data_user).get("/")["Location"] == "/exports/"
    assert api(nobody).get("/").status_code == 403


@pytest.mark.parametrize("role", ROLES)
def test_the_sign_in_page_is_open_to_everyone(role, client_as):
    assert client_as(role).get("/accounts/login/").status_code == 200


@pytest.mark.parametrize("role", ROLES)
def test_signing_out_is_a_post_that_ends_at_sign_in(role, client_as):
    client = client_as(role)
    assert client.get("/accounts/logout/").status_code == 405  # no sign-out by a mere link
    response = client.post("/accounts/logout/")
    assert _is_login_redirect(response)
    assert _is_login_redirect(client.get("/queue/"))
