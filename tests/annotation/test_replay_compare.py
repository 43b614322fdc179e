"""Differences between two replays: Newcombe's interval for shares, a paired bootstrap for Dice."""

from __future__ import annotations

import io
import json

import pytest

from annotation.replay.compare import (
    compare_markdown,
    newcombe_difference,
    paired_bootstrap,
    replay_compare,
)


def test_newcombe_matches_the_published_example():
    # Newcombe (1998), Stat Med 17:873, table II example (56/70 vs 48/80): 0.0524 to 0.3339.
    result = newcombe_difference(56, 70, 48, 80)
    assert result["diff"] == pytest.approx(0.2)
    assert result["low"] == pytest.approx(0.0524, abs=5e-4)
    assert result["high"] == pytest.approx(0.3339, abs=5e-4)


def test_newcombe_is_wide_on_small_samples_and_none_without_any():
    small = newcombe_difference(1, 4, 3, 4)
    assert small["low"] < small["diff"] == -0.5 < small["high"]
    assert small["low"] >= -1 and small["high"] <= 1
    assert newcombe_difference(0, 0, 1, 2)["diff"] is None


def test_paired_bootstrap_pairs_the_values():
    # Constant differences: no spread whatever the resampling.
    exact = paired_bootstrap([0.5, 0.7, 0.9], [0.4, 0.6, 0.8], seed=1)
    assert exact["diff"] == pytest.approx(0.1)
    assert exact["low"] == pytest.approx(0.1) and exact["high"] == pytest.approx(0.1)
    spread = paired_bootstrap([0.9, 0.2, 0.6, 0.8], [0.5, 0.4, 0.5, 0.5], seed=1)
    assert spread["low"] < spread["diff"] < spread["high"]
    assert spread == paired_bootstrap([0.9, 0.2, 0.6, 0.8], [0.5, 0.4, 0.5, 0.5], seed=1)
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap([0.1], [0.1, 0.2])


def report(uuid: str, images: dict[str, tuple[float, float | None]], **totals) -> dict:
    """A replay report as far as the comparison reads it: per image name, (Dice accepted,
    best network Dice); totals as {"k", "n"} shares and MD minutes."""
    shares = {key: {"k": 0, "n": 0} for key in ("hand_drawn", "redraws", "machine_preferred")}
    return {
        "replay": uuid,
        "seed": 1,
        "config": {"preset": "small", "lung_filter": uuid.startswith("lung")},
        "images": {
            str(i): {"name": name, "dice_accepted": acc, "dice_best_machine": best}
            for i, (name, (acc, best)) in enumerate(images.items())
        },
        "total": {**shares, "md_minutes": 10.0, **totals},
    }


def test_replays_pair_their_images_by_name_and_pool_the_pairs():
    # Image pks differ between replays (each has its own database): names pair them.
    lung1 = report(
        "lung1",
        {"a.png": (0.9, 0.8), "b.png": (0.8, None), "only-in-a.png": (0.1, 0.1)},
        hand_drawn={"k": 1, "n": 3},
        md_minutes=8.0,
    )
    base1 = report("base1", {"b.png": (0.7, 0.5), "a.png": (0.8, 0.6)}, hand_drawn={"k": 2, "n": 2})
    lung2 = report("lung2", {"a.png": (0.6, 0.7)}, hand_drawn={"k": 0, "n": 1})
    base2 = report("base2", {"a.png": (0.5, 0.4)}, hand_drawn={"k": 1, "n": 1})
    c = replay_compare([(lung1, base1), (lung2, base2)])
    assert c["images"] == 3  # a and b in the first pair, a in the second
    accepted = c["per_image"]["dice_accepted"]
    assert accepted["n"] == 3 and accepted["diff"] == pytest.approx(0.1)
    best = c["per_image"]["dice_best_machine"]  # b has no candidate in lung1: left out
    assert best["n"] == 2 and best["diff"] == pytest.approx((0.2 + 0.3) / 2)
    hand = c["shares"]["hand_drawn"]
    assert (hand["a"], hand["b"]) == ({"k": 1, "n": 4}, {"k": 3, "n": 3})
    assert hand["diff"] == pytest.approx(1 / 4 - 1)
    assert c["md_minutes"] == {"a": 18.0, "b": 20.0}
    assert [a["options"] for a in c["a"]] == ["preset small, lung filter"] * 2
    text = compare_markdown(c)
    assert "| hand drawn | 1/4 | 3/3 | -75 pt [" in text
    assert "| Dice of accepted masks (paired, n=3) | | | +0.100 [+0.100, +0.100] |" in text


def test_replays_of_other_data_or_with_twin_names_are_refused():
    a = report("a", {"x.png": (0.5, 0.5)})
    with pytest.raises(ValueError, match="share no image"):
        replay_compare([(a, report("b", {"y.png": (0.5, 0.5)}))])
    twins = report("t", {"x.png": (0.5, 0.5)})
    twins["images"]["9"] = {"name": "x.png", "dice_accepted": 0.1, "dice_best_machine": None}
    with pytest.raises(ValueError, match="same name"):
        replay_compare([(twins, a)])
    with pytest.raises(ValueError, match="nothing to compare"):
        replay_compare([])


def test_the_command_compares_report_files(tmp_path):
    from django.core.management import CommandError, call_command

    paths = []
    for name, acc in (("a", 0.9), ("b", 0.7)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(report(name, {"x.png": (acc, 0.5), "y.png": (acc, 0.5)})))
        paths.append(str(path))
    out = io.StringIO()
    call_command("replay_compare", *paths, json=str(tmp_path / "c.json"), stdout=out)
    assert "+0.200 [+0.200, +0.200]" in out.getvalue()
    assert json.loads((tmp_path / "c.json").read_text())["images"] == 2
    with pytest.raises(CommandError, match="odd number"):
        call_command("replay_compare", paths[0])
    with pytest.raises(CommandError, match="neither a report.json nor a replay"):
        call_command("replay_compare", paths[0], "not-a-uuid")
