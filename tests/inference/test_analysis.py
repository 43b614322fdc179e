"""Decoding uploads (PNG, JPEG, 16-bit, DICOM) and analysing a CXR with real, tiny networks."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from PIL import Image as PILImage

import training.nets  # noqa: F401  (sets the environment before TensorFlow loads)
from annotation.imaging import InvalidImageError
from annotation.models import Round
from inference import analysis
from training.models import ModelVersion, TrainingRun

SIZE = 32


# ---------------------------------------------------------------- uploads


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(array).save(buf, format="PNG")  # uint16 → a 16-bit gray PNG
    return buf.getvalue()


def ramp(h: int = 24, w: int = 40) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 256).astype(np.uint8)


def test_png_is_read_unchanged():
    gray = ramp()

    out = analysis.decode_upload(png_bytes(gray), "cxr.png")

    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, gray)


def test_jpeg_colour_is_read_as_gray_of_the_same_size():
    rgb = np.zeros((30, 50, 3), np.uint8)
    rgb[:, 25:] = 200
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="JPEG", quality=95)

    out = analysis.decode_upload(buf.getvalue(), "cxr.jpg")

    assert out.shape == (30, 50)
    assert abs(int(out[15, 40]) - 200) <= 3 and int(out[15, 5]) <= 3


def test_sixteen_bit_png_is_stretched_to_eight_bits():
    # 12 significant bits, as CXR detectors write them: min → black, max → white.
    values = np.linspace(1000, 3000, 20 * 30).reshape(20, 30).astype(np.uint16)

    data = png_bytes(values)
    assert PILImage.open(io.BytesIO(data)).mode.startswith("I")

    out = analysis.decode_upload(data, "cxr16.png")

    assert out.dtype == np.uint8 and out.shape == (20, 30)
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.astype(int).ravel()) >= 0)


def dicom_bytes(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    preamble: bool = True,
) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray, presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=preamble)
    return buf.getvalue()


def twelve_bit_ramp(h: int = 20, w: int = 32) -> np.ndarray:
    return np.linspace(0, 4095, h * w).round().reshape(h, w).astype(np.uint16)


def test_dicom_without_window_is_stretched():
    pixels = twelve_bit_ramp()

    out = analysis.decode_upload(dicom_bytes(pixels), "cxr.dcm")

    assert out.shape == pixels.shape and out.dtype == np.uint8
    assert out[0, 0] == 0 and out[-1, -1] == 255
    np.testing.assert_array_equal(out, np.round(pixels / 4095 * 255).astype(np.uint8))


def test_dicom_window_centre_and_width_are_applied():
    pixels = np.array([[0, 1500, 1535, 2048, 2560, 4095]] * 16, np.uint16)
    pixels = np.repeat(pixels, 4, axis=1)  # 16 × 24

    out = analysis.decode_upload(dicom_bytes(pixels, window=(2048, 1024)), "cxr.dcm")

    row = out[0, ::4]
    # DICOM PS3.3 C.11.2.1.2.1 (LINEAR): below c - 0.5 - (w - 1)/2 = 1536 → black, above → white.
    assert row[0] == 0 and row[1] == 0 and row[2] == 0
    expected_mid = round(((2048 - 2047.5) / 1023 + 0.5) * 255)
    assert row[3] == expected_mid
    assert row[4] == 255 and row[5] == 255


def test_dicom_rescale_then_window():
    # Stored 0..4095 with slope 2, intercept -1000: modality values -1000..7190.
    pixels = np.array([[500, 1000, 1500]] * 16, np.uint16).repeat(8, axis=1)

    out = analysis.decode_upload(
        dicom_bytes(pixels, window=(1000, 2001), rescale=(2.0, -1000.0)), "cxr.dcm"
    )

    # modality 0, 1000, 2000 under the window 1000 ± 1000 → black, middle gray, white.
    assert out[0, 0] == 0
    assert abs(int(out[0, 8]) - 128) <= 1
    assert out[0, 16] == 255


def test_dicom_monochrome1_is_inverted():
    pixels = twelve_bit_ramp()

    m2 = analysis.decode_upload(dicom_bytes(pixels), "a.dcm")
    m1 = analysis.decode_upload(dicom_bytes(pixels, photometric="MONOCHROME1"), "b.dcm")

    # MONOCHROME1: the lowest value is white.
    assert m1[0, 0] == 255 and m1[-1, -1] == 0
    np.testing.assert_array_equal(m1, 255 - m2)


def test_dicom_monochrome1_window_then_invert():
    pixels = np.array([[0, 2048, 4095]] * 16, np.uint16).repeat(8, axis=1)

    out = analysis.decode_upload(
        dicom_bytes(pixels, photometric="MONOCHROME1", window=(2048, 1024)), "cxr.dcm"
    )

    assert out[0, 0] == 255 and out[0, 23] == 0
    assert abs(int(out[0, 8]) - 127) <= 1


def test_dicom_without_preamble_is_recognised_by_its_name():
    pixels = twelve_bit_ramp()

    out = analysis.decode_upload(dicom_bytes(pixels, preamble=False), "IM0001.DCM")

    assert out.shape == pixels.shape and out[-1, -1] == 255


def test_the_content_decides_not_the_name():
    gray = ramp()

    np.testing.assert_array_equal(analysis.decode_upload(png_bytes(gray), "scan.dcm"), gray)


@pytest.mark.parametrize(
    ("data", "name", "says"),
    [
        (b"patient notes, not an image", "notes.txt", "not a PNG, JPEG or DICOM image"),
        (b"", "empty.png", "is empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "broken.png", "broken.png"),
        (b"\x00" * 128 + b"DICM" + b"\x00" * 20, "broken.dcm", "broken.dcm"),
    ],
)
def test_what_is_not_a_cxr_gets_a_clear_error(data, name, says):
    with pytest.raises(InvalidImageError, match=says):
        analysis.decode_upload(data, name)


def test_dicom_without_pixels_is_refused():
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # a structured report
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName = "Anon"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)

    with pytest.raises(InvalidImageError, match="without an image"):
        analysis.decode_upload(buf.getvalue(), "report.dcm")


def test_tiny_image_is_refused():
    with pytest.raises(InvalidImageError, match="at least 16"):
        analysis.decode_upload(dicom_bytes(twelve_bit_ramp(8, 8)), "tiny.dcm")


def test_png_data_url_round_trips():
    import base64

    rgb = np.random.default_rng(0).integers(0, 255, (9, 13, 3), dtype=np.uint8)

    url = analysis.png_data_url(rgb)

    assert url.startswith("data:image/png;base64,")
    back = np.asarray(PILImage.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    np.testing.assert_array_equal(back, rgb)


# ---------------------------------------------------------------- analysis with real networks


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """Randomly initialised 32-px networks, saved once for the module."""
    import tensorflow as tf

    from training.nets.builders import build_model
    from training.nets.classifier import build_classifier

    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for seed, (name, build) in enumerate(
        [
            ("unet", lambda: build_model("unet", "densenet121", input_size=SIZE)),
            ("unetpp", lambda: build_model("unetpp", "densenet121", input_size=SIZE)),
            ("classifier", lambda: build_classifier("densenet121", input_size=SIZE)),
        ]
    ):
        tf.keras.backend.clear_session()
        tf.keras.utils.set_random_seed(seed)
        model = build()
        files[name] = folder / f"{name}.weights.h5"
        model.save_weights(str(files[name]))
    tf.keras.backend.clear_session()
    yield files
    analysis.model_cache_clear()


def model_version(rnd: Round, weights: Path, *, arch: str, encoder: str = "densenet121"):
    """A trained network as the final round records it: run, model version, weights in media."""
    from training.nets.config import TrainConfig

    name = f"models/{rnd.number}-{arch}-{weights.name}"
    target = Path(settings.MEDIA_ROOT) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, target)
    if arch == "classifier":
        config = TrainConfig(task="classifier", encoder=encoder, input_size=SIZE).to_dict()
    else:
        config = TrainConfig(arch=arch, encoder=encoder, input_size=SIZE).to_dict()
    kind = TrainingRun.Kind.CLASSIFIER if arch == "classifier" else TrainingRun.Kind.SEGMENTATION
    arch = "" if arch == "classifier" else arch
    run = TrainingRun.objects.create(
        round=rnd,
        kind=kind,
        arch=arch,
        encoder=encoder,
        config=config,
        status=TrainingRun.Status.SUCCEEDED,
    )
    return ModelVersion.objects.create(
        run=run, arch=arch, encoder=encoder, config=config, weights=name, data_version="test"
    )


@pytest.fixture
def final_round(db, admin_user):
    return Round.objects.create(
        number=90, stage=Round.Stage.FINAL, status=Round.Status.DONE, started_by=admin_user
    )


@pytest.fixture
def cxr() -> np.ndarray:
    from annotation.phantoms import make_phantom

    return make_phantom(3, size=72, covid=True).image[:, 6:66]  # 72 × 60: not the net's size


def test_analysis_is_at_the_image_size_and_consistent(final_round, weight_files, cxr):
    mv = model_version(final_round, weight_files["unet"], arch="unet")

    result = analysis.analyse(cxr, [mv])

    h, w = cxr.shape
    assert result.prob.shape == (h, w) and result.prob.dtype == np.float32
    assert result.map.shape == (h, w, 3) and result.map.dtype == np.uint8
    assert result.prob.min() >= 0.0 and result.prob.max() <= 1.0
    assert result.max_probability == pytest.approx(float(result.prob.max()))
    assert result.detected == bool(result.prob.max() >= 0.5)
    # Pixels the map does not draw show the CXR unchanged.
    hidden = result.prob < 0.02
    np.testing.assert_array_equal(result.map[hidden], np.repeat(cxr[hidden][:, None], 3, axis=1))
    assert result.severity.infected_fraction == pytest.approx(float((result.prob >= 0.5).mean()))
    assert result.severity.grade is None  # no lung mask
    assert result.gradcam is None and result.gradcam_map is None
    assert result.models == (mv,)


def test_ensemble_is_the_mean_of_its_members(final_round, weight_files, cxr):
    a = model_version(final_round, weight_files["unet"], arch="unet")
    b = model_version(final_round, weight_files["unetpp"], arch="unetpp")

    both = analysis.analyse(cxr, [a, b])
    alone = [analysis.analyse(cxr, [m]).prob for m in (a, b)]

    np.testing.assert_allclose(both.prob, (alone[0] + alone[1]) / 2, atol=1e-6)
    assert both.detected == bool(both.prob.max() >= 0.5)


def test_loaded_networks_are_cached_per_weights_file(final_round, weight_files, cxr):
    mv = model_version(final_round, weight_files["unet"], arch="unet")
    analysis.model_cache_clear()

    first = analysis.analyse(cxr, [mv])
    model = analysis._segmentation_model(mv)[0]
    second = analysis.analyse(cxr, [ModelVersion.objects.get(pk=mv.pk)])

    assert len(analysis._cache) == 1
    assert analysis._segmentation_model(mv)[0] is model
    np.testing.assert_array_equal(first.prob, second.prob)


def test_lung_mask_gives_per_lung_severity(final_round, weight_files):
    from annotation.phantoms import make_phantom

    phantom = make_phantom(4, size=64, covid=True)
    mv = model_version(final_round, weight_files["unet"], arch="unet")

    result = analysis.analyse(phantom.image, [mv], lung_mask=phantom.lungs)

    s = result.severity
    assert s.lung_fraction is not None and 0.0 <= s.lung_fraction <= 1.0
    assert s.grade in range(5)
    assert s.lung_split in ("components", "midline")
    payload = analysis.severity_dict(s)
    assert payload["label"] == s.label


def test_classifier_adds_a_grad_cam_at_the_image_size(final_round, weight_files, cxr):
    seg = model_version(final_round, weight_files["unet"], arch="unet")
    cls = model_version(final_round, weight_files["classifier"], arch="classifier")

    result = analysis.analyse(cxr, [seg], classifier=cls)

    assert result.gradcam.shape == cxr.shape
    assert result.gradcam.min() >= 0.0 and result.gradcam.max() <= 1.0
    assert result.gradcam_map.shape == (*cxr.shape, 3)
    assert result.classifier == cls


def test_missing_weights_are_a_clear_error(final_round, weight_files, cxr):
    from annotation.errors import Conflict

    mv = model_version(final_round, weight_files["unet"], arch="unet")
    (Path(settings.MEDIA_ROOT) / mv.weights.name).unlink()

    with pytest.raises(Conflict, match=f"weights of model v{mv.pk}"):
        analysis.analyse(cxr, [mv])


def test_no_networks_is_an_error(cxr):
    with pytest.raises(ValueError, match="no trained networks"):
        analysis.analyse(cxr, [])
