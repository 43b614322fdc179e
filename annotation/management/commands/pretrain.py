from django.core.management.base import BaseCommand, CommandError

from annotation.errors import DomainError
from annotation.services import encoder_pretrain_start
from training.services import ENCODERS, PRETRAIN_PRESETS


class Command(BaseCommand):
    help = (
        "Pretrain an encoder without labels on every image a round may use (masked-image "
        "modelling), on the training queue; a round can then start from it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--encoder", choices=ENCODERS, default="densenet121")
        parser.add_argument("--preset", choices=list(PRETRAIN_PRESETS), default="tiny")
        parser.add_argument("--epochs", type=int, help="instead of the preset's")
        parser.add_argument("--input-size", type=int, dest="input_size")
        parser.add_argument("--seed", type=int)

    def handle(self, encoder, preset, **options):
        overrides = {k: options[k] for k in ("epochs", "input_size", "seed") if options.get(k)}
        if overrides.get("input_size"):
            overrides["mask_patch"] = overrides["input_size"] // 8  # the presets' 8 × 8 grid
        try:
            row = encoder_pretrain_start(encoder=encoder, preset=preset, overrides=overrides)
        except DomainError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"pretraining #{row.pk} of {encoder} queued on {len(row.image_ids)} images "
            f"({preset}: {row.config['input_size']} px, {row.epochs} epochs); start a round "
            f'with "pretrained_encoder": {row.pk} once it is done'
        )
