"""A replay's report, measured from the database rows: per round and in total, the Dice of the
accepted masks against the known masks (beside that of the MDs' drawings alone), the
machine-preferred share, redraw rate, picks per image, hand-drawn share, estimated MD minutes,
and the final networks' held-out metrics with intervals. Written as JSON, Markdown and PNG
plots into the run's folder of the media storage."""

from __future__ import annotations

import json
from typing import Any

from django.db.models import Q

from annotation import storage
from annotation.models import (
    Candidate,
    Decision,
    GroundTruth,
    Image,
    ImageClass,
    Mask,
    ReplayRun,
    ReviewItem,
    Round,
)
from annotation.replay import plots, sim
from annotation.replay.services import ReplayConfig, Simulation
from training import services as training_services
from training import validation
from training.models import ModelVersion, PretrainedEncoder, TrainingRun

FILES = ("report.json", "report.md", *plots.NAMES)


def _share(k: int, n: int) -> dict[str, Any]:
    """A share with its Wilson 95 % interval (training/nets/metrics.py)."""
    if n == 0:
        return {"value": None, "low": None, "high": None, "k": 0, "n": 0}
    low, high = training_services.wilson_interval(k, n)
    return {"value": k / n, "low": low, "high": high, "k": k, "n": n}


def replay_report(*, run: ReplayRun) -> dict[str, Any]:
    """The report's figures, from the rows of the run's rounds (standing decisions only)."""
    config = ReplayConfig.from_dict(run.config)
    simulation = Simulation(run)
    truth_ids = set(simulation.truth_files)
    round_ids = list(run.progress.get("rounds", []))
    rounds = list(Round.objects.filter(pk__in=round_ids).order_by("number"))

    def mask_dice(image_id: int, mask: Mask) -> float:
        return sim.dice(simulation.mask(mask.pk, mask.file.name), simulation.truth(image_id))

    manual = {pk: sim.dice(simulation.drawing(pk), simulation.truth(pk)) for pk in truth_ids}
    per_round: list[dict[str, Any]] = []
    images: dict[int, dict[str, Any]] = {}
    for rnd in rounds:
        if rnd.stage == Round.Stage.FINAL:
            continue
        items = rnd.items.exclude(status=ReviewItem.Status.CANCELLED)
        picks = Decision.objects.filter(item__round=rnd, is_adjudication=False)
        adjudications = Decision.objects.filter(item__round=rnd, is_adjudication=True)
        gts = list(
            GroundTruth.objects.filter(item__round=rnd)
            .select_related("mask", "item")
            .order_by("id")
        )
        accepted = [gt for gt in gts if gt.decision_id is not None]
        redrawn = [gt for gt in gts if gt.decision_id is None]
        machine = [gt for gt in accepted if gt.mask.source == Mask.Source.PREDICTED]
        first_drawings = (
            Candidate.objects.filter(item__round=rnd, mask__source=Mask.Source.DRAWN).count()
            if rnd.stage == Round.Stage.STAGE_I
            else 0
        )
        drawings = first_drawings + len(redrawn)
        seconds = sum(d.seconds for d in picks) + sum(d.seconds for d in adjudications)
        seconds += drawings * config.seconds_per_drawing
        dices = [mask_dice(gt.image_id, gt.mask) for gt in gts]
        best_machine: dict[int, float] = {}  # image → its best network candidate's Dice
        for c in Candidate.objects.filter(
            item__round=rnd, mask__source=Mask.Source.PREDICTED
        ).select_related("mask", "item"):
            value = mask_dice(c.item.image_id, c.mask)
            best_machine[c.item.image_id] = max(value, best_machine.get(c.item.image_id, 0.0))
        decided = len(accepted) + len(redrawn)
        for gt, value in zip(gts, dices, strict=True):
            images[gt.image_id] = {
                "round": rnd.number,
                "source": gt.mask.source,
                "how": "redrawn" if gt.decision_id is None else "picked",
                "dice_accepted": value,
                "dice_manual": manual[gt.image_id],
                "dice_best_machine": best_machine.get(gt.image_id),
            }
        per_round.append(
            {
                "number": rnd.number,
                "stage": rnd.stage,
                "items": items.count(),
                "picks": picks.count(),
                "adjudications": adjudications.count(),
                "accepted": len(accepted),
                "machine_preferred": _share(len(machine), len(accepted)),
                "redraws": _share(len(redrawn), decided),
                "picks_per_image": picks.count() / decided if decided else None,
                "drawings": drawings,
                "dice_accepted": sim.mean_ci(dices),
                "dice_manual": sim.mean_ci([manual[gt.image_id] for gt in gts]),
                "dice_best_machine": sim.mean_ci(list(best_machine.values())),
                "md_minutes": seconds / 60,
            }
        )
    covid = Image.objects.filter(image_class=ImageClass.COVID, pk__in=truth_ids)
    with_gt = [pk for pk in covid.values_list("pk", flat=True) if pk in images]
    hand = [pk for pk in with_gt if images[pk]["source"] == Mask.Source.DRAWN]
    picks_total = sum(r["picks"] for r in per_round)
    decided_total = sum(r["redraws"]["n"] for r in per_round)
    minutes = sum(r["md_minutes"] for r in per_round)
    all_by_hand = len(truth_ids) * config.seconds_per_drawing / 60
    total = {
        "covid_images": len(truth_ids),
        "with_ground_truth": len(with_gt),
        "controls": Image.objects.exclude(image_class=ImageClass.COVID).count(),
        "dice_accepted": sim.mean_ci([images[pk]["dice_accepted"] for pk in with_gt]),
        "dice_manual": sim.mean_ci([manual[pk] for pk in with_gt]),
        "dice_manual_all": sim.mean_ci(list(manual.values())),
        "hand_drawn": _share(len(hand), len(with_gt)),
        "machine_preferred": _share(
            sum(r["machine_preferred"]["k"] for r in per_round),
            sum(r["machine_preferred"]["n"] for r in per_round),
        ),
        "redraws": _share(sum(r["redraws"]["k"] for r in per_round), decided_total),
        "picks": picks_total,
        "adjudications": sum(r["adjudications"] for r in per_round),
        "picks_per_image": picks_total / decided_total if decided_total else None,
        "drawings": sum(r["drawings"] for r in per_round),
        "md_minutes": minutes,
        "md_minutes_all_by_hand": all_by_hand,
        "md_time_saved": 1 - minutes / all_by_hand if all_by_hand else None,
    }
    final = [
        validation.run_card(r)
        for r in TrainingRun.objects.filter(
            round__in=[r for r in rounds if r.stage == Round.Stage.FINAL],
            status=TrainingRun.Status.SUCCEEDED,
        )
        .select_related("round", "model_version")
        .filter(~Q(kind=TrainingRun.Kind.CLASSIFIER))
    ]
    return {
        "replay": str(run.uuid),
        "options": _options(run, config, rounds),
        "dataset": run.dataset,
        "seed": run.seed,
        "config": run.config,
        "rounds": per_round,
        "total": total,
        "final_networks": final,
        "images": {
            str(pk): {"name": name, **images.get(pk, {"dice_manual": manual[pk]})}
            for pk, name in covid.order_by("pk").values_list("pk", "name")
        },
        "notes": [
            "Dice means carry a normal-approximation 95 % interval; shares a Wilson 95 % "
            "interval (training/nets/metrics.py).",
            "best network Dice: per image, the best of the networks' candidates (what an MD "
            "who always picked a machine mask could get).",
            "dice_manual: the simulated MDs' drawings of the same images (the known masks "
            "degraded as configured), i.e. what drawing every image by hand would give.",
            "md_minutes: picks and adjudications at seconds_per_pick, drawings (Stage I and "
            "redraws) at seconds_per_drawing.",
        ],
    }


def _options(run: ReplayRun, config: ReplayConfig, rounds: list[Round]) -> dict[str, Any]:
    """What the review order, the starting weights and the lung filter did, from the rounds'
    configs and their model versions' metrics."""
    versions = list(
        ModelVersion.objects.filter(run__round__in=rounds)
        .select_related("run__round")
        .order_by("run__round__number", "run_id")
    )
    order = {str(r.number): r.config.get("order") for r in rounds}
    start: dict[str, Any] = {"setting": config.start_weights or "scratch", "runs": []}
    pretrained = run.progress.get("pretrained")
    if pretrained is not None:
        row = PretrainedEncoder.objects.filter(pk=pretrained).first()
        if row is not None:
            start["pretraining"] = {
                "id": row.pk,
                "encoder": row.encoder,
                "preset": row.preset,
                "images": len(row.image_ids),
                "epochs": row.epochs,
                "loss_first": row.loss_history[0] if row.loss_history else None,
                "loss_last": row.loss,
                "status": row.status,
            }
    for mv in versions:
        applied = mv.metrics.get("start_weights")
        start["runs"].append(
            {
                "round": mv.run.round.number,
                "network": f"{mv.arch or 'classifier'}:{mv.encoder}",
                "fold": mv.run.fold,
                "matched": (applied or {}).get("matched"),
                "layers": (applied or {}).get("layers"),
                # The file this network's own config started it from (a final round's
                # classifier takes no pretrained encoder): None, from scratch.
                "from": mv.config.get("encoder_weights") or mv.config.get("weights") or None,
            }
        )
    lungs: dict[str, Any] = {
        "setting": config.lung_filter,
        "margin_percent": None,
        "images_with_lung_mask": Image.objects.exclude(lung_mask="").count(),
        "images": Image.objects.count(),
        "rounds": [],
    }
    for rnd in rounds:
        if not (rnd.config.get("lung_filter") or {}):
            continue
        lungs["margin_percent"] = rnd.config["lung_filter"].get("margin_percent")
        counts: dict[str, int] = {}
        removed = 0
        for mv in versions:
            if mv.run.round_id != rnd.pk:
                continue
            for what in mv.metrics.get("lung_filter_by_image", {}).values():
                counts[what["filter"]] = counts.get(what["filter"], 0) + 1
                removed += int(what.get("removed") or 0)
        lungs["rounds"].append(
            {"round": rnd.number, "candidates": counts, "pixels_removed": removed}
        )
    return {"order": order, "start_weights": start, "lung_filter": lungs}


def _options_markdown(options: dict[str, Any]) -> list[str]:
    if not options:
        return []
    start, lungs = options["start_weights"], options["lung_filter"]
    orders = ", ".join(f"round {n}: {o}" for n, o in options["order"].items() if o)
    lines = ["## Options", "", f"- Review order: {orders or '–'}"]
    text = f"- Starting weights: {start['setting']}"
    p = start.get("pretraining")
    if p:
        text += (
            f" — pretraining #{p['id']} of {p['encoder']} ({p['preset']}, {p['epochs']} "
            f"epochs, {p['images']} images, loss {fmt_number(p['loss_first'])} → "
            f"{fmt_number(p['loss_last'])})"
        )
    lines.append(text)
    for r in start["runs"]:
        if r["layers"] is not None:
            lines.append(
                f"  - round {r['round']} {r['network']}"
                + ("" if r["fold"] is None else f" fold {r['fold']}")
                + ": "
                f"{r['matched']} of {r['layers']} layers matched"
            )
        elif start["setting"] != "scratch":
            lines.append(
                f"  - round {r['round']} {r['network']}"
                + ("" if r["fold"] is None else f" fold {r['fold']}")
                + ": "
                + (f"from {r['from']}" if r["from"] else "from scratch")
            )
    if not lungs["setting"]:
        lines.append("- Lung filter: off")
    else:
        lines.append(
            f"- Lung filter: margin {lungs['margin_percent']} %; "
            f"{lungs['images_with_lung_mask']} of {lungs['images']} images have a lung mask"
        )
        for r in lungs["rounds"]:
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(r["candidates"].items()))
            lines.append(
                f"  - round {r['round']}: candidates {counts or 'none'}; "
                f"{r['pixels_removed']} pixels removed"
            )
    return [*lines, ""]


def fmt_mean(ci: dict[str, Any], key: str = "mean") -> str:
    value = ci.get(key)
    if value is None:
        return "–"
    if ci.get("low") is None:
        return f"{value:.3f} (n={ci.get('n', 0)})"
    return f"{value:.3f} [{ci['low']:.3f}, {ci['high']:.3f}] (n={ci['n']})"


def fmt_share(share: dict[str, Any]) -> str:
    if share.get("value") is None:
        return "–"
    return (
        f"{share['value']:.0%} ({share['k']}/{share['n']}; {share['low']:.0%}–{share['high']:.0%})"
    )


def replay_markdown(report: dict[str, Any]) -> str:
    t = report["total"]
    c = report["config"]
    lines = [
        f"# Replay of {report['dataset']}",
        "",
        f"Seed {report['seed']}, preset {c['preset']}"
        + (f" {c['overrides']}" if c["overrides"] else "")
        + f", {c['mds']} simulated MDs, {c['reviewers_per_item']} reviewers per item, "
        f"pick noise {c['pick_noise']}, 'none' below Dice {c['none_below']}; "
        f"drawings: boundary ±{c['boundary_px']} px, "
        f"simplify {c['simplify_px']} px, regions under {c['min_component_px']} px dropped.",
        "",
        "## Total",
        "",
        f"- COVID-19 images: {t['covid_images']} ({t['with_ground_truth']} with ground truth); "
        f"controls: {t['controls']}",
        f"- Dice of the accepted masks vs the known masks: {fmt_mean(t['dice_accepted'])}",
        f"- Dice of the MDs' drawings alone (same images): {fmt_mean(t['dice_manual'])}",
        f"- Hand-drawn share: {fmt_share(t['hand_drawn'])}",
        f"- Machine-preferred share of picks: {fmt_share(t['machine_preferred'])}",
        f"- Redraw rate: {fmt_share(t['redraws'])}",
        f"- Picks: {t['picks']} ({fmt_number(t['picks_per_image'])} per image), adjudications: "
        f"{t['adjudications']}, drawings: {t['drawings']}",
        f"- Estimated MD time: {t['md_minutes']:.1f} min, against "
        f"{t['md_minutes_all_by_hand']:.1f} min drawing every image "
        f"(saved: {fmt_number(t['md_time_saved'], pct=True)})",
        "",
        "## Rounds",
        "",
        "| round | stage | items | picks | adjud. | accepted | machine-preferred | redraws | "
        "picks/image | drawings | Dice accepted | Dice drawings | best network Dice | MD min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rounds"]:
        lines.append(
            f"| {r['number']} | {r['stage']} | {r['items']} | {r['picks']} | "
            f"{r['adjudications']} | {r['accepted']} | {fmt_share(r['machine_preferred'])} | "
            f"{fmt_share(r['redraws'])} | {fmt_number(r['picks_per_image'])} | {r['drawings']} | "
            f"{fmt_mean(r['dice_accepted'])} | {fmt_mean(r['dice_manual'])} | "
            f"{fmt_mean(r['dice_best_machine'])} | {r['md_minutes']:.1f} |"
        )
    lines += ["", *_options_markdown(report.get("options", {}))]
    lines += ["## Final networks (held out)", ""]
    if not report["final_networks"]:
        lines.append("No final networks were trained.")
    for card in report["final_networks"]:
        lines.append(
            f"- **{card['name']}** ({card['preset']}, {card['input_size']} px, "
            f"{card['train_masks']} training masks, {card['held_out_images']} held-out images)"
            + ("" if card["validated"] else f" — not validated: {'; '.join(card['reasons'])}")
        )
        for level, metrics in card["levels"].items():
            parts = [
                f"{name} {m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"
                for name, m in metrics.items()
                if m["value"] is not None and m["low"] is not None
            ]
            lines.append(f"  - {level}: " + ", ".join(parts))
    lines += ["", *[f"_{n}_" for n in report["notes"]], ""]
    lines += [f"![{name}]({name})" for name in plots.NAMES]
    return "\n".join(lines) + "\n"


def fmt_number(value: float | None, *, pct: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:.0%}" if pct else f"{value:.2f}"


def replay_report_write(*, run: ReplayRun) -> dict[str, Any]:
    """Measures the run and stores report.json, report.md and the plots in its folder; the
    figures are kept on the run too, for its page."""
    report = replay_report(run=run)
    files = {
        "report.json": json.dumps(report, indent=2, sort_keys=True).encode(),
        "report.md": replay_markdown(report).encode(),
        **plots.replay_plots(report),
    }
    stored = {name: storage.store(f"{run.folder}/{name}", data) for name, data in files.items()}
    run.refresh_from_db(fields=["progress"])
    run.report = report
    run.progress = {**run.progress, "files": stored}
    run.save(update_fields=["report", "progress"])
    return report


def replay_file(*, run: ReplayRun, name: str) -> bytes:
    """One of the run's report files (FILES), as last written.

    Raises:
        KeyError: no such file, or the report is not written yet.
    """
    if name not in FILES:
        raise KeyError(name)
    return storage.read(run.progress.get("files", {})[name])


__all__ = ["FILES", "replay_file", "replay_markdown", "replay_report", "replay_report_write"]
