"""study.md's Study 2 tables (pipeline.study.study_md) from hand-built analysis dicts:
the lines expected by hand, and the warnings that say when a number is unreadable."""

from pipeline.study import study_md


def _summary(mean, ci=None, n=3):
    return {"mean": mean, "ci95": ci, "n": n}


def _share(gain, room, seeds=(0, 1, 2)):
    return {"share": gain / room if room > 0 else None, "gain": gain, "headroom": room,
            "seeds": list(seeds)}  # fmt: skip


def _headroom(room):
    return {
        "headroom": room,
        "share": {"har": _share(0.02, 0.08), "erm_oracle_filter": _share(0.06, 0.08)},
    }


def test_headroom_table_labels_its_gain_and_the_other_ceiling():
    ceilings = {"erm_clean", "erm_oracle_filter"}
    lines = study_md._headroom_lines(
        "main", "erm_clean", _headroom(_summary(0.08, (0.05, 0.11))), ceilings, "noisy_rare", "erm"
    )
    assert lines[1] == (
        "## Headroom on noisy_rare, setting `main`: `erm_clean` - `erm` = "
        "8.0 [5.0, 11.0] (n=3) points"
    )
    assert lines[5:] == [
        "| method | gain over `erm` on these seeds (points) | headroom on these seeds (points) "
        "| share of the headroom | seeds |",
        "|---|---|---|---|---|",
        "| har | 2.0 | 8.0 | 25% | [0, 1, 2] |",
        "| erm_oracle_filter (the other ceiling) | 6.0 | 8.0 | 75% | [0, 1, 2] |",
    ]


def test_a_share_shows_the_headroom_of_its_own_seeds():
    """A row missing a seed divides by the headroom over its seeds, not the heading's:
    the row shows that denominator, so gain / headroom reads as the share printed."""
    row = {
        "headroom": _summary(0.022, (0.01, 0.034)),
        "share": {"cl_filter_har": _share(0.049, 0.056, seeds=(0, 1))},
    }
    lines = study_md._headroom_lines("main", "erm_clean", row, {"erm_clean"}, "g", "erm")
    assert lines[-1] == "| cl_filter_har | 4.9 | 5.6 | 88% | [0, 1] |"


def test_headroom_says_when_its_shares_cannot_be_read():
    ceilings = {"erm_clean"}
    unresolved = study_md._headroom_lines(
        "main", "erm_clean", _headroom(_summary(0.01, (-0.02, 0.04))), ceilings, "g", "erm"
    )
    assert unresolved[3].startswith("The headroom's interval includes 0")
    negative = study_md._headroom_lines(
        "main", "erm_clean", _headroom(_summary(-0.01, (-0.03, 0.01))), ceilings, "g", "erm"
    )
    assert negative[3] == "The headroom is not positive: no share of it is defined."
    clear = study_md._headroom_lines(
        "main", "erm_clean", _headroom(_summary(0.08, (0.05, 0.11))), ceilings, "g", "erm"
    )
    assert not any("headroom is not" in x or "includes 0" in x for x in clear)


def test_drop_table_has_the_mean_then_each_seed():
    seeds = {
        0: {"dropped": 120, "kept": 880, "wrongly_labelled": 60, "precision": 0.4, "recall": 0.8},
        1: {"dropped": 100, "kept": 900, "wrongly_labelled": 50, "precision": None,
            "recall": 0.6},
    }  # fmt: skip
    rows = {
        "cl_filter": {
            "dropped": _summary(110.0, n=2),
            "kept": _summary(890.0, n=2),
            "wrongly_labelled": _summary(55.0, n=2),
            "precision": _summary(0.4, n=1),
            "recall": _summary(0.7, (0.5, 0.9), n=2),
            "per_seed": seeds,
        }
    }
    assert study_md._drop_lines("main", rows)[5:] == [
        "| cl_filter | mean | 110 | 890 | 55 | 40.0 (n=1) | 70.0 [50.0, 90.0] (n=2) |",
        "| cl_filter | 0 | 120 | 880 | 60 | 40.0 | 80.0 |",
        "| cl_filter | 1 | 100 | 900 | 50 | n/a | 60.0 |",
    ]
    assert study_md._drop_lines("main", {}) == []


def test_a_p_value_at_the_permutation_floor_is_not_printed_as_zero():
    mem = {"setting": "main", "points": [{}] * 28, "test": "Spearman", "rho": -0.9,
           "p_value": 1 / 10_001, "rho_per_method": {"har": -0.5}}  # fmt: skip
    text = "\n".join(study_md._memorization_gain_lines(mem, "noisy_rare", "erm"))
    assert "rho = -0.90, p = 0.0001 " in text and "p = 0.000 " not in text


def _selection(selected, grid, oracle):
    return {
        "rule": "r",
        "grid_seeds": [0, 1],
        "table": {
            f"{x:g}": {"mean": 0.5, "values": [0.5, 0.5], "status": "complete", "se": 0.01}
            for x in grid
        },  # fmt: skip
        "selected": selected,
        "pending": False,
        "grid": sorted(grid),
        "oracle_on_test": {
            "lam": oracle,
            "test_g": {f"{x:g}": _summary(0.3, n=2) for x in grid},  # in the grid's order
        },
    }


def test_selection_names_an_edge_pick_and_lists_the_oracle_view_in_lambda_order():
    lines = study_md._selection_lines("har", _selection(0.25, [1.0, 4.0, 0.25], 64.0), "g")
    text = "\n".join(lines)
    assert "**The selection is at the grid's edge**" in text
    assert "Oracle (selected on the TEST set, optimistic, for comparison only): 64." in text
    view = [x.split(" | ")[0] for x in lines if x.startswith("| ") and "(n=2)" in x]
    assert view == ["| 0.25", "| 1", "| 4"]
    inside = "\n".join(
        study_md._selection_lines("har", _selection(1.0, [0.25, 1.0, 4.0], 1.0), "g")
    )
    assert "grid's edge" not in inside


def test_the_reference_regime_is_shown_per_seed():
    fits = {0: {"fit_accuracy": 1.0, "fit_memorized": 0.995}, 3: {"fit_accuracy": 0.987,
            "fit_memorized": None}}  # fmt: skip
    assert study_md._regime_seed_lines("erm", fits) == [
        "",
        "`erm` per seed at its last epoch (training accuracy vs noisy labels / wrong labels "
        "memorized, %): seed 0: 100.0 / 99.5; seed 3: 98.7 / n/a.",
    ]
    assert study_md._regime_seed_lines("erm", None) == []


def test_comparisons_point_to_the_differences_against_the_reference():
    rows = {"har - drw": {"g": _summary(0.01), "overall": _summary(0.0)}}
    lines = study_md._comparison_lines("main", rows, "erm")
    assert "Each method - `erm`, the pre-registered comparisons against `erm` included" in lines[3]
    assert lines[-1] == "| har - drw | 1.0 (n=3) | 0.0 (n=3) |"
