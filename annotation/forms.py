"""What the pages accept.

Starting a round is declared once, as `RoundStartInput`: the API validates with it, and the
Rounds page's form draws its fields and checks what is posted with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from rest_framework import serializers
from rest_framework.fields import empty

from annotation.models import ImageClass, ReviewOrder, Role, Round
from annotation.services.rounds import DEFAULT_STAGE_I, DEFAULT_STAGE_II
from training.services import (
    ARCHITECTURE_LABELS,
    ARCHITECTURES,
    ENCODER_LABELS,
    ENCODERS,
    PRESETS,
    PRETRAIN_PRESETS,
    pretrained_encoders_done,
)

# How the Rounds page describes each stage.
STAGE_CHOICES = [
    (Round.Stage.STAGE_I, "Stage I — cross-validated, vs the MDs' masks"),
    (Round.Stage.STAGE_II, "Stage II — predict the images without a mask"),
    (Round.Stage.FINAL, "Final — infection-map networks on the accepted masks"),
]
NETWORK_CHOICES = [
    (f"{a}/{e}", f"{ARCHITECTURE_LABELS[a]} · {ENCODER_LABELS[e]}")
    for a in ARCHITECTURES
    for e in ENCODERS
]
# The networks of a round, as the study chose them (paper, sections II-C and III); "custom"
# takes the raw list of the Rounds page's "advanced" fold-out.
ALL_NETWORKS = [(a, e) for a in ARCHITECTURES for e in ENCODERS]
NETWORK_SETS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "stage_i": ("The study's Stage I trio: U-Net, UNet++ and DLA on DenseNet-121", DEFAULT_STAGE_I),
    "stage_ii": (
        "The study's Stage II five: the trio, and U-Net and UNet++ on ResNet-50",
        DEFAULT_STAGE_II,
    ),
    "final_24": (
        "The study's 24 final configurations: all 12 networks (3 models × 4 encoders); "
        "start the round once more with the encoders frozen for the other 12",
        ALL_NETWORKS,
    ),
}
CUSTOM_NETWORKS = "custom"
# The set each stage starts with on the page (the stage's defaults in `round_start`).
STAGE_NETWORK_SET = {
    Round.Stage.STAGE_I: "stage_i",
    Round.Stage.STAGE_II: "stage_ii",
    Round.Stage.FINAL: "stage_i",
}
# Networks downscale by 32 (five poolings): any other input size fails in every worker.
INPUT_SIZE_STEP = 32
SEED_MAX = 2**31 - 1  # NumPy and TensorFlow both take it


def preset_choices() -> list[tuple[str, str]]:
    """The training presets, smallest first, each described by its size and length."""
    by_size = sorted(PRESETS.items(), key=lambda item: (item[1].input_size, item[1].epochs))
    return [
        (name, f"{name} — {c.input_size} px, batch {c.batch_size}, {c.epochs} epochs")
        for name, c in by_size
    ]


def default_preset() -> str:
    return settings.MASKLOOP_DEFAULT_PRESET


class RoundStartInput(serializers.Serializer):
    """What starting a round takes, on the Rounds page and through the API."""

    stage = serializers.ChoiceField(choices=Round.Stage.choices)
    networks = serializers.ListField(
        child=serializers.ListField(
            child=serializers.CharField(max_length=40), min_length=2, max_length=2
        ),
        max_length=len(NETWORK_CHOICES),
        required=False,
        help_text="Leave empty for the stage's defaults "
        "(Stage I: U-Net, UNet++, DLA; Stage II: five networks).",
    )
    folds = serializers.IntegerField(min_value=2, max_value=10, default=5)
    preset = serializers.ChoiceField(choices=preset_choices(), default=default_preset)
    epochs = serializers.IntegerField(min_value=1, max_value=500, required=False)
    input_size = serializers.IntegerField(
        min_value=32, max_value=1024, required=False, help_text="A multiple of 32."
    )
    reviewers_per_item = serializers.IntegerField(
        min_value=1, max_value=9, default=1, help_text="At most the number of active MDs."
    )
    seed = serializers.IntegerField(min_value=0, max_value=SEED_MAX, default=0)
    freeze_encoder = serializers.BooleanField(default=False, label="Freeze the encoders")
    test_fraction = serializers.FloatField(min_value=0.05, max_value=0.5, default=0.2)
    order = serializers.ChoiceField(
        choices=ReviewOrder.choices,
        default=ReviewOrder.CREATED,
        label="Review order",
        help_text="The order MDs are handed the items in. By disagreement: the items whose "
        "machine masks disagree most (1 − mean pairwise Dice) first; items with fewer than "
        "two machine masks last.",
    )
    pretrained_encoder = serializers.IntegerField(
        min_value=1,
        required=False,
        allow_null=True,
        label="Start from a pretrained encoder",
        help_text="The id of a finished self-supervised pretraining; networks on its encoder "
        "start from it, the others from scratch.",
    )
    weights_file = serializers.CharField(
        max_length=500,
        required=False,
        allow_blank=True,
        label="Start from a local weights file",
        help_text="A path on the training workers: an ImageNet “notop” or CheXNet .h5 file, "
        "or a whole model of the same kind.",
    )
    lung_filter = serializers.BooleanField(
        default=False,
        label="Lung filter: no candidate pixel outside the dilated lung mask",
        help_text="Images without a lung mask keep their candidates unchanged.",
    )
    lung_margin = serializers.FloatField(
        min_value=0,
        max_value=25,
        required=False,
        help_text="The lung mask's dilation, in % of the image's longer side (default 2).",
    )

    class Meta:
        ref_name = "RoundStartInput"

    def validate_input_size(self, value: int) -> int:
        if value % INPUT_SIZE_STEP:
            raise serializers.ValidationError(
                f"must be a multiple of {INPUT_SIZE_STEP} (the networks halve it five times), "
                f"e.g. {max(INPUT_SIZE_STEP, value // INPUT_SIZE_STEP * INPUT_SIZE_STEP)}"
            )
        return value

    def validate_reviewers_per_item(self, value: int) -> int:
        # More reviewers per item than MDs could never finish the round. One is always allowed:
        # a round may start before the first MD account exists.
        mds = (
            get_user_model().objects.filter(is_active=True, groups__name=Role.MD).distinct().count()
        )
        if value > max(mds, 1):
            raise serializers.ValidationError(
                f"there are {mds} active MDs; an item cannot need {value} reviewers"
            )
        return value


def round_start_arguments(data: Mapping[str, Any]) -> dict[str, Any]:
    """RoundStartInput's validated data as `round_start`'s arguments (less `started_by`):
    the training options become overrides of the preset."""
    overrides = {k: data[k] for k in ("epochs", "input_size") if k in data}
    if data["freeze_encoder"]:
        overrides["freeze_encoder"] = True
    return {
        "stage": data["stage"],
        "networks": data.get("networks"),
        "folds": data["folds"],
        "preset": data["preset"],
        "overrides": overrides,
        "reviewers_per_item": data["reviewers_per_item"],
        "seed": data["seed"],
        "test_fraction": data["test_fraction"],
        "order": data.get("order", ReviewOrder.CREATED),
        "pretrained_encoder": data.get("pretrained_encoder"),
        "weights_file": data.get("weights_file") or None,
        "lung_filter": data.get("lung_filter", False),
        "lung_margin": data.get("lung_margin"),
    }


class RoundStartForm(forms.Form):
    """The Rounds page's form: RoundStartInput's fields that the page shows, as widgets.

    Its `cleaned_data` is RoundStartInput's validated data, defaults filled in, so the page
    starts exactly the round the API would. Networks are checkboxes of "arch/encoder".
    """

    SHOWN = (
        "stage",
        "network_set",
        "networks",
        "folds",
        "preset",
        "epochs",
        "freeze_encoder",
        "reviewers_per_item",
        "order",
        "pretrained_encoder",
        "weights_file",
        "lung_filter",
    )

    def __init__(self, data=None):
        super().__init__(data)
        declared = RoundStartInput().fields
        self.fields.update(
            {
                name: _form_field(declared[name]) if name in declared else _network_set_field()
                for name in self.SHOWN
            }
        )
        cast(forms.ChoiceField, self.fields["stage"]).choices = STAGE_CHOICES
        self.fields["networks"].label = "Networks"
        self.fields["networks"].help_text = "Used when “Choose networks” is picked above."
        self.fields["folds"].help_text = "Stage I only: its cross-validation folds, by patient."
        self.fields["pretrained_encoder"] = forms.TypedChoiceField(
            choices=[("", "No: from scratch (or the weights file below)")]
            + [
                (
                    e.pk,
                    f"#{e.pk} {ENCODER_LABELS.get(e.encoder, e.encoder)} — {e.preset}, "
                    f"{len(e.image_ids)} images, {e.finished_at:%Y-%m-%d %H:%M}",
                )
                for e in pretrained_encoders_done()
            ],
            coerce=int,
            empty_value=None,
            required=False,
            label=declared["pretrained_encoder"].label,
            help_text=declared["pretrained_encoder"].help_text or "",
        )

    def clean(self) -> dict[str, Any]:
        if self.errors:  # e.g. a number that is not one: RoundStartInput would only repeat it
            return self.cleaned_data
        posted = {k: v for k, v in self.cleaned_data.items() if v not in (None, "", [])}
        network_set = posted.pop("network_set", None)
        if network_set in NETWORK_SETS:  # a named set wins over the raw list behind it
            posted["networks"] = [f"{a}/{e}" for a, e in NETWORK_SETS[network_set][1]]
        elif network_set == CUSTOM_NETWORKS and "networks" not in posted:
            self.add_error("networks", "Tick at least one network, or pick one of the sets.")
            return self.cleaned_data
        if posted.get("stage") != Round.Stage.STAGE_I:
            posted.pop("folds", None)  # only Stage I has folds; the page hides the field
        if "networks" in posted:
            posted["networks"] = [n.split("/", 1) for n in posted["networks"]]
        checked = RoundStartInput(data=posted)
        if not checked.is_valid():
            for name, errors in checked.errors.items():
                self.add_error(name if name in self.fields else None, errors)
            return self.cleaned_data
        return checked.validated_data


def _network_set_field() -> forms.ChoiceField:
    return forms.ChoiceField(
        choices=[(k, label) for k, (label, _) in NETWORK_SETS.items()]
        + [(CUSTOM_NETWORKS, "Choose networks (advanced)")],
        required=False,
        label="Networks to train",
        widget=forms.RadioSelect,
        help_text="Left unpicked: the stage's own set (Stage I and final: the trio; "
        "Stage II: the five).",
    )


def _form_field(field: serializers.Field) -> forms.Field:
    """A form field that draws a RoundStartInput field with its bounds, label and default."""
    options: dict[str, Any] = {
        "required": field.required,
        "label": field.label,
        "help_text": field.help_text or "",
        "initial": None if field.default is empty else field.default,
    }
    if isinstance(field, serializers.BooleanField):
        return forms.BooleanField(**options)
    if isinstance(field, serializers.ChoiceField):
        return forms.ChoiceField(choices=list(field.choices.items()), **options)
    if isinstance(field, serializers.CharField):
        return forms.CharField(max_length=field.max_length, **options)
    if isinstance(field, serializers.IntegerField):
        return forms.IntegerField(min_value=field.min_value, max_value=field.max_value, **options)
    if field.field_name == "networks":
        return forms.MultipleChoiceField(
            choices=NETWORK_CHOICES, widget=forms.CheckboxSelectMultiple, **options
        )
    raise TypeError(f"the Rounds page cannot draw {field.field_name!r}")


class ExportForm(forms.Form):
    round = forms.TypedChoiceField(
        required=False,
        coerce=int,
        empty_value=None,
        help_text="Only masks accepted in this round.",
    )
    classes = forms.MultipleChoiceField(
        choices=ImageClass.choices, required=False, widget=forms.CheckboxSelectMultiple
    )
    accepted_only = forms.BooleanField(
        required=False, initial=True, label="Only images with an accepted mask"
    )
    format = forms.ChoiceField(
        choices=[
            ("png", "PNG masks"),
            ("coco", "COCO instance segmentation (RLE)"),
            ("dicom-seg", "DICOM-SEG per image"),
        ],
        initial="png",
        required=False,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A picker of the rounds there are, newest first, not a number to guess.
        rounds = Round.objects.order_by("-number").values_list("number", "stage", "status")
        stages, statuses = dict(Round.Stage.choices), dict(Round.Status.choices)
        field = cast(forms.TypedChoiceField, self.fields["round"])
        field.choices = [("", "Any round")] + [
            (n, f"Round {n} · {stages.get(stage, stage)} · {statuses.get(st, st).lower()}")
            for n, stage, st in rounds
        ]


class PacsPullForm(forms.Form):
    """A pull from a PACS (annotation.services.pacs.pacs_pull_request checks the values)."""

    server = forms.CharField(
        max_length=255,
        help_text="The DICOMweb root: dicomweb://host:port/path (dicomwebs:// for HTTPS).",
        widget=forms.TextInput(attrs={"placeholder": "dicomweb://pacs.example.org:8042/dicom-web"}),
    )
    image_class = forms.ChoiceField(
        choices=ImageClass.choices,
        label="Class",
        help_text="Every image pulled gets this class: DICOM carries none.",
    )
    study_date = forms.CharField(
        required=False,
        max_length=17,
        help_text="YYYYMMDD or a range YYYYMMDD-YYYYMMDD; empty: any date.",
    )
    modalities = forms.CharField(
        required=False,
        max_length=100,
        label="Modalities",
        help_text="Comma-separated, e.g. CR,DX; empty: CR, DX, DR and RG.",
    )
    study_uids = forms.CharField(
        required=False,
        label="Study Instance UIDs",
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Comma-separated; empty: every study the other filters select.",
    )
    limit = forms.IntegerField(
        required=False, min_value=1, help_text="Fetch at most this many new instances."
    )


class PretrainForm(forms.Form):
    """The Rounds page's "Pretrain an encoder" form."""

    encoder = forms.ChoiceField(choices=[(e, ENCODER_LABELS[e]) for e in ENCODERS])
    preset = forms.ChoiceField(
        choices=[
            (name, f"{name} — {c.input_size} px, batch {c.batch_size}, {c.epochs} epochs")
            for name, c in sorted(PRETRAIN_PRESETS.items(), key=lambda kv: kv[1].input_size)
        ],
        help_text="tiny runs in minutes on a CPU; paper (SimMIM's setting at 224 px) wants a GPU.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The rounds' default preset where pretraining has one of that name (tiny, small, paper).
        if settings.MASKLOOP_DEFAULT_PRESET in PRETRAIN_PRESETS:
            self.fields["preset"].initial = settings.MASKLOOP_DEFAULT_PRESET
