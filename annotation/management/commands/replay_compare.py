import json
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotation.models import ReplayRun
from annotation.replay.compare import compare_markdown, replay_compare
from annotation.replay.report import replay_report_write


class Command(BaseCommand):
    help = (
        "Compare replays with an option against replays without it, on the same data set: "
        "give pairs A B (usually one seed each: A with the option, B without). Each is a "
        "report.json or the UUID of a replay in this database. Prints A − B: the per-image "
        "Dice of accepted masks and of the best network candidate (paired by image name, "
        "pooled over the pairs, bootstrap 95 %% interval), the hand-drawn, redraw and "
        "machine-preferred shares (Newcombe 95 %% interval) and MD minutes."
    )

    def add_arguments(self, parser):
        parser.add_argument("reports", nargs="+", help="A B [A B ...]: report.json or replay UUID")
        parser.add_argument(
            "--refresh",
            action="store_true",
            help="first measure each replay given by UUID again from its rows (a report "
            "written by older code lacks per-image best network Dice)",
        )
        parser.add_argument("--json", help="also write the comparison as JSON to this file")

    def handle(self, reports, **o):
        if len(reports) % 2:
            raise CommandError(f"give pairs A B: {len(reports)} reports is an odd number")
        loaded = [self._load(ref, refresh=o["refresh"]) for ref in reports]
        try:
            comparison = replay_compare(list(zip(loaded[::2], loaded[1::2], strict=True)))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if o["json"]:
            Path(o["json"]).write_text(json.dumps(comparison, indent=2))
        self.stdout.write(compare_markdown(comparison))

    def _load(self, ref: str, *, refresh: bool) -> dict:
        path = Path(ref)
        if path.suffix == ".json":
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise CommandError(f"cannot read the report {ref}: {exc}") from None
        try:
            run = ReplayRun.objects.get(uuid=ref)
        except (ReplayRun.DoesNotExist, ValidationError):
            raise CommandError(
                f"{ref!r} is neither a report.json nor a replay of this database"
            ) from None
        if refresh:
            return replay_report_write(run=run)
        if not run.report:
            raise CommandError(f"replay {ref} has no report yet ({run.get_status_display()})")
        return run.report
