import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation.errors import DomainError
from annotation.replay.report import FILES, replay_file
from annotation.replay.services import (
    ORDERS,
    ReplayConfig,
    ReplayFailed,
    replay_execute,
    replay_prepare,
)

DEFAULTS = ReplayConfig()


def _networks(text: str) -> list[list[str]]:
    """ "unet:densenet121,dla:resnet50" → [["unet", "densenet121"], ["dla", "resnet50"]]."""
    nets = [part.split(":") for part in text.split(",") if part.strip()]
    if not nets or any(len(n) != 2 for n in nets):
        raise CommandError(f"networks are arch:encoder pairs separated by commas, not {text!r}")
    return nets


def _pairs(nets: list[list[str]]) -> str:
    return ",".join(f"{a}:{e}" for a, e in nets)


class Command(BaseCommand):
    help = (
        "Replay the collaborative protocol on a data set whose masks are known (any layout "
        "ingest reads), with simulated MDs: the masks are imported hidden, the MDs' drawings "
        "are the known masks degraded, their blind picks are the candidate closest to the "
        "known mask by Dice (with noise; 'none' below a threshold, then a redraw), and real "
        "rounds run on the Celery workers (start them first) until every COVID-19 image has "
        "ground truth or --max-stage2-rounds. Needs an empty database of its own. Writes "
        "report.json, report.md and PNG plots (also shown on /replay/)."
    )

    def add_arguments(self, parser):
        d = DEFAULTS
        parser.add_argument("dataset", help="the data set folder (QaTa-COV19, COVID-QU-Ex, CSV)")
        parser.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
        parser.add_argument("--preset", default=d.preset, help=f"default {d.preset}")
        parser.add_argument(
            "--epochs", type=int, help="override the preset's epochs (e.g. 2 for a quick run)"
        )
        parser.add_argument(
            "--stage1-networks",
            default=_pairs(d.stage1_networks),
            help=f"arch:encoder,… (default {_pairs(d.stage1_networks)})",
        )
        parser.add_argument(
            "--stage2-networks",
            default=_pairs(d.stage2_networks),
            help=f"default {_pairs(d.stage2_networks)}",
        )
        parser.add_argument(
            "--final-networks",
            default=_pairs(d.final_networks),
            help=f"default {_pairs(d.final_networks)}",
        )
        parser.add_argument("--no-final", action="store_true", help="skip the final networks")
        parser.add_argument(
            "--stage1-fraction",
            type=float,
            default=d.stage1_fraction,
            help=f"share of COVID-19 images drawn in Stage I (default {d.stage1_fraction})",
        )
        parser.add_argument("--folds", type=int, default=d.folds, help=f"default {d.folds}")
        parser.add_argument(
            "--max-stage2-rounds",
            type=int,
            default=d.max_stage2_rounds,
            help=f"stopping rule (default {d.max_stage2_rounds})",
        )
        parser.add_argument("--mds", type=int, default=d.mds, help=f"default {d.mds}")
        parser.add_argument(
            "--reviewers-per-item",
            type=int,
            default=d.reviewers_per_item,
            help=f"default {d.reviewers_per_item}; a tie goes to the simulated admin",
        )
        parser.add_argument(
            "--boundary-px",
            type=int,
            default=d.boundary_px,
            help=f"drawings: boundary moved in or out by 1..N px (default {d.boundary_px})",
        )
        parser.add_argument(
            "--simplify-px",
            type=float,
            default=d.simplify_px,
            help=f"drawings: polygon simplification tolerance (default {d.simplify_px})",
        )
        parser.add_argument(
            "--min-component-px",
            type=int,
            default=d.min_component_px,
            help=f"drawings: regions smaller than this are left out (default {d.min_component_px})",
        )
        parser.add_argument(
            "--none-below",
            type=float,
            default=d.none_below,
            help=f"'none' when the best candidate looks below this Dice (default {d.none_below})",
        )
        parser.add_argument(
            "--pick-noise",
            type=float,
            default=d.pick_noise,
            help=f"SD of an MD's misjudgement of Dice (default {d.pick_noise})",
        )
        parser.add_argument(
            "--seconds-per-pick", type=float, default=d.seconds_per_pick, help="default 15"
        )
        parser.add_argument(
            "--seconds-per-drawing", type=float, default=d.seconds_per_drawing, help="default 120"
        )
        parser.add_argument(
            "--round-timeout",
            type=float,
            default=d.round_timeout_s,
            help="seconds a round may take (default 4 h)",
        )
        parser.add_argument(
            "--order",
            choices=list(ORDERS),
            default=d.order,
            help="Stage I / II review order: queue (as made) or disagreement (highest "
            f"ensemble disagreement first); default {d.order}",
        )
        parser.add_argument(
            "--start-weights",
            default=d.start_weights,
            help="every round's starting weights: 'pretrain' (pretrain the first Stage I "
            "network's encoder on the imported images first, at the pretraining preset of "
            "--preset) or a local .h5 weights file on the workers; default from scratch",
        )
        parser.add_argument(
            "--pretrain-epochs",
            type=int,
            help="with --start-weights pretrain: epochs instead of the pretraining preset's",
        )
        parser.add_argument(
            "--lung-filter",
            action="store_true",
            help="Stage I / II: remove candidate pixels outside the imported lung masks",
        )
        parser.add_argument(
            "--lung-margin",
            type=float,
            help="the lung filter's dilation, %% of the image's longer side (default 2)",
        )
        parser.add_argument("--out", help="also copy the report files into this folder")

    def handle(self, dataset, **o):
        overrides = {"epochs": o["epochs"]} if o["epochs"] else {}
        try:
            config = ReplayConfig(
                seed=o["seed"],
                preset=o["preset"],
                overrides=overrides,
                stage1_networks=_networks(o["stage1_networks"]),
                stage2_networks=_networks(o["stage2_networks"]),
                final_networks=_networks(o["final_networks"]),
                final=not o["no_final"],
                stage1_fraction=o["stage1_fraction"],
                folds=o["folds"],
                max_stage2_rounds=o["max_stage2_rounds"],
                mds=o["mds"],
                reviewers_per_item=o["reviewers_per_item"],
                boundary_px=o["boundary_px"],
                simplify_px=o["simplify_px"],
                min_component_px=o["min_component_px"],
                none_below=o["none_below"],
                pick_noise=o["pick_noise"],
                seconds_per_pick=o["seconds_per_pick"],
                seconds_per_drawing=o["seconds_per_drawing"],
                round_timeout_s=o["round_timeout"],
                order=o["order"],
                start_weights=o["start_weights"],
                lung_filter=o["lung_filter"],
                lung_margin=o["lung_margin"],
                pretrain_epochs=o["pretrain_epochs"],
            )
            run = replay_prepare(dataset=dataset, config=config)
        except DomainError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"replay {run.uuid}: {run.progress['log'][0]}")
        try:
            run = replay_execute(run=run, on_step=lambda text: self.stdout.write(text))
        except (DomainError, ReplayFailed) as exc:
            raise CommandError(f"replay {run.uuid} failed: {exc}") from None
        if o["out"]:
            out = Path(o["out"])
            out.mkdir(parents=True, exist_ok=True)
            for name in FILES:
                (out / name).write_bytes(replay_file(run=run, name=name))
        self.stdout.write(replay_file(run=run, name="report.md").decode())
        total = run.report["total"]
        self.stdout.write(json.dumps({k: total[k] for k in ("hand_drawn", "redraws")}))
