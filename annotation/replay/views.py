"""The admins' replay pages: the runs, one run's progress, report and plots."""

from __future__ import annotations

from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, render

from annotation.models import ReplayRun, Role
from annotation.permissions import role_required
from annotation.replay.plots import NAMES as PLOTS
from annotation.replay.report import FILES, fmt_mean, fmt_number, fmt_share, replay_file

CONTENT_TYPES = {
    "json": "application/json",
    "md": "text/markdown; charset=utf-8",
    "png": "image/png",
}


@role_required(Role.ADMIN)
def replays(request):
    return render(request, "annotation/replays.html", {"runs": ReplayRun.objects.all()[:50]})


@role_required(Role.ADMIN)
def replay_detail(request, run_uuid):
    run = get_object_or_404(ReplayRun, uuid=run_uuid)
    ready = bool(run.progress.get("files"))
    total = run.report.get("total")
    return render(
        request,
        "annotation/replay_detail.html",
        {
            "run": run,
            "report": run.report,
            "total": _total_rows(total) if total else [],
            "rounds": [_round_row(r) for r in run.report.get("rounds", [])],
            "final": run.report.get("final_networks", []),
            "config": sorted(run.config.items()),
            "log": list(reversed(run.progress.get("log", [])))[:30],
            "training": run.progress.get("training", []),
            "plots": PLOTS if ready else (),
            "files": FILES if ready else (),
            "refresh": run.status == ReplayRun.Status.RUNNING,
        },
    )


def _total_rows(t: dict) -> list[tuple[str, str]]:
    return [
        ("COVID-19 images with ground truth", f"{t['with_ground_truth']} of {t['covid_images']}"),
        ("Dice of the accepted masks vs the known masks", fmt_mean(t["dice_accepted"])),
        ("Dice of the MDs' drawings alone (same images)", fmt_mean(t["dice_manual"])),
        ("Hand-drawn share", fmt_share(t["hand_drawn"])),
        ("Machine-preferred share of picks", fmt_share(t["machine_preferred"])),
        ("Redraw rate", fmt_share(t["redraws"])),
        ("Picks per image", fmt_number(t["picks_per_image"])),
        (
            "Picks · adjudications · drawings",
            f"{t['picks']} · {t['adjudications']} · {t['drawings']}",
        ),
        (
            "Estimated MD time",
            f"{t['md_minutes']:.1f} min (drawing every image: {t['md_minutes_all_by_hand']:.1f} "
            f"min; saved {fmt_number(t['md_time_saved'], pct=True)})",
        ),
    ]


def _round_row(r: dict) -> dict:
    return {
        **r,
        "machine": fmt_share(r["machine_preferred"]),
        "redraw": fmt_share(r["redraws"]),
        "per_image": fmt_number(r["picks_per_image"]),
        "dice": fmt_mean(r["dice_accepted"]),
        "dice_manual": fmt_mean(r["dice_manual"]),
        "dice_machine": fmt_mean(r.get("dice_best_machine", {})),
    }


@role_required(Role.ADMIN)
def replay_download(request, run_uuid, name: str):
    run = get_object_or_404(ReplayRun, uuid=run_uuid)
    try:
        data = replay_file(run=run, name=name)
    except (KeyError, FileNotFoundError):
        raise Http404("no such report file (yet)") from None
    response = HttpResponse(data, content_type=CONTENT_TYPES[name.rsplit(".", 1)[-1]])
    if not name.endswith(".png"):
        response["Content-Disposition"] = f'attachment; filename="replay-{run.pk}-{name}"'
    return response
