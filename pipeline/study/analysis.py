"""Study 2's analyses (issue 30), from the collected runs: numbers in, numbers out.

- `comparisons`: the study's pre-registered paired differences a - b (beside those
  against the reference), per group and overall, on the seeds both finished.
- `headroom`: per ceiling (clean labels, the oracle filter), ceiling - reference on
  the primary group, and the share of it each method captures: mean(method -
  reference) / mean(ceiling - reference) over the seeds all three finished (a ratio of
  means; None when the headroom's mean is not positive).
- `training_sets`: per method that drops examples, what it dropped, summarized over
  seeds (dropped, precision and recall of the drop against the known flips).
- `memorization_vs_gain`: whether a seed's gain goes with less memorization. Over
  every (method, seed) of the selection setting except the reference and the
  ceilings: gain = method - reference on the primary group, and the change in the
  share of wrong labels memorized at the last epoch (method - reference). Spearman's
  rank correlation with a two-sided permutation p-value (PERMUTATIONS relabellings,
  a fixed seed: the same runs give the same number); a negative rho means the gains
  go with less memorization. Beside it, labelled descriptive: the same without the
  methods that drop examples.
- `tau_vs_noise`: per cell, tau and its inputs beside each class's true noise (the
  share of the training examples with that noisy label whose clean label differs;
  also over the train split with its validation examples, as the records hold it).
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.study import stats as st

PERMUTATIONS = 10_000
MEMORIZED = "fit_memorized"


def method_runs(runs: dict, aggregate: dict) -> dict:
    """setting -> method -> seed -> run, restricted to each method's selected lambda."""
    out = {}
    for setting, agg in aggregate.items():
        out[setting] = {}
        for method, summary in agg["methods"].items():
            lam = summary["lam"]
            out[setting][method] = {
                s: r
                for s, r in _by_seed_lam(runs, setting, method, lam).items()
                if s in summary["seeds_done"]
            }
    return out


def _by_seed_lam(runs: dict, setting: str, method: str, lam) -> dict[int, dict]:
    """seed -> finished run of `method` at `lam` in `setting`."""
    if lam is None:
        return {}
    return {
        r["seed"]: r
        for r in runs.values()
        if "failed" not in r
        and (r["setting"], r["method"]) == (setting, method)
        and float(r["lam"]) == float(lam)
    }


def _primary(run: dict, group: str) -> float:
    return run["test"]["groups"][group]


def comparisons(per_method: dict, pairs, groups) -> dict:
    """setting -> "a - b" -> group / "overall" -> paired summary."""
    out = {}
    for setting, methods in per_method.items():
        rows = {}
        for a, b in pairs:
            if a not in methods or b not in methods:
                continue
            ra, rb = methods[a], methods[b]
            row = {
                g: st.paired(
                    {s: r["test"]["groups"][g] for s, r in ra.items()},
                    {s: r["test"]["groups"][g] for s, r in rb.items()},
                )
                for g in groups
            }
            row["overall"] = st.paired(
                {s: r["test"]["overall"] for s, r in ra.items()},
                {s: r["test"]["overall"] for s, r in rb.items()},
            )
            rows[f"{a} - {b}"] = row
        out[setting] = rows
    return out


def headroom(per_method: dict, ceilings, reference: str, group: str) -> dict:
    """setting -> ceiling -> {"headroom": paired summary, "share": method -> {...}}."""
    out = {}
    for setting, methods in per_method.items():
        ref = methods.get(reference, {})
        rows = {}
        for ceiling in ceilings:
            if ceiling not in methods:
                continue
            top = methods[ceiling]
            gap = st.paired(
                {s: _primary(r, group) for s, r in top.items()},
                {s: _primary(r, group) for s, r in ref.items()},
            )
            shares = {}
            for method, mine in methods.items():
                if method in (reference, ceiling):
                    continue
                seeds = sorted(set(mine) & set(top) & set(ref))
                shares[method] = share_of_headroom(
                    [_primary(mine[s], group) for s in seeds],
                    [_primary(top[s], group) for s in seeds],
                    [_primary(ref[s], group) for s in seeds],
                )
                shares[method]["seeds"] = seeds
            rows[ceiling] = {"headroom": gap, "share": shares}
        out[setting] = rows
    return out


def share_of_headroom(method, ceiling, reference) -> dict:
    """mean(method - reference) / mean(ceiling - reference) over paired seeds."""
    method, ceiling, reference = (np.asarray(x, float) for x in (method, ceiling, reference))
    if not len(method):
        return {"share": None, "gain": None, "headroom": None}
    gain = float(np.mean(method - reference))
    room = float(np.mean(ceiling - reference))
    return {"share": gain / room if room > 0 else None, "gain": gain, "headroom": room}


DROP_FIGURES = ("dropped", "kept", "wrongly_labelled", "precision", "recall")


def training_sets(per_method: dict) -> dict:
    """setting -> method -> summaries over seeds of what the runs dropped, and
    "per_seed": seed -> the same figures of that seed's run."""
    out = {}
    for setting, methods in per_method.items():
        rows = {}
        for method, seeds in methods.items():
            sets = {s: r["training_set"] for s, r in seeds.items() if r.get("training_set")}
            if not sets or all(t["drop"] == "none" for t in sets.values()):
                continue
            rows[method] = {
                key: st.summary([t[key] for t in sets.values() if t[key] is not None])
                for key in DROP_FIGURES
            }
            rows[method]["per_seed"] = {
                s: {key: t[key] for key in DROP_FIGURES} for s, t in sorted(sets.items())
            }
        out[setting] = rows
    return out


def spearman(x, y) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None if undefined."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    if np.std(rx) == 0 or np.std(ry) == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    """0-based ranks; values within st.TIE of their neighbour in sorted order are tied
    and share their mean rank. Gains and memorization changes are differences of
    fractions of whole examples, so one count of examples reached from two seeds' sums
    differs in its last bits: exact equality would rank a real tie as two values."""
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v), float)
    start = 0
    for end in range(1, len(v) + 1):
        if end == len(v) or v[order[end]] - v[order[end - 1]] > st.TIE:
            ranks[order[start:end]] = (start + end - 1) / 2
            start = end
    return ranks


def permutation_p(x, y, *, permutations: int = PERMUTATIONS, seed: int = 0) -> float | None:
    """Two-sided p-value of Spearman's rho under random pairings of x and y."""
    rho = spearman(x, y)
    if rho is None:
        return None
    rng = np.random.default_rng(seed)
    y = np.asarray(y, float)
    hits = sum(
        abs(spearman(x, rng.permutation(y)) or 0.0) >= abs(rho) - 1e-12 for _ in range(permutations)
    )
    return (hits + 1) / (permutations + 1)


def memorization_vs_gain(
    per_method: dict, setting: str, reference: str, exclude, group: str, **kw
) -> dict:
    """Gain against the reference vs the change in memorized wrong labels, pooled over
    (method, seed) pairs of `setting` (module docstring)."""
    methods = per_method.get(setting, {})
    ref = methods.get(reference, {})
    points = []
    for method, seeds in methods.items():
        if method == reference or method in exclude:
            continue
        for seed, run in sorted(seeds.items()):
            base = ref.get(seed)
            if base is None or run.get(MEMORIZED) is None or base.get(MEMORIZED) is None:
                continue
            points.append(
                {
                    "method": method,
                    "seed": seed,
                    "gain": _primary(run, group) - _primary(base, group),
                    "memorized_change": run[MEMORIZED] - base[MEMORIZED],
                }
            )
    gains = [p["gain"] for p in points]
    changes = [p["memorized_change"] for p in points]
    # Descriptive, not pre-registered: a run that drops examples never fits the wrong
    # labels it dropped, so its lower memorization is partly mechanical.
    dropping = {
        m
        for m in {p["method"] for p in points}
        if any(
            (r.get("training_set") or {}).get("drop", "none") != "none" for r in methods[m].values()
        )
    }
    kept = [p for p in points if p["method"] not in dropping]
    per_method = {}
    for method in dict.fromkeys(p["method"] for p in points):
        mine = [p for p in points if p["method"] == method]
        per_method[method] = spearman(
            [p["gain"] for p in mine], [p["memorized_change"] for p in mine]
        )
    return {
        "setting": setting,
        "test": "Spearman rank correlation, two-sided permutation p-value "
        f"({kw.get('permutations', PERMUTATIONS)} relabellings, seed 0)",
        "points": points,
        "rho": spearman(gains, changes),
        "p_value": permutation_p(gains, changes, **kw),
        "rho_per_method": per_method,
        "without_drops": {
            "note": "descriptive, not pre-registered: the same test without the methods "
            "that drop examples (their dropped wrong labels are never trained on)",
            "methods_left_out": sorted(dropping),
            "points": len(kept),
            "rho": spearman([p["gain"] for p in kept], [p["memorized_change"] for p in kept]),
            "p_value": permutation_p(
                [p["gain"] for p in kept], [p["memorized_change"] for p in kept], **kw
            ),
        },
    }


def true_noise(transition_counts) -> list[float | None]:
    """Per noisy label c, the share of examples labelled c whose clean label differs,
    from T[clean, noisy] counts (None for a label no example has)."""
    t = np.asarray(transition_counts, float)
    col = t.sum(axis=0)
    return [None if col[c] == 0 else float(1 - t[c, c] / col[c]) for c in range(len(col))]


def training_noise(training_set: dict, num_classes: int) -> list[float | None]:
    """Per noisy label c, the share of the training examples labelled c whose clean
    label differs, from a run's training_set summary (its per_noisy_label counts cover
    the cell's whole training set, before that run's drop); None for a label no
    training example has."""
    rows = training_set.get("per_noisy_label", {})
    out = []
    for c in range(num_classes):
        row = rows.get(str(c))
        out.append(row["wrongly_labelled"] / row["records"] if row and row["records"] else None)
    return out


def tau_vs_noise(records: dict, training_sets: dict | None = None) -> dict:
    """cell -> {"tau", "err", "held_out", "true_noise", "true_noise_train_split"}.

    tau and its inputs come from one HAR run record of the cell (every run of a cell
    trains with the cell's tau: tau_by_cell checks that). "true_noise" is over the
    examples tau and the runs use, the training examples, from `training_sets` (cell
    -> a training_set summary of any run of the cell: cl_filter's, a ceiling's); None
    until one is there. "true_noise_train_split" is over the train split as the
    record has it, the validation examples included.
    """
    training_sets = training_sets or {}
    out = {}
    for cell, record in sorted(records.items()):
        inputs = record.get("tau_inputs") or {}
        counts = record.get("train_transition_counts")
        tau = record.get("tau")
        chosen = training_sets.get(cell)
        out[cell] = {
            "tau": tau,
            "err": inputs.get("err"),
            "held_out": inputs.get("held_out"),
            "true_noise": None
            if chosen is None or tau is None
            else training_noise(chosen, len(tau)),
            "true_noise_train_split": None if counts is None else true_noise(counts),
        }
    return out


def class_mean_se(per_class, counts) -> float | None:
    """Binomial standard error of a mean per-class accuracy: sqrt(sum_c p_c (1 - p_c) /
    n_c) / C over the classes present (n_c > 0 and an accuracy)."""
    terms = [(p, n) for p, n in zip(per_class, counts, strict=True) if n and p is not None]
    if not terms:
        return None
    var = sum(p * (1 - p) / n for p, n in terms)
    return math.sqrt(var) / len(terms)


def mean_se(values) -> float | None:
    """The standard error of a mean over seeds of independent estimates; None if any
    seed's is unknown (the mean is over every seed, so its error needs each)."""
    values = list(values)
    if not values or any(v is None for v in values):
        return None
    return math.sqrt(sum(v * v for v in values)) / len(values)
