"""Aggregation of a study (pipeline.study) into <workdir>/study/.

Writes study.json (every number; deterministic: the same runs give the same file),
study.md (tables; study_md), COMMIT (the code that aggregated) and PNG plots (plots):
per-method accuracy with 95% intervals, noisy & rare test accuracy per epoch,
memorization per epoch. Anything not finished yet is left out and the outputs say
"partial". All figures are at each run's final epoch; the statistics are
pipeline.study.stats.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

import numpy as np

from pipeline.core import provenance, stage
from pipeline.study import analysis as study_analysis
from pipeline.study import config as study_config
from pipeline.study import plots as study_plots
from pipeline.study import stats as st
from pipeline.study import study_md
from pipeline.study.config import Job
from pipeline.training import epoch_eval

OUT = "study"
LOCK = ".write.lock"
VAL_SCORE = epoch_eval.VAL_PREFIX + "mean_class_accuracy"
FIT_ACC = epoch_eval.FIT_PREFIX + "accuracy"
FIT_MEM = epoch_eval.FIT_PREFIX + "memorized"


def _done(study, job: Job) -> dict | None:
    """A done job's run record (None if not done)."""
    record = study.record(job)
    return record if record is not None and record["state"] == "done" else None


def history(study, job: Job) -> dict | None:
    """A done job's per-epoch metrics (its record's part of history.json; None if not
    done)."""
    record = _done(study, job)
    return None if record is None else record["history"]


def test_counts(study, job: Job) -> list[int]:
    """A done job's test examples per class (its cell's manifest, via its record)."""
    return _done(study, job)["test_counts"]


def run_metrics(hist: dict, counts, groups: dict) -> dict:
    """Final-epoch figures of one run, and the per-epoch curves the plots use (None
    at the epochs without a test pass: config.eval.per_epoch_every > 1)."""
    num_classes = len(counts)
    keys = [epoch_eval.class_accuracy_key(c) for c in range(num_classes)]
    tested = hist[epoch_eval.TEST_ACCURACY]
    per_epoch = [
        None if tested[e] is None else [hist[k][e] if k in hist else 0.0 for k in keys]
        for e in range(len(hist["loss"]))
    ]
    final = per_epoch[-1]
    out = {
        "epochs": len(per_epoch),
        "test": {
            "overall": hist[epoch_eval.TEST_ACCURACY][-1],
            "per_class": [final[c] if counts[c] else None for c in range(num_classes)],
            "groups": {g: st.group_accuracy(final, counts, cl) for g, cl in groups.items()},
        },
        "curves": {
            f"test_{g}": [
                None if pc is None else st.group_accuracy(pc, counts, cl) for pc in per_epoch
            ]
            for g, cl in groups.items()
        },
    }
    for key in (VAL_SCORE, FIT_ACC, FIT_MEM, epoch_eval.FIT_PREFIX + "clean_label_accuracy"):
        out[key] = hist[key][-1] if key in hist else None
    for key in (FIT_ACC, FIT_MEM):
        out["curves"][key] = hist.get(key)
    return out


def _groups(study) -> dict:
    config = study.job_config(Job(study.config.selection_setting, 0, study.config.reference, 0.0))
    return {g: tuple(int(c) for c in cl) for g, cl in config.eval.groups.items()}


def planned(study, selection: dict | None = None) -> tuple[list[Job], list[Job]]:
    """(the plan's jobs, every grid job) under the current selection; a `cut` method's
    jobs only where they have finished (done or failed)."""
    selection = selections(study) if selection is None else selection
    jobs = study_config.plan(
        study.config,
        {k: v["selected"] for k, v in selection.items()},
        {k: v["grid"] for k, v in selection.items()},
    )
    cut = study_config.cut_methods(study.config)
    if cut:
        jobs = [j for j in jobs if j.method not in cut or study.status(j) in ("done", "failed")]
    return jobs, grid_jobs(study, selection)


def cut_summary(study, jobs: list[Job]) -> dict | None:
    """The study's cut as the report states it: its note, and per cut method the seeds
    of the selection setting it finished (its jobs left in `jobs`, planned's) of those
    it registered (None without a cut)."""
    c = study.config
    cut = study_config.cut_methods(c)
    if not cut:
        return None
    finished = {
        m: sorted({j.seed for j in jobs if j.method == m and j.setting == c.selection_setting})
        for m in cut
    }
    return {
        "note": str(c.cut.note),
        "methods": {
            m: {"seeds_finished": finished[m], "seeds_registered": list(c.methods[m].seeds)}
            for m in cut
        },
    }


def collect(study, selection: dict | None = None) -> dict:
    """ "<setting>/seed<k>/<run>" -> run_metrics (or {"failed": message}) of every
    finished job of the plan."""
    groups = _groups(study)
    runs = {}
    jobs, grid = planned(study, selection)
    for job in jobs + grid:
        if job.lam is None:
            continue
        key = study.run_key(job)
        state = study.status(job)
        if state == "done":
            record = _done(study, job)
            runs[key] = run_metrics(record["history"], record["test_counts"], groups)
            runs[key].update(setting=job.setting, seed=job.seed, method=job.method, lam=job.lam)
            if record.get("training_set"):
                runs[key]["training_set"] = record["training_set"]
        elif state == "failed":
            runs[key] = {"failed": study.record(job)["error"]}
    return runs


def _finished(study, runs: dict, setting: str, method: str, lam, seeds) -> dict:
    """seed -> run_metrics of the finished runs of `method` at `lam` on `seeds` (none
    while lam is pending; failed runs left out)."""
    if lam is None:
        return {}
    done = {}
    for seed in seeds:
        r = runs.get(study.run_key(Job(setting, seed, method, lam)))
        if r and "failed" not in r:
            done[seed] = r
    return done


def grid_jobs(study, selection: dict | None = None) -> list[Job]:
    """Every grid run of the study: each grid method's grid (with the values the
    grid-extension rule added) on every grid seed."""
    c = study.config
    selection = selections(study) if selection is None else selection
    return [
        Job(c.selection_setting, seed, name, float(lam))
        for seed in c.grid_seeds
        for name, sel in selection.items()
        for lam in sel["grid"]
    ]


def _grid_scores(study, name: str, lams) -> tuple[dict, dict]:
    """lam label -> per grid seed: the final-epoch validation score (None: not run,
    "failed"), the primary group's test accuracy (the same markers) and the
    validation score's standard error."""
    c = study.config
    groups = None
    val, test, se = {}, {}, {}
    for lam in lams:
        key = f"{float(lam):g}"
        val[key], test[key], se[key] = [], [], []
        for seed in c.grid_seeds:
            job = Job(c.selection_setting, seed, name, float(lam))
            state = study.status(job)
            if state == "done":
                record = _done(study, job)
                hist = record["history"]
                if VAL_SCORE not in hist:
                    raise stage.PipelineError(
                        f"{name} lam {lam:g} seed {seed}: no {VAL_SCORE} in its history; "
                        "the study needs config.data.val_fraction > 0"
                    )
                val[key].append(float(hist[VAL_SCORE][-1]))
                se[key].append(val_se(record))
                groups = groups or _groups(study)
                metrics = run_metrics(hist, test_counts(study, job), groups)
                test[key].append(float(metrics["test"]["groups"][c.primary_group]))
            else:
                val[key].append("failed" if state == "failed" else None)
                test[key].append("failed" if state == "failed" else None)
                se[key].append(None)
    return val, test, se


def val_se(record: dict) -> float | None:
    """The binomial standard error of a run's final validation score (None for a
    record without the per-class validation figures: older code)."""
    counts, hist = record.get("val_counts"), record["history"]
    if counts is None:
        return None
    per_class = [
        hist[f"{epoch_eval.VAL_PREFIX}class_{c}_accuracy"][-1]
        if f"{epoch_eval.VAL_PREFIX}class_{c}_accuracy" in hist
        else None
        for c in range(len(counts))
    ]
    return study_analysis.class_mean_se(per_class, counts)


def selections(study) -> dict:
    """Per grid method: the validation table, the selected lambda, the grid (with the
    values the grid-extension rule added) and the test oracle."""
    c = study.config
    max_ext = study_config.optional(c, "grid_extensions")
    out = {}
    for name, m in c.methods.items():
        registered = [float(x) for x in m.lam_grid]
        if not registered:
            continue
        grid = list(registered)
        while True:
            val, test, se = _grid_scores(study, name, grid)
            sel = st.select_lam(val)
            more = st.extend_grid(registered, grid, sel["selected"], max_ext)
            if more is None:
                break
            grid.append(more)
        oracle = st.oracle_lam(test)
        for key, row in sel["table"].items():
            row["se"] = study_analysis.mean_se(se[key]) if row["mean"] is not None else None
        out[name] = {
            "rule": st.SELECTION_RULE,
            "grid_seeds": list(c.grid_seeds),
            "table": sel["table"],
            "selected": None if sel["selected"] is None else float(sel["selected"]),
            "pending": sel["pending"],
            "grid": sorted(grid),
            "oracle_on_test": {
                "note": "selected on the TEST set (the authors' practice): optimistic",
                "lam": None if oracle is None else float(oracle),
                "test_" + c.primary_group: {
                    k: st.summary(v)
                    for k, v in test.items()
                    if not any(x is None or isinstance(x, str) for x in v)
                },
            },
        }
        if max_ext:
            out[name]["extension_rule"] = st.GRID_EXTENSION_RULE
            out[name]["added"] = sorted(set(grid) - set(registered))
    return out


def aggregate(study, runs: dict, selection: dict) -> dict:
    """Per setting and method: summaries over seeds, and paired differences vs the
    reference method on the same seeds."""
    c = study.config
    selected = {k: v["selected"] for k, v in selection.items()}
    out = {}
    for setting in c.settings:
        methods, results = {}, {}
        for name in study_config.setting_methods(c, setting):
            lam = study_config.lam_of(c, name, selected)
            seeds = study_config.setting_seeds(c, setting, name)
            per_seed = _finished(study, runs, setting, name, lam, seeds)
            results[name] = per_seed
            methods[name] = {
                "lam": lam,
                "seeds_planned": seeds,
                "seeds_done": sorted(per_seed),
                "partial": len(per_seed) < len(seeds),
                "last_epoch_fit": {
                    seed: {key: per_seed[seed][key] for key in (FIT_ACC, FIT_MEM)}
                    for seed in sorted(per_seed)
                },
                **_summaries(list(per_seed.values()), c.primary_group),
            }
        diffs = _paired_differences(results, methods, c.reference)
        out[setting] = {"methods": methods, f"paired_minus_{c.reference}": diffs}
    return out


def _summaries(done: list[dict], primary_group: str) -> dict:
    """One method's finished runs (one per seed) summarized over seeds."""
    groups = list(done[0]["test"]["groups"]) if done else []
    num_classes = len(done[0]["test"]["per_class"]) if done else 0

    def over_seeds(values) -> dict:
        return st.summary([v for v in values if v is not None])

    return {
        "groups": {g: st.summary([r["test"]["groups"][g] for r in done]) for g in groups},
        "overall": st.summary([r["test"]["overall"] for r in done]),
        "per_class": [
            over_seeds(r["test"]["per_class"][k] for r in done) for k in range(num_classes)
        ],
        "memorization": _memorization(done),
        VAL_SCORE: over_seeds(r[VAL_SCORE] for r in done),
        "curves": {
            key: st.mean_curve([r["curves"].get(key) for r in done])
            for key in (f"test_{primary_group}", FIT_ACC, FIT_MEM)
        },
    }


def _memorization(done: list[dict]) -> dict:
    """The last-epoch memorization diagnostic of finished runs, summarized over seeds."""
    return {
        key: st.summary([r[key] for r in done if r[key] is not None]) for key in (FIT_ACC, FIT_MEM)
    }


def regime_map(study, runs: dict, selection: dict) -> dict:
    """The regime map (item 2 of docs/RESULTS.md's protocol): for each method that
    every setting runs (the reference excepted), per setting, its paired difference
    against the reference on the primary group and both methods' memorization
    diagnostic, on the seeds that every setting plans for both (the same seeds in
    every setting, so that the settings compare). Empty with a single setting."""
    c = study.config
    if len(c.settings) < 2:
        return {}
    every = set.intersection(*(set(study_config.setting_methods(c, s)) for s in c.settings))
    selected = {k: v["selected"] for k, v in selection.items()}
    primary, ref = c.primary_group, c.reference
    out = {}
    for method in (m for m in c.methods if m in every and m != ref):
        seeds = sorted(
            set.intersection(
                *(
                    set(study_config.setting_seeds(c, s, method))
                    & set(study_config.setting_seeds(c, s, ref))
                    for s in c.settings
                )
            )
        )
        lam = study_config.lam_of(c, method, selected)
        rows = {}
        for setting in c.settings:
            mine = _finished(study, runs, setting, method, lam, seeds)
            base = _finished(study, runs, setting, ref, 0.0, seeds)
            rows[setting] = {
                "paired": st.paired(
                    {k: r["test"]["groups"][primary] for k, r in mine.items()},
                    {k: r["test"]["groups"][primary] for k, r in base.items()},
                ),
                "memorization": {
                    ref: _memorization(list(base.values())),
                    method: _memorization(list(mine.values())),
                },
            }
        out[method] = {"lam": lam, "seeds": seeds, "settings": rows}
    return out


def _paired_differences(results: dict, methods: dict, reference: str) -> dict:
    """Each method minus the reference on the seeds both finished, per group and overall."""
    ref = results.get(reference, {})
    diffs = {}
    for name, per_seed in results.items():
        if name == reference:
            continue
        diffs[name] = {
            g: st.paired(
                {s: r["test"]["groups"][g] for s, r in per_seed.items()},
                {s: r["test"]["groups"][g] for s, r in ref.items()},
            )
            for g in methods[name]["groups"]
        }
        diffs[name]["overall"] = st.paired(
            {s: r["test"]["overall"] for s, r in per_seed.items()},
            {s: r["test"]["overall"] for s, r in ref.items()},
        )
    return diffs


def trained_by(study, jobs) -> list[dict]:
    """The code that trained the done runs: [{"code": a record's `code` (None: the
    record predates the field; its "commit" None: not a git checkout), "runs": how
    many}], most runs first, so that study.md names the code behind its figures beside
    the code that aggregated them."""
    counts: dict = {}
    for job in set(jobs):
        record = _done(study, job)
        if record is not None:
            final = _code_key(record.get("code"))
            earlier = [_code_key(a.get("code")) for a in record.get("earlier_attempts", [])]
            key = (final, tuple(k for k in dict.fromkeys(earlier) if k != final))
            counts[key] = counts.get(key, 0) + 1
    entries = []
    for (final, earlier), n in counts.items():
        entry = {"code": _code_dict(final), "runs": n}
        if earlier:  # resumed attempts begun by other code
            entry["resumed_from"] = [_code_dict(k) for k in earlier]
        entries.append(entry)
    return sorted(entries, key=lambda e: (-e["runs"], str(e["code"])))


def _code_key(code: dict | None):
    return None if code is None else (code.get("commit"), code.get("dirty"))


def _code_dict(key) -> dict | None:
    return None if key is None else {"commit": key[0], "dirty": key[1]}


def tau_by_cell(study, jobs) -> dict:
    """Per cell ("<setting>/seed<k>"), whether its done runs that trained with tau all
    used the same one: {"runs": how many, "max_abs_difference": between their taus}.

    The runs of a cell are paired on one tau. A cell whose pretrain ran again (its
    records restored on another machine, pipeline.study.records) could compute a
    different tau for its later runs; this makes that visible.
    """
    taus: dict = {}
    for job in sorted(set(jobs), key=study.run_key):
        record = _done(study, job)
        if record is not None and record.get("tau") is not None:
            cell = f"{job.setting}/seed{job.seed}"
            taus.setdefault(cell, []).append(np.asarray(record["tau"], float))
    return {
        cell: {
            "runs": len(ts),
            "max_abs_difference": float(max(np.max(np.abs(t - ts[0])) for t in ts)),
        }
        for cell, ts in sorted(taus.items())
    }


def build(study) -> dict:
    selection = selections(study)
    runs = collect(study, selection)
    jobs, _ = planned(study, selection)
    states = [study.status(j) for j in jobs]
    failed = sorted(k for k, r in runs.items() if "failed" in r)
    settings = aggregate(study, runs, selection)
    return {
        "study": study.config.name,
        "complete": all(s in ("done", "failed") for s in states),
        "runs_planned": len(jobs),
        "runs_done": sum(s == "done" for s in states),
        "runs_failed": failed,
        "primary_group": study.config.primary_group,
        "reference": study.config.reference,
        "config": study.config.to_dict(),
        "code": provenance.code_version(study.root),
        "trained_by": trained_by(study, [j for j in jobs if j.lam is not None]),
        "selection": selection,
        "settings": settings,
        "regime_map": regime_map(study, runs, selection),
        "tau_by_cell": tau_by_cell(study, [j for j in jobs if j.lam is not None]),
        "runs": runs,
        **({"cut": cut_summary(study, jobs)} if study_config.cut_methods(study.config) else {}),
        **analysis(study, runs, settings, jobs),
    }


def analysis(study, runs: dict, settings: dict, jobs) -> dict:
    """Study 2's analyses (pipeline.study.analysis) of build's runs, per-setting
    aggregate and planned jobs, for a study that registers comparisons or ceilings;
    {} for the others (their study.json is unchanged)."""
    c = study.config
    pairs = study_config.comparison_pairs(c)
    ceilings = list(study_config.optional(c, "ceilings"))
    if not pairs and not ceilings:
        return {}
    per_method = study_analysis.method_runs(runs, settings)
    groups = list(_groups(study))
    cells, training_sets = {}, {}
    for job in jobs:
        record = _done(study, job)
        if record is None:
            continue
        cell = f"{job.setting}/seed{job.seed}"
        if job.lam is not None and record.get("tau") is not None:
            cells.setdefault(cell, record)
        if record.get("training_set"):  # counts over the cell's whole training set
            training_sets.setdefault(cell, record["training_set"])
    return {
        "analysis": {
            "comparisons": study_analysis.comparisons(per_method, pairs, groups),
            "headroom": study_analysis.headroom(per_method, ceilings, c.reference, c.primary_group),
            "training_sets": study_analysis.training_sets(per_method),
            "memorization_vs_gain": study_analysis.memorization_vs_gain(
                per_method, c.selection_setting, c.reference, ceilings, c.primary_group
            ),
            "tau_vs_noise": study_analysis.tau_vs_noise(cells, training_sets),
        }
    }


@contextlib.contextmanager
def _exclusive(path: str) -> Iterator[None]:
    """Holds an exclusive flock on `path` (created if absent) while the block runs."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write(study) -> dict:
    """Writes <workdir>/study/ from what has finished; returns the study.json dict.
    Processes that run one study side by side (pipeline.study --settings) write it
    one at a time (a lock file in <workdir>/study/)."""
    out = os.path.join(study.workdir, OUT)
    os.makedirs(out, exist_ok=True)
    with _exclusive(os.path.join(out, LOCK)):
        return _write(study, out)


def _write(study, out: str) -> dict:
    result = build(study)
    stage.write_json(os.path.join(out, "study.json"), result)
    dirty = " (dirty)" if result["code"]["dirty"] else ""
    stage.write_text(os.path.join(out, "COMMIT"), f"{result['code']['commit']}{dirty}\n")
    plots = study_plots.write_all(result, out)
    runtimes = runtime_table(study)
    stage.write_text(os.path.join(out, "study.md"), study_md.markdown(result, plots, runtimes))
    return result


def _duration(study, job: Job) -> float | None:
    """A done run's wall clock; None for a run resumed from an earlier attempt (its
    started/finished cover the last attempt only), or one not done."""
    record = _done(study, job)
    if record is None or record.get("earlier_attempts"):
        return None
    return record["finished"] - record["started"]


def _kind(study, job: Job) -> str:
    return study.config.methods[job.method].regularizer


def runtime_table(study) -> dict:
    """(setting, regularizer) -> [seconds of each done train stage] (wall clock)."""
    table: dict = {}
    jobs, grid = planned(study)
    for job in jobs + grid:
        if job.lam is None:
            continue
        d = _duration(study, job)
        if d is not None:
            table.setdefault(f"{job.setting} {_kind(study, job)}", {})[
                f"seed{job.seed}/{study.run_name(job)}"
            ] = d
    return table


def estimate_remaining(study, jobs) -> float | None:
    """Seconds the given jobs should take: the mean duration of done runs of the same
    setting and regularizer kind, else of the same kind, else of any (None: no data)."""
    table = runtime_table(study)
    by_kind: dict = {}
    for key, runs in table.items():
        by_kind.setdefault(key.split(" ")[1], []).extend(runs.values())
    everything = [d for runs in table.values() for d in runs.values()]
    if not everything:
        return None
    total = 0.0
    for job in jobs:
        exact = table.get(f"{job.setting} {_kind(study, job)}")
        if exact:
            total += float(np.mean(list(exact.values())))
        elif by_kind.get(_kind(study, job)):
            total += float(np.mean(by_kind[_kind(study, job)]))
        else:
            total += float(np.mean(everything))
    return total
