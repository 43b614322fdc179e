"""The Django-free CLIs (``training.cli``, ``inference.cli``) and the folder reader, on
synthetic phantoms.

One small sweep (tiny preset at 2 epochs, 2 folds, U-Net DenseNet-121, not frozen) is trained
once for the module; predict and evaluate reuse its weights.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import training.nets  # noqa: F401  (sets the environment before TensorFlow loads)
from annotation.phantoms import make_phantom
from inference.cli import main as inference_main
from training.cli import ProgressBar, build_parser, main
from training.nets.layouts import read_dataset

PHANTOM = 64
N_COVID = 6
N_NORMAL = 6
# The tiny preset's 30 epochs would train for the tables' plumbing alone: no assertion here
# reads how well the networks learned, only what the sweep writes.
SWEEP_EPOCHS = 2


def save_gray(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values).save(path)


def covid_qu_ex(root: Path) -> Path:
    """12 phantoms as COVID-QU-Ex lays them out: <split>/<class>/{images, infection masks, ...}."""
    for i in range(N_COVID + N_NORMAL):
        covid = i < N_COVID
        cls = "COVID-19" if covid else "Normal"
        name = f"{'covid' if covid else 'normal'}_{i}.png"
        ph = make_phantom(100 + i, size=PHANTOM, covid=covid)
        base = root / "Train" / cls
        save_gray(base / "images" / name, ph.image)
        save_gray(base / "infection masks" / name, ph.infection.astype(np.uint8) * 255)
        save_gray(base / "lung masks" / name, ph.lungs.astype(np.uint8) * 255)
    return root


def run_cli(*argv: str, entry=main) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = entry([str(a) for a in argv])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return covid_qu_ex(tmp_path_factory.mktemp("covid-qu-ex"))


@pytest.fixture(scope="module")
def sweep(data_root, tmp_path_factory):
    import tensorflow as tf

    out = tmp_path_factory.mktemp("sweep")
    code, stdout = run_cli(
        "sweep",
        "--data",
        data_root,
        "--preset",
        "tiny",
        "--epochs",
        SWEEP_EPOCHS,
        "--folds",
        2,
        "--archs",
        "unet",
        "--encoders",
        "densenet121",
        "--frozen",
        "no",
        "--out",
        out,
        "--keep-weights",
    )
    tf.keras.backend.clear_session()
    return {"code": code, "stdout": stdout, "out": out}


# -- loader ------------------------------------------------------------------------------------


def test_the_reader_reads_the_covid_qu_ex_layout(data_root):
    data = read_dataset(data_root)

    assert data.layout == "covid-qu-ex"
    assert len(data) == N_COVID + N_NORMAL
    assert sum(data.covid_flags) == N_COVID
    assert set(data.classes) == {"COVID-19", "Normal"}
    assert all(s.lung is not None and s.annotated for s in data.samples)
    # Controls' infection masks are empty by definition: only COVID-19 masks are read.
    assert all((s.mask is not None) == s.covid for s in data.samples)
    assert all(s.mask.name == s.image.name for s in data.samples if s.covid)


def test_qata_masks_match_by_prefix_and_unmasked_images_are_not_annotated(tmp_path):
    for i in range(3):
        ph = make_phantom(i, size=64, covid=True)
        save_gray(tmp_path / "Images" / f"covid_{i}.png", ph.image)
        if i < 2:
            save_gray(
                tmp_path / "Ground-truths" / f"mask_covid_{i}.png",
                ph.infection.astype(np.uint8) * 255,
            )
    save_gray(tmp_path / "Ground-truths" / "mask_orphan.png", np.zeros((64, 64), np.uint8))
    (tmp_path / "groups.csv").write_text("file,patient\ncovid_0.png,p1\ncovid_1.png,p1\n")

    # The root, its Images folder, and that folder with its masks named: the same rules.
    for data in (
        read_dataset(tmp_path),
        read_dataset(tmp_path / "Images"),
        read_dataset(tmp_path / "Images", tmp_path / "Ground-truths"),
    ):
        assert data.layout == "qata"
        by_name = {s.image.name: s for s in data.samples}
        assert by_name["covid_0.png"].mask.name == "mask_covid_0.png"
        # QaTa's Images/ are COVID-19; one without a mask is waiting for its drawing.
        assert all(s.covid for s in data.samples)
        assert by_name["covid_2.png"].mask is None and not by_name["covid_2.png"].annotated
        assert len(data.annotated()) == 2
        assert [p.name for p in data.unmatched_masks] == ["mask_orphan.png"]
    grouped = read_dataset(tmp_path)
    assert grouped.groups == ["p1", "p1", None]


def test_a_plain_folder_takes_each_class_from_its_mask(tmp_path):
    for i, covid in enumerate([True, False, False]):
        ph = make_phantom(i, size=64, covid=covid)
        save_gray(tmp_path / "cxr" / f"x{i}.png", ph.image)
        save_gray(tmp_path / "masks" / f"x{i}.png", ph.infection.astype(np.uint8) * 255)
    save_gray(tmp_path / "cxr" / "x3.png", make_phantom(3, size=64).image)  # no mask at all

    data = read_dataset(tmp_path / "cxr")

    assert data.layout == "pairs"
    assert data.classes == ["COVID-19", "Non-COVID", "Non-COVID", "Non-COVID"]
    assert data.masks[0].endswith("x0.png") and data.masks[1:] == [None, None, None]
    assert len(data.annotated()) == 4


def test_the_default_preset_comes_from_the_environment(monkeypatch):
    args = ["--images", "x", "--out", "y"]
    monkeypatch.delenv("MASKLOOP_DEFAULT_PRESET", raising=False)
    assert build_parser().parse_args(["train", *args]).preset == "paper"
    assert build_parser().parse_args(["sweep", "--data", "x", "--out", "y"]).preset == "tiny"
    monkeypatch.setenv("MASKLOOP_DEFAULT_PRESET", "small")
    assert build_parser().parse_args(["train", *args]).preset == "small"
    monkeypatch.setenv("MASKLOOP_DEFAULT_PRESET", "huge")
    with pytest.raises(SystemExit, match="huge"):
        build_parser()


def test_progress_bar_prints_tenths_when_not_on_a_terminal():
    stream = io.StringIO()
    with ProgressBar(20, "work", stream=stream) as bar:
        for _ in range(20):
            bar.advance()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11  # 0/10 ... 10/10
    assert lines[-1].startswith("work [" + "#" * 28 + "] 20/20")


# -- sweep -------------------------------------------------------------------------------------


def test_sweep_writes_the_papers_tables(sweep):
    assert sweep["code"] == 0
    out = sweep["out"]
    markdown = (out / "tables.md").read_text()
    for title in ("Table I", "Table III", "Table IV", "Table VIII"):
        assert title in markdown
    assert "| U-Net | DenseNet-121 | not frozen |" in markdown
    assert "12.06M" in markdown and "85.63K" in markdown  # Table VIII's U-Net DenseNet-121
    assert markdown in sweep["stdout"]

    results = json.loads((out / "results.json").read_text())
    (row,) = results["results"].values()
    assert row["params"] == {"trainable": 12_059_345, "non_trainable": 85_632}
    image = row["image"]["confusion"]
    assert sum(image.values()) == N_COVID + N_NORMAL  # every CXR tested exactly once
    assert image["tp"] + image["fn"] == N_COVID
    pixel = row["pixel"]["confusion"]
    assert sum(pixel.values()) == (N_COVID + N_NORMAL) * 32 * 32  # tiny preset: 32 px
    for level in ("pixel", "image"):
        assert {"sensitivity", "specificity", "f1", "f2", "sensitivity_ci"} <= set(
            row[level]["scores"]
        )
    assert row["ms_per_sample"] > 0
    assert len(row["folds"]) == 2
    assert sorted(set(results["fold_of"].values())) == [0, 1]


def test_sweep_draws_a_precision_recall_png(sweep):
    path = sweep["out"] / "pr_curves.png"
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (720, 560)
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    curve_blue = np.all(pixels == (31, 119, 180), axis=1)
    assert curve_blue.sum() > 50  # the curve and its legend swatch


def test_sweep_reuses_finished_folds(sweep, data_root):
    code, _ = run_cli(
        "sweep",
        "--data",
        data_root,
        "--preset",
        "tiny",
        "--epochs",
        SWEEP_EPOCHS,
        "--folds",
        2,
        "--archs",
        "unet",
        "--encoders",
        "densenet121",
        "--frozen",
        "no",
        "--out",
        sweep["out"],
    )
    assert code == 0
    before = json.loads((sweep["out"] / "results.json").read_text())
    assert before["results"]  # same tables, without training again (this test is fast)


# -- predict and evaluate ---------------------------------------------------------------------


def test_predict_writes_infection_maps_and_a_csv(sweep, data_root, tmp_path):
    weights = sweep["out"] / "runs" / "unet-densenet121-trainable" / "fold0"
    images = data_root / "Train" / "COVID-19" / "images"

    code, stdout = run_cli(
        "predict", "--weights", weights, "--images", images, "--out", tmp_path, entry=inference_main
    )

    assert code == 0
    with (tmp_path / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N_COVID
    assert {"file", "covid19", "max_probability", "infected_share", "severity_grade"} <= set(
        rows[0]
    )
    for row in rows:
        assert row["covid19"] in ("0", "1")
        assert 0.0 <= float(row["max_probability"]) <= 1.0
        assert 0.0 <= float(row["infected_share"]) <= 1.0
        assert row["share_of"] == "lungs"  # the sibling "lung masks" folder was found
        assert int(row["severity_grade"]) in range(5)
        with Image.open(tmp_path / row["map"]) as im:
            assert im.mode == "RGB" and im.size == (PHANTOM, PHANTOM)
    assert f"{N_COVID} image(s)" in stdout


def test_evaluate_reports_pixel_and_image_metrics(sweep, data_root, tmp_path):
    weights = sweep["out"] / "runs" / "unet-densenet121-trainable" / "fold1"

    code, stdout = run_cli(
        "evaluate", "--weights", weights, "--images", data_root, "--json", tmp_path / "report.json"
    )

    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert sum(report["image"]["confusion"].values()) == N_COVID + N_NORMAL
    assert sum(report["pixel"]["confusion"].values()) == (N_COVID + N_NORMAL) * 32 * 32
    assert set(report["image"]["scores"]) >= {"sensitivity", "sensitivity_ci", "accuracy"}
    assert "Image-level confusion matrix" in stdout and "| COVID-19 |" in stdout
    assert json.loads(stdout.split("```json")[1].split("```")[0]) == report
