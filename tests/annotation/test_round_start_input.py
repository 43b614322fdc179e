"""Starting a round is declared once: the Rounds page and the API accept the same input."""

import pytest
from django.http import QueryDict

from annotation import services
from annotation.forms import RoundStartForm, RoundStartInput, preset_choices
from annotation.models import Round
from training.services import PRESETS

pytestmark = pytest.mark.django_db


def posted(**fields) -> QueryDict:
    data = QueryDict(mutable=True)
    for name, value in fields.items():
        data.setlist(name, value if isinstance(value, list) else [value])
    return data


def test_the_presets_come_from_the_training_presets_smallest_first():
    assert [name for name, _ in preset_choices()] == ["tiny", "small", "paper"]
    assert set(dict(preset_choices())) == set(PRESETS)
    assert dict(preset_choices())["paper"] == "paper — 224 px, batch 32, 50 epochs"


def test_the_page_and_the_api_start_the_same_round(client, api, admin_user, make_image, md, md2):
    for patient in "ABCD":
        make_image(manual_by=md, patient=patient)
    client.force_login(admin_user)
    response = client.post(
        "/rounds/",
        {
            "stage": "I",
            "networks": ["unet/densenet121", "dla/resnet50"],
            "folds": "2",
            "preset": "small",
            "epochs": "3",
            "freeze_encoder": "on",
            "reviewers_per_item": "2",
        },
    )
    assert response.status_code == 302 and response.url == "/rounds/1/"
    from_page = Round.objects.get(number=1)
    services.round_cancel(round=from_page, by=admin_user)

    response = api(admin_user).post(
        "/api/rounds/",
        {
            "stage": "I",
            "networks": [["unet", "densenet121"], ["dla", "resnet50"]],
            "folds": 2,
            "preset": "small",
            "epochs": 3,
            "freeze_encoder": True,
            "reviewers_per_item": 2,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    from_api = Round.objects.get(number=2)
    assert from_page.config == from_api.config
    assert from_page.config["networks"] == [["unet", "densenet121"], ["dla", "resnet50"]]
    assert from_page.reviewers_per_item == from_api.reviewers_per_item == 2


def test_the_page_shows_the_declared_bounds_as_errors():
    form = RoundStartForm(posted(stage="II", folds="11", reviewers_per_item="1"))
    assert not form.is_valid()
    assert list(form.errors) == ["folds"]
    assert RoundStartInput(data={"stage": "II", "folds": 11}).is_valid() is False


def test_fields_left_empty_take_the_declared_defaults():
    form = RoundStartForm(posted(stage="final", folds="", epochs="", preset="tiny"))
    assert form.is_valid(), form.errors
    assert form.cleaned_data == {
        "stage": "final",
        "preset": "tiny",
        "folds": 5,
        "reviewers_per_item": 1,
        "seed": 0,
        "freeze_encoder": False,
        "test_fraction": 0.2,
        "order": "created",
        "lung_filter": False,
    }


def test_the_default_preset_is_the_setting_read_at_request_time(client, api, admin_user, settings):
    settings.MASKLOOP_DEFAULT_PRESET = "small"
    client.force_login(admin_user)
    page = client.get("/rounds/").content.decode()
    assert '<option value="small" selected>' in page
    data = RoundStartInput(data={"stage": "I"})
    assert data.is_valid() and data.validated_data["preset"] == "small"


def test_more_reviewers_than_active_mds_is_an_error_on_the_page_too(md, md2):
    md2.is_active = False
    md2.save()
    form = RoundStartForm(posted(stage="I", reviewers_per_item="2"))
    assert not form.is_valid()
    assert "there are 1 active MDs" in str(form.errors["reviewers_per_item"])
    assert RoundStartForm(posted(stage="I", reviewers_per_item="1")).is_valid()


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("input_size", 100, "multiple of 32"),
        ("input_size", 2048, "less than or equal to 1024"),
        ("seed", -1, "greater than or equal to 0"),
        ("seed", 2**31, "less than or equal to"),
        ("networks", [["unet", "x" * 41]], "no more than 40 characters"),
    ],
)
def test_every_training_field_is_bounded(field, value, says):
    data = RoundStartInput(data={"stage": "I", field: value})
    assert not data.is_valid()
    assert says in str(data.errors[field])


def test_a_multiple_of_32_is_a_valid_input_size():
    data = RoundStartInput(data={"stage": "I", "input_size": 96, "seed": 2**31 - 1})
    assert data.is_valid(), data.errors
