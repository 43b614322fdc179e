"""Shared fixtures: users per role, phantom images, a round ready for blind review.

Tests run against the real database of the README's test command (PostgreSQL) with media in a
temporary folder.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from annotation import imaging, services
from annotation.models import Image, ImageClass, Mask, Role, Round
from annotation.phantoms import make_phantom, md_drawing
from training.models import ModelVersion, TrainingRun

_seq = itertools.count(1)


@pytest.fixture
def eager_tasks():
    """Runs every task sent in this process at once, errors raised: the workers' reports to
    annotation (sent by task name) are then applied before the worker's call returns."""
    from config.celery import app

    app.loader.import_default_modules()  # registers every app's tasks, as a worker does
    app.conf.update(task_always_eager=True, task_eager_propagates=True)
    yield
    app.conf.update(task_always_eager=False, task_eager_propagates=False)


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.MASKLOOP_WORK_DIR = tmp_path / "work"
    settings.MASKLOOP_CACHE_DIR = tmp_path / "cache"
    return settings.MEDIA_ROOT


@pytest.fixture(autouse=True)
def screening_small_images(settings):
    """The tests' phantoms are 64 px, smaller than any real CXR: screening would hold them all
    out of rounds as too small, and 64 px control phantoms (one template, jittered) lie as
    close as 10 bits apart, which would make which tests see near-duplicates depend on the
    seeds a run hands out. tests/annotation/test_screening.py sets its own thresholds."""
    settings.MASKLOOP_SCREEN_MIN_SIDE = 32
    settings.MASKLOOP_NEAR_DUPLICATE_DISTANCE = 4


def make_user(username: str, *roles: str):
    user = get_user_model().objects.create_user(username=username, password=f"{username}-pass")
    services.user_set_roles(user=user, roles=list(roles))
    return user


@pytest.fixture
def md(db):
    return make_user("md1", Role.MD)


@pytest.fixture
def md2(db):
    return make_user("md2", Role.MD)


@pytest.fixture
def md3(db):
    return make_user("md3", Role.MD)


@pytest.fixture
def drawer(db):
    """An MD who draws the manual masks of `reviewing_round`: an MD never reviews an item holding
    a mask they drew, so the reviewers in tests (md, md2, md3) are other MDs."""
    return make_user("drawer", Role.MD)


@pytest.fixture
def admin_user(db):
    return make_user("boss", Role.ADMIN)


@pytest.fixture
def data_user(db):
    return make_user("analyst", Role.DATA)


@pytest.fixture
def nobody(db):
    return make_user("nobody")


@pytest.fixture
def api():
    def client(user=None) -> APIClient:
        c = APIClient()
        if user is not None:
            c.force_login(user)
        return c

    return client


@pytest.fixture
def make_image(db):
    """Imports a phantom CXR through the real import service."""

    def make(*, covid: bool = True, patient: str = "", size: int = 64, manual_by=None) -> Image:
        n = next(_seq)
        phantom = make_phantom(n, size=size, covid=covid)
        image = services.image_create(
            data=imaging.encode_png(phantom.image),
            name=f"phantom_{n:04d}.png",
            source="tests",
            image_class=ImageClass.COVID if covid else ImageClass.NORMAL,
            patient_id=patient or f"P{n}",
        )
        if manual_by is not None:
            drawing = md_drawing(phantom.infection, n)
            services.mask_draw(image=image, author=manual_by, data=imaging.encode_mask(drawing))
        image.refresh_from_db()
        image.truth = phantom.infection  # type: ignore[attr-defined]
        return image

    return make


def finish_runs_with(rnd: Round, predict) -> None:
    """Plays the part of the trained networks: records a model version per run and adds
    `predict(image, run)` as its candidate for every target, through the same services the
    inference task uses. Review logic is tested on its own; the real networks run in e2e."""
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
            mask = services.mask_create(
                image=image,
                mask=predict(image, run),
                source=Mask.Source.PREDICTED,
                model_version=mv,
                round=rnd,
            )
            services.candidate_add(round=rnd, image_id=image.pk, mask=mask)
        run.status = TrainingRun.Status.SUCCEEDED
        run.save(update_fields=["status"])
    services.round_advance(round_id=rnd.pk)


def shifted(image: Image, run: TrainingRun) -> np.ndarray:
    truth = getattr(image, "truth", None)
    if truth is None:
        truth = np.zeros((image.height, image.width), dtype=bool)
        truth[10:30, 10:30] = True
    return np.roll(truth, run.pk % 5, axis=1)


@pytest.fixture
def reviewing_round(make_image, drawer, admin_user):
    """A Stage I round with 4 images (manual masks by `drawer`), 2 networks × 2 folds, in
    review."""

    def make(*, images: int = 4, reviewers: int = 1, networks=None) -> Round:
        for _ in range(images):
            make_image(manual_by=drawer)
        rnd = services.round_start(
            stage=Round.Stage.STAGE_I,
            started_by=admin_user,
            networks=networks or [("unet", "densenet121"), ("unetpp", "densenet121")],
            folds=2,
            preset="tiny",
            reviewers_per_item=reviewers,
        )
        finish_runs_with(rnd, shifted)
        rnd.refresh_from_db()
        return rnd

    return make
