"""study.md, a study's tables, from the study.json dict alone (figures: plots)."""

from __future__ import annotations

import numpy as np

from pipeline.study.plots import FIT_ACC, FIT_MEM


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _ci(s: dict) -> str:
    """ "mean [low, high] (n)" in percent points."""
    if not s or s.get("mean") is None:
        return "n/a"
    ci = s.get("ci95")
    band = f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""
    return f"{100 * s['mean']:.1f}{band} (n={s['n']})"


def _cut_lines(cut: dict | None) -> list[str]:
    """The study's cut (report.cut_summary): its note and what each cut method ran."""
    if not cut:
        return []
    lines = ["", f"**Cut:** {cut['note']} Runs not finished when it was made were not run:", ""]
    for m, r in cut["methods"].items():
        lines.append(
            f"- {m}: seeds {r['seeds_finished']} finished of {r['seeds_registered']} registered"
        )
    return lines


def _tau_lines(cells: dict) -> list[str]:
    """Whether the runs of each cell trained with one tau (study_report.tau_by_cell)."""
    if not cells:
        return []
    differ = {c: v for c, v in cells.items() if v["max_abs_difference"] > 0}
    if not differ:
        return ["", f"Every cell's runs trained with the same tau ({len(cells)} cells)."]
    lines = ["", "**tau differs between runs of one cell** (their pairing is weaker):", ""]
    lines += [
        f"- {c}: {v['runs']} runs, max |difference| {v['max_abs_difference']:.3g}"
        for c, v in differ.items()
    ]
    return lines


def _trained_by_lines(trained_by: list | None) -> list[str]:
    """The commits that trained the done runs (report.trained_by)."""
    if not trained_by:
        return []
    parts = []
    for entry in trained_by:
        code, n = entry["code"], entry["runs"]
        if code is None:
            label = "not recorded (records written before records kept it)"
        elif code["commit"] is None:
            label = "unknown (not run from a git checkout)"
        else:
            label = _code_label(code)
        if entry.get("resumed_from"):
            begun = ", ".join(_code_label(c) for c in entry["resumed_from"])
            label += f" (resuming runs begun by {begun})"
        parts.append(f"{label}: {n} run{'s' * (n != 1)}")
    return ["", "Runs trained by the code of " + "; ".join(parts) + "."]


def _code_label(code: dict | None) -> str:
    if code is None or code["commit"] is None:
        return "unknown code"
    return f"`{code['commit']}`" + (" with uncommitted changes" if code["dirty"] else "")


def markdown(result: dict, plots: dict, runtimes: dict) -> str:
    """study.md: the state, each lambda selection, each setting's tables, failures,
    figures and runtimes."""
    primary, ref = result["primary_group"], result["reference"]
    state = "COMPLETE" if result["complete"] else "PARTIAL (runs still to come; figures may change)"
    if result.get("cut"):
        state += ", WITH A CUT"
    code = result["code"]
    lines = [
        f"# Study `{result['study']}`: {state}",
        "",
        f"Runs finished: {result['runs_done']} of {result['runs_planned']} planned; "
        f"failed: {len(result['runs_failed'])}. Aggregated by the code of {code['commit']}"
        + (" (uncommitted changes)" if code["dirty"] else ""),
        *_trained_by_lines(result.get("trained_by")),
        "",
        "All accuracies (%) are on the clean test set at each run's final epoch: mean "
        "[95% t-interval] (n seeds).",
    ]
    lines += _cut_lines(result.get("cut"))
    lines += _tau_lines(result.get("tau_by_cell", {}))
    for method, sel in result["selection"].items():
        lines += _selection_lines(method, sel, primary)
    for setting, agg in result["settings"].items():
        lines += _setting_lines(setting, agg, primary, ref)
    for method, regime in result.get("regime_map", {}).items():
        lines += _regime_lines(method, regime, primary, ref)
    if result.get("analysis"):
        lines += _analysis_lines(result["analysis"], primary, ref)
    if result["runs_failed"]:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {k}: {result['runs'][k]['failed']}" for k in result["runs_failed"]]
    if plots:
        lines += ["", "## Figures", ""]
        lines += [f"![{title}]({name})" for title, name in plots.items()]
    if runtimes:
        lines += _runtime_lines(runtimes)
    return "\n".join(lines) + "\n"


def _selection_lines(method: str, sel: dict, primary: str) -> list[str]:
    """The validation table that selected a method's lambda, and the oracle beside it."""
    lines = [
        "",
        f"## lambda selection for `{method}` (validation split, noisy labels)",
        "",
        f"Rule: {sel['rule']}. Grid seeds: {sel['grid_seeds']}.",
        "",
        "| lam | validation mean per-class accuracy per seed (%) | mean (%) | "
        "standard error of the mean, validation sampling only (%) | status |",
        "|---|---|---|---|---|",
    ]
    for lam, row in sel["table"].items():
        vals = ", ".join(v if isinstance(v, str) else _pct(v) for v in row["values"])
        lines.append(
            f"| {lam} | {vals} | {_pct(row['mean'])} | {_pct(row.get('se'))} | {row['status']} |"
        )
    if sel.get("extension_rule"):
        added = ", ".join(f"{x:g}" for x in sel["added"]) or "none"
        lines += ["", f"Grid extension: {sel['extension_rule']}. Added: {added}."]
    lines += [
        "",
        "The standard error is the binomial one of the validation examples (each class's "
        "accuracy, then the mean over classes and seeds); it leaves out the seed-to-seed "
        "variation of training, and lambdas compared on the same examples differ by less "
        "noise than it suggests.",
    ]
    chosen = "pending" if sel["selected"] is None else f"{sel['selected']:g}"
    oracle = sel["oracle_on_test"]
    best = "n/a" if oracle["lam"] is None else f"{oracle['lam']:g}"
    lines += [
        "",
        f"Selected lam: **{chosen}**. Oracle (selected on the TEST set, optimistic, "
        f"for comparison only): {best}.",
    ]
    grid = sel.get("grid") or []
    if sel["selected"] is not None and len(grid) > 1 and sel["selected"] in (min(grid), max(grid)):
        lines += [
            "",
            "**The selection is at the grid's edge** and the grid may grow no further on "
            "that side: the best lambda may lie beyond the values tried.",
        ]
    lines += ["", f"| lam | {primary} test accuracy, grid seeds (oracle view) |", "|---|---|"]
    for lam, s in sorted(oracle[f"test_{primary}"].items(), key=lambda kv: float(kv[0])):
        lines.append(f"| {lam} | {_ci(s)} |")
    return lines


def _setting_lines(setting: str, agg: dict, primary: str, ref: str) -> list[str]:
    """A setting's accuracy and memorization per method, paired differences, per class."""
    methods = agg["methods"]
    groups = next((list(r["groups"]) for r in methods.values() if r["groups"]), [primary])
    lines = [
        "",
        f"## Setting `{setting}`",
        "",
        "| method | lam | seeds done / planned | "
        + " | ".join(groups)
        + " | overall | train acc. vs noisy labels | wrong labels memorized |",
        "|---" * (len(groups) + 6) + "|",
    ]
    for m, r in methods.items():
        lam = "pending" if r["lam"] is None else f"{r['lam']:g}"
        mem = r["memorization"]
        lines.append(
            f"| {m} | {lam} | {len(r['seeds_done'])} / {len(r['seeds_planned'])} | "
            + " | ".join(_ci(r["groups"].get(g)) for g in groups)
            + f" | {_ci(r['overall'])} | {_ci(mem[FIT_ACC])} | {_ci(mem[FIT_MEM])} |"
        )
    lines += _regime_seed_lines(ref, methods.get(ref, {}).get("last_epoch_fit"))
    lines += [
        "",
        f"Paired difference against `{ref}` on the same seeds (percent points):",
        "",
        "| method | " + " | ".join(groups) + " | overall |",
        "|---" * (len(groups) + 2) + "|",
    ]
    for m, d in agg[f"paired_minus_{ref}"].items():
        lines.append(
            f"| {m} - {ref} | " + " | ".join(_ci(d.get(g)) for g in [*groups, "overall"]) + " |"
        )
    lines += _memorization_lines(methods)
    num_classes = max((len(r["per_class"]) for r in methods.values()), default=0)
    if num_classes:
        lines += [
            "",
            "Per class (mean over seeds, %):",
            "",
            "| method | " + " | ".join(str(c) for c in range(num_classes)) + " |",
            "|---" * (num_classes + 1) + "|",
        ]
        for m, r in methods.items():
            if r["per_class"]:
                lines.append(
                    f"| {m} | " + " | ".join(_pct(s["mean"]) for s in r["per_class"]) + " |"
                )
    return lines


def _regime_seed_lines(ref: str, fits: dict | None) -> list[str]:
    """The reference's last-epoch fit per seed: whether each seed ran in the regime
    where it memorizes its noisy labels (the protocol's criterion is judged on these)."""
    if not fits:
        return []
    cells = [
        f"seed {seed}: {_pct(f.get(FIT_ACC))} / {_pct(f.get(FIT_MEM))}" for seed, f in fits.items()
    ]
    return [
        "",
        f"`{ref}` per seed at its last epoch (training accuracy vs noisy labels / wrong "
        "labels memorized, %): " + "; ".join(cells) + ".",
    ]


def _memorization_lines(methods: dict) -> list[str]:
    """Per method and evaluated epoch (1-based; those where any method has a value):
    training accuracy against the noisy labels / wrong labels memorized, mean over the
    seeds done, % (the curves of the memorization figure, as numbers)."""
    curves = {m: r["curves"] for m, r in methods.items() if r["curves"].get(FIT_MEM)}
    epochs = sorted({e for c in curves.values() for e, v in enumerate(c[FIT_MEM]) if v is not None})
    if not epochs:
        return []
    lines = [
        "",
        "Memorization per evaluated epoch (training accuracy vs noisy labels / wrong "
        "labels memorized, mean over the seeds done, %):",
        "",
        "| method | " + " | ".join(f"epoch {e + 1}" for e in epochs) + " |",
        "|---" * (len(epochs) + 1) + "|",
    ]
    for m, c in curves.items():
        cells = []
        for e in epochs:
            pair = [c.get(k)[e] if c.get(k) and e < len(c[k]) else None for k in (FIT_ACC, FIT_MEM)]
            cells.append("" if pair == [None, None] else " / ".join(_pct(v) for v in pair))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def _regime_lines(method: str, regime: dict, primary: str, ref: str) -> list[str]:
    """The regime map's table: one row per setting."""
    lines = [
        "",
        f"## Regime map: `{method}` - `{ref}` on {primary}",
        "",
        f"Per setting, on the seeds every setting runs ({regime['seeds']}): the paired "
        f"difference on {primary} (percent points), and each method's memorization at "
        "its last epoch (training accuracy against the noisy labels; wrongly-labelled "
        "training examples predicted as their wrong label).",
        "",
        f"| setting | {method} - {ref} | {ref}: train acc. | {ref}: memorized | "
        f"{method}: train acc. | {method}: memorized |",
        "|---|---|---|---|---|---|",
    ]
    for setting, row in regime["settings"].items():
        mem = row["memorization"]
        lines.append(
            f"| {setting} | {_ci(row['paired'])} | {_ci(mem[ref][FIT_ACC])} | "
            f"{_ci(mem[ref][FIT_MEM])} | {_ci(mem[method][FIT_ACC])} | "
            f"{_ci(mem[method][FIT_MEM])} |"
        )
    return lines


def _analysis_lines(analysis: dict, primary: str, ref: str) -> list[str]:
    """Study 2's tables (pipeline.study.analysis): comparisons, headroom, drops,
    memorization against gain, tau against the true noise."""
    lines = []
    for setting, rows in analysis["comparisons"].items():
        lines += _comparison_lines(setting, rows, ref)
    for setting, ceilings in analysis["headroom"].items():
        for ceiling, row in ceilings.items():
            lines += _headroom_lines(setting, ceiling, row, set(ceilings), primary, ref)
    for setting, rows in analysis["training_sets"].items():
        lines += _drop_lines(setting, rows)
    lines += _memorization_gain_lines(analysis["memorization_vs_gain"], primary, ref)
    lines += _tau_noise_lines(analysis["tau_vs_noise"])
    return lines


def _p(p) -> str:
    """A permutation p-value: its floor is 1 / (relabellings + 1), so 4 decimals."""
    return "n/a" if p is None else f"{p:.4f}"


def _comparison_lines(setting: str, rows: dict, ref: str) -> list[str]:
    if not rows:
        return []
    groups = list(next(iter(rows.values())))
    lines = [
        "",
        f"## Pre-registered comparisons, setting `{setting}` (paired, points)",
        "",
        f"Each method - `{ref}`, the pre-registered comparisons against `{ref}` included, "
        "is in the setting's paired-difference table above.",
        "",
        "| comparison | " + " | ".join(groups) + " |",
        "|---" * (len(groups) + 1) + "|",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(_ci(row[g]) for g in groups) + " |")
    return lines


def _headroom_lines(setting, ceiling, row, ceilings, primary, ref) -> list[str]:
    """One ceiling's headroom and each method's share of it, with what makes a share
    unreadable: a headroom that is not positive, or whose interval includes 0."""
    room = row["headroom"]
    lines = [
        "",
        f"## Headroom on {primary}, setting `{setting}`: `{ceiling}` - `{ref}` = "
        f"{_ci(room)} points",
        "",
    ]
    mean, ci = room.get("mean") if room else None, room.get("ci95") if room else None
    if mean is not None and mean <= 0:
        lines += ["The headroom is not positive: no share of it is defined.", ""]
    elif ci is not None and ci[0] <= 0:
        lines += [
            "The headroom's interval includes 0: the shares divide by a difference the "
            "seeds do not resolve, and are unstable.",
            "",
        ]
    lines += [
        "A share is the gain divided by the headroom on the seeds of its row, which differs "
        "from the headroom above when a row lacks a seed.",
        "",
        f"| method | gain over `{ref}` on these seeds (points) | headroom on these seeds "
        "(points) | share of the headroom | seeds |",
        "|---|---|---|---|---|",
    ]
    for method, share in row["share"].items():
        frac = share["share"]
        name = f"{method} (the other ceiling)" if method in ceilings else method
        lines.append(
            f"| {name} | {_pct(share['gain'])} | {_pct(share['headroom'])} | "
            f"{'n/a' if frac is None else f'{100 * frac:.0f}%'} | {share['seeds']} |"
        )
    return lines


def _drop_lines(setting: str, rows: dict) -> list[str]:
    """What each dropping method dropped: the mean over seeds, then each seed's run."""
    if not rows:
        return []

    def num(v):
        return "n/a" if v is None else f"{v:.0f}"

    lines = [
        "",
        f"## Examples dropped, setting `{setting}` (precision and recall against the "
        "known flips, %)",
        "",
        "| method | seed | dropped | kept | wrongly labelled in the training set, before "
        "the drop | precision | recall |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, r in rows.items():
        lines.append(
            f"| {method} | mean | {num(r['dropped']['mean'])} | {num(r['kept']['mean'])} | "
            f"{num(r['wrongly_labelled']['mean'])} | {_ci(r['precision'])} | "
            f"{_ci(r['recall'])} |"
        )
        for seed, t in r.get("per_seed", {}).items():
            lines.append(
                f"| {method} | {seed} | {num(t['dropped'])} | {num(t['kept'])} | "
                f"{num(t['wrongly_labelled'])} | {_pct(t['precision'])} | {_pct(t['recall'])} |"
            )
    return lines


def _memorization_gain_lines(mem: dict, primary: str, ref: str) -> list[str]:
    rho = "n/a" if mem["rho"] is None else f"{mem['rho']:+.2f}"
    lines = [
        "",
        f"## Gain against memorization, setting `{mem['setting']}`",
        "",
        f"Over {len(mem['points'])} (method, seed) pairs: gain on {primary} against the "
        f"change in wrong labels memorized (both against `{ref}`). {mem['test']}: "
        f"rho = {rho}, p = {_p(mem['p_value'])} (negative: gains go with less "
        "memorization). Per method (descriptive): "
        + ", ".join(
            f"{m} {'n/a' if r is None else f'{r:+.2f}'}"
            for m, r in mem.get("rho_per_method", {}).items()
        )
        + ".",
    ]
    rest = mem.get("without_drops")
    if rest and rest["methods_left_out"]:
        r_rho = "n/a" if rest["rho"] is None else f"{rest['rho']:+.2f}"
        lines += [
            "",
            f"Without {', '.join(rest['methods_left_out'])} (descriptive, not "
            f"pre-registered: a run that drops examples never trains on the wrong labels "
            f"it dropped), over {rest['points']} pairs: rho = {r_rho}, "
            f"p = {_p(rest['p_value'])}.",
        ]
    return lines


def _tau_noise_lines(cells: dict) -> list[str]:
    if not cells:
        return []
    lines = [
        "",
        "## tau against the true noise per class (noisy label)",
        "",
        "true_noise: over the training examples (those tau and the runs use); "
        "true_noise_train_split: over the train split, its validation examples included.",
        "",
    ]
    for cell, row in cells.items():
        for key in ("tau", "err", "true_noise", "true_noise_train_split"):
            vals = row.get(key) or []
            shown = ", ".join("n/a" if v is None else f"{v:.2f}" for v in vals)
            lines.append(f"- {cell} {key}: {shown}")
    return lines


def _runtime_lines(runtimes: dict) -> list[str]:
    lines = [
        "",
        "## Runtime (train stage, wall clock)",
        "",
        "Runs resumed from an earlier attempt are left out (their records say so; "
        "records written before records kept it do not).",
        "",
        "| setting, kind | runs | mean s | total s |",
        "|---|---|---|---|",
    ]
    for key, runs in runtimes.items():
        v = list(runs.values())
        lines.append(f"| {key} | {len(v)} | {np.mean(v):.0f} | {np.sum(v):.0f} |")
    return lines
