from django import forms

from annotation.models import ImageClass, Round
from training.nets.config import ARCHITECTURES, ENCODERS

NETWORK_CHOICES = [(f"{a}/{e}", f"{a} · {e}") for a in ARCHITECTURES for e in ENCODERS]


class RoundStartForm(forms.Form):
    stage = forms.ChoiceField(
        choices=[
            (Round.Stage.STAGE_I, "Stage I — cross-validated, vs the MDs' masks"),
            (Round.Stage.STAGE_II, "Stage II — predict the images without a mask"),
            (Round.Stage.FINAL, "Final — infection-map networks on the accepted masks"),
        ]
    )
    networks = forms.MultipleChoiceField(
        choices=NETWORK_CHOICES,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=(
            "Leave empty for the stage's defaults "
            "(Stage I: U-Net, UNet++, DLA; Stage II: five networks)."
        ),
    )
    folds = forms.IntegerField(min_value=2, max_value=10, initial=5)
    preset = forms.ChoiceField(
        choices=[
            ("tiny", "tiny — 32 px, 30 short epochs (CPU demo)"),
            ("small", "small — 64 px, 2 epochs"),
            ("paper", "paper — 224 px, batch 32, 50 epochs (GPU)"),
        ]
    )
    epochs = forms.IntegerField(min_value=1, max_value=500, required=False)
    freeze_encoder = forms.BooleanField(required=False, label="Freeze the encoders")
    reviewers_per_item = forms.IntegerField(min_value=1, max_value=9, initial=1)

    def networks_list(self) -> list[tuple[str, str]] | None:
        chosen = self.cleaned_data.get("networks") or []
        return [tuple(n.split("/", 1)) for n in chosen] or None  # type: ignore[misc]


class ExportForm(forms.Form):
    round = forms.IntegerField(
        required=False, min_value=1, help_text="Only masks accepted in this round."
    )
    classes = forms.MultipleChoiceField(
        choices=ImageClass.choices, required=False, widget=forms.CheckboxSelectMultiple
    )
    accepted_only = forms.BooleanField(
        required=False, initial=True, label="Only images with an accepted mask"
    )
