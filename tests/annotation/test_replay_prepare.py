"""Preparing a replay (masks hidden, known masks kept aside), its settings, and its pages."""

from __future__ import annotations

import pytest

from annotation import storage
from annotation.demo import demo_dataset_write
from annotation.errors import DomainError
from annotation.ingest import ingest_folder
from annotation.models import Image, ImageClass, Mask, ReplayRun, ReplayTruth, Round
from annotation.replay import sim
from annotation.replay.services import ReplayConfig, Simulation, _Runner, replay_prepare

pytestmark = pytest.mark.django_db


@pytest.fixture
def phantoms(tmp_path):
    demo_dataset_write(tmp_path / "cxr", n_covid=4, n_control=2, size=64, masks=True)
    return tmp_path / "cxr"


def test_ingest_can_hide_the_masks(phantoms):
    report = ingest_folder(phantoms, hide_masks=True)
    assert len(report.imported) == 6
    assert not Mask.objects.filter(source=Mask.Source.IMPORTED).exists()
    assert Image.objects.filter(image_class=ImageClass.COVID, status="unannotated").count() == 4


def test_ingest_imports_the_csv_masks_by_default(phantoms):
    ingest_folder(phantoms)
    assert Mask.objects.filter(source=Mask.Source.IMPORTED).count() == 4


def test_prepare_keeps_the_known_masks_aside(phantoms):
    run = replay_prepare(dataset=phantoms, config=ReplayConfig(seed=4))
    assert run.status == ReplayRun.Status.RUNNING and run.seed == 4
    assert run.config["seed"] == 4 and run.config["reviewers_per_item"] == 2
    assert ReplayTruth.objects.filter(run=run).count() == 4
    assert not Mask.objects.exclude(source=Mask.Source.CONTROL).exists()
    simulation = Simulation(run)
    for truth in ReplayTruth.objects.filter(run=run):
        known = simulation.truth(truth.image_id)
        assert known.sum() == truth.area > 0
        drawing = simulation.drawing(truth.image_id)
        assert (drawing == simulation.drawing(truth.image_id)).all()
        assert 0 < sim.dice(drawing, known) < 1
    assert storage.exists(ReplayTruth.objects.first().file)


def test_prepare_refuses_a_database_holding_images(phantoms):
    ingest_folder(phantoms)
    with pytest.raises(DomainError, match="database of its own"):
        replay_prepare(dataset=phantoms, config=ReplayConfig())


def test_prepare_refuses_covid_images_without_masks(tmp_path):
    demo_dataset_write(tmp_path / "plain", n_covid=3, n_control=1, size=64)  # no masks
    with pytest.raises(DomainError, match="every COVID-19 image's mask; 3 have none"):
        replay_prepare(dataset=tmp_path / "plain", config=ReplayConfig())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mds": 2, "reviewers_per_item": 2}, "at least 3 simulated MDs"),
        ({"folds": 1}, "at least 2 folds"),
        ({"stage1_fraction": 0}, "Stage I fraction"),
        ({"none_below": 1.5}, "none threshold"),
        ({"boundary_px": -1}, "0 or more"),
        ({"order": "random"}, "not available; choose queue, disagreement"),
        ({"start_weights": "imagenet"}, "Keras weights file"),
        ({"start_weights": "pretrain", "preset": "paper-ish"}, "no pretraining preset"),
        ({"lung_filter": True, "lung_margin": 30}, "from 0 to 25"),
        ({"lung_margin": 3}, "needs the lung filter"),
        ({"pretrain_epochs": 2}, "with start_weights 'pretrain'"),
    ],
)
def test_config_refuses_bad_settings_in_words(changes, message):
    with pytest.raises(DomainError, match=message):
        ReplayConfig(**changes)


def test_config_round_trips_and_names_unknown_settings():
    config = ReplayConfig(seed=9, overrides={"epochs": 2})
    assert ReplayConfig.from_dict(config.to_dict()) == config
    with pytest.raises(DomainError, match="unknown replay setting"):
        ReplayConfig.from_dict({"seeed": 1})


def test_the_replay_page_shows_a_report(api, admin_user):
    share = {"value": 0.5, "low": 0.2, "high": 0.8, "k": 2, "n": 4}
    mean = {"mean": 0.61, "low": 0.5, "high": 0.7, "n": 4}
    total = {
        "covid_images": 4,
        "with_ground_truth": 4,
        "controls": 2,
        "dice_accepted": mean,
        "dice_manual": mean,
        "dice_manual_all": mean,
        "hand_drawn": share,
        "machine_preferred": share,
        "redraws": share,
        "picks": 8,
        "adjudications": 1,
        "picks_per_image": 2.0,
        "drawings": 3,
        "md_minutes": 8.0,
        "md_minutes_all_by_hand": 8.0,
        "md_time_saved": 0.0,
    }
    run = ReplayRun.objects.create(
        dataset="phantoms",
        status=ReplayRun.Status.DONE,
        config=ReplayConfig().to_dict(),
        report={"total": total, "rounds": [], "final_networks": []},
    )
    page = api(admin_user).get(f"/replay/{run.uuid}/").content.decode()
    assert "Hand-drawn share" in page and "50% (2/4; 20%–80%)" in page
    assert "0.610 [0.500, 0.700] (n=4)" in page
    listing = api(admin_user).get("/replay/").content.decode()
    assert f"/replay/{run.uuid}/" in listing and "2 / 4" in listing


def test_the_options_reach_every_round_through_round_start(phantoms):
    """--order, --start-weights FILE and --lung-filter become the rounds' own settings: the
    review order and lung filter in Stage I / II, the weights file in every round."""
    config = ReplayConfig(
        seed=3,
        order="disagreement",
        start_weights="/hospital/chexnet.h5",
        lung_filter=True,
        lung_margin=3.0,
        stage1_fraction=0.5,
    )
    assert ReplayConfig.from_dict(config.to_dict()) == config
    run = replay_prepare(dataset=phantoms, config=config)
    runner = _Runner(run, config, lambda _: None, 0.0)
    for image in Image.objects.filter(image_class=ImageClass.COVID).order_by("pk")[:2]:
        runner._draw(image)
    stage1 = runner._start(Round.Stage.STAGE_I, config.stage1_networks)
    assert stage1 is not None
    assert stage1.config["order"] == "disagreement"
    assert stage1.config["lung_filter"] == {"margin_percent": 3.0}
    assert stage1.config["start_weights"] == {"file": "/hospital/chexnet.h5", "local": True}
    assert stage1.config["train"]["weights"] == "/hospital/chexnet.h5"
    run.refresh_from_db()
    assert run.progress["rounds"] == [stage1.pk]
    options = runner._options(Round.Stage.FINAL)
    assert options == {"weights_file": "/hospital/chexnet.h5"}  # no order or filter in a final


def test_the_defaults_start_rounds_as_before(phantoms):
    config = ReplayConfig(seed=3, stage1_fraction=0.5)
    run = replay_prepare(dataset=phantoms, config=config)
    runner = _Runner(run, config, lambda _: None, 0.0)
    for image in Image.objects.filter(image_class=ImageClass.COVID).order_by("pk")[:2]:
        runner._draw(image)
    rnd = runner._start(Round.Stage.STAGE_I, config.stage1_networks)
    assert rnd is not None
    assert rnd.config["order"] == "created"
    assert rnd.config["lung_filter"] is None and rnd.config["start_weights"] is None
