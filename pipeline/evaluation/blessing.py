"""The evaluator's blessing: each run's test metrics against config.eval.thresholds.

This mirrors TFX's Evaluator (TensorFlow Model Analysis model validation): a model is
BLESSED when every threshold it is judged on holds, NOT_BLESSED otherwise, and the
push stage ships only blessed models. Thresholds are TFMA's two kinds:

- a value threshold (TFMA's GenericValueThreshold): `lower_bound <= value <=
  upper_bound`, either bound optional;
- a change threshold (GenericChangeThreshold) against a baseline run of the same
  pipeline (a name of config.train.runs): with `diff = value - baseline` and
  `relative = diff / baseline`, HIGHER_IS_BETTER passes when `diff >= absolute` and
  `relative >= relative`, LOWER_IS_BETTER when `diff <= absolute` and `relative <=
  relative` (each only when set). TFMA computes its relative change so too (its
  metrics_validator; its guide writes v_c / v_b).

Each threshold is one entry of config.eval.thresholds (name -> fields):
  metric     "accuracy" (top-1, at the final epoch) or "top5_accuracy" (slice
             "overall" only, and only with more than 5 classes)
  slice      "overall", a group of config.eval.groups, or "class_<c>"
  lower_bound / upper_bound                    (a value threshold), or
  baseline, direction ("higher_is_better" | "lower_is_better"), absolute and/or
  relative                                     (a change threshold)
Accuracies are fractions: "0.5 points" is 0.005. The baseline run is not judged
against itself: its change thresholds are recorded as skipped. A value that is
missing (NaN: a slice without test examples) fails its threshold.
"""

from __future__ import annotations

import json
import math
import os

from pipeline.core import stage

FILE = "blessing.json"
BLESSED, NOT_BLESSED = "BLESSED", "NOT_BLESSED"
METRICS = ("accuracy", "top5_accuracy")
DIRECTIONS = ("higher_is_better", "lower_is_better")
VALUE_FIELDS = ("lower_bound", "upper_bound")
CHANGE_FIELDS = ("baseline", "direction", "absolute", "relative")
FIELDS = ("metric", "slice", *VALUE_FIELDS, *CHANGE_FIELDS)
CLASS_PREFIX = "class_"


def slices(config) -> list[str]:
    """The slices a threshold may name: overall, every eval group, every class."""
    classes = [f"{CLASS_PREFIX}{c}" for c in range(config.data.num_classes)]
    return ["overall", *config.eval.groups, *classes]


def _number(spec: dict, key: str, where: str) -> float:
    v = spec[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise stage.PipelineError(f"{where}.{key} must be a finite number, got {v!r}")
    return float(v)


def check_one(name: str, spec: dict, *, slices_: list[str], runs, num_classes: int) -> None:
    """PipelineError naming the field if threshold `name` is malformed (module doc)."""
    where = f"config.eval.thresholds.{name}"
    if not isinstance(spec, dict):
        raise stage.PipelineError(f"{where} must be a dict of {', '.join(FIELDS)}; got {spec!r}")
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
        raise stage.PipelineError(
            f"{where}: unknown field(s) {unknown}; known: {', '.join(FIELDS)}"
        )
    metric, slice_ = spec.get("metric", "accuracy"), spec.get("slice", "overall")
    if metric not in METRICS:
        raise stage.PipelineError(
            f"{where}.metric: unknown {metric!r}; known: {', '.join(METRICS)}"
        )
    if slice_ not in slices_:
        raise stage.PipelineError(f"{where}.slice: unknown {slice_!r}; known: {', '.join(slices_)}")
    if metric == "top5_accuracy" and (slice_ != "overall" or num_classes <= 5):
        raise stage.PipelineError(
            f"{where}: top5_accuracy exists for slice 'overall' with more than 5 classes only"
        )
    value = [k for k in VALUE_FIELDS if k in spec]
    change = [k for k in CHANGE_FIELDS if k in spec]
    if bool(value) == bool(change):
        raise stage.PipelineError(
            f"{where}: give either a value threshold ({' and/or '.join(VALUE_FIELDS)}) or a "
            f"change threshold ({', '.join(CHANGE_FIELDS)}), not {'both' if value else 'neither'}"
        )
    for key in value + [k for k in ("absolute", "relative") if k in spec]:
        _number(spec, key, where)
    if value and spec.get("lower_bound", -math.inf) > spec.get("upper_bound", math.inf):
        raise stage.PipelineError(f"{where}: lower_bound > upper_bound")
    if change:
        if spec.get("baseline") not in runs:
            raise stage.PipelineError(
                f"{where}.baseline: {spec.get('baseline')!r} names no run of "
                f"config.train.runs ({', '.join(runs)})"
            )
        if spec.get("direction") not in DIRECTIONS:
            raise stage.PipelineError(
                f"{where}.direction must be one of {', '.join(DIRECTIONS)}, "
                f"got {spec.get('direction')!r}"
            )
        if "absolute" not in spec and "relative" not in spec:
            raise stage.PipelineError(f"{where}: a change threshold needs absolute and/or relative")


def thresholds(config) -> dict[str, dict]:
    """config.eval.thresholds as plain dicts, checked (PipelineError if malformed)."""
    raw = config.eval.get("thresholds", {})
    specs = {n: s.to_dict() if hasattr(s, "to_dict") else s for n, s in raw.items()}
    sl = slices(config)
    for name, spec in specs.items():
        check_one(
            name,
            spec,
            slices_=sl,
            runs=list(config.train.runs),
            num_classes=config.data.num_classes,
        )
    return specs


def check_config(config) -> None:
    """Every threshold well formed and naming a known metric, slice and baseline run."""
    thresholds(config)


def metric_value(test: dict, metric: str, slice_: str) -> float:
    """A run's value of `metric` on `slice_`, from its report.json `test` entry."""
    if metric == "top5_accuracy":
        value = test.get("top5")
    elif slice_ == "overall":
        value = test["overall"]
    elif slice_.startswith(CLASS_PREFIX) and slice_[len(CLASS_PREFIX) :].isdigit():
        value = test["per_class"][int(slice_[len(CLASS_PREFIX) :])]
    else:
        value = test["groups"][slice_]
    return math.nan if value is None else float(value)


def _change_passes(diff: float, relative: float, spec: dict) -> bool:
    higher = spec["direction"] == "higher_is_better"
    ok = True
    for key, got in (("absolute", diff), ("relative", relative)):
        if key in spec:
            bound = float(spec[key])
            ok = ok and (got >= bound if higher else got <= bound)
    return ok


def judge_one(spec: dict, run: str, tests: dict[str, dict]) -> dict:
    """One threshold on run `run`; `tests`: run name -> its report.json `test` entry."""
    metric, slice_ = spec.get("metric", "accuracy"), spec.get("slice", "overall")
    value = metric_value(tests[run], metric, slice_)
    out = {"metric": metric, "slice": slice_, "value": value}
    if "baseline" not in spec:
        lo, hi = spec.get("lower_bound", -math.inf), spec.get("upper_bound", math.inf)
        out.update(kind="value", lower_bound=spec.get("lower_bound"))
        out.update(upper_bound=spec.get("upper_bound"), passed=bool(lo <= value <= hi))
        return out
    base_run = spec["baseline"]
    out.update({k: spec.get(k) for k in CHANGE_FIELDS}, kind="change")
    if base_run == run:
        out.update(passed=None, skipped="this run is the baseline")
        return out
    base = metric_value(tests[base_run], metric, slice_)
    diff = value - base
    relative = diff / base if base else math.nan
    out.update(baseline_value=base, diff=diff, relative_change=relative)
    out["passed"] = bool(math.isfinite(diff) and _change_passes(diff, relative, spec))
    return out


def judge(run: str, tests: dict[str, dict], specs: dict[str, dict]) -> dict:
    """Run `run`'s blessing: {"run", "status": BLESSED | NOT_BLESSED, "thresholds":
    name -> judge_one's entry}. No thresholds (or only skipped ones): BLESSED."""
    results = {name: judge_one(spec, run, tests) for name, spec in specs.items()}
    failed = [n for n, r in results.items() if r["passed"] is False]
    return {"run": run, "status": NOT_BLESSED if failed else BLESSED, "thresholds": results}


def as_written(obj):
    """A blessing as blessing.json holds it (stage.write_json): NaN and inf become
    null, tuples lists, and the rest goes through a JSON round trip."""

    def strict(v):
        if isinstance(v, dict):
            return {str(k): strict(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [strict(x) for x in v]
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return json.loads(json.dumps(strict(obj)))


def verify(recorded, run: str, tests: dict[str, dict], specs: dict[str, dict]) -> dict:
    """Run `run`'s blessing as judged now, with why the recorded one differs.

    Push must not trust blessing.json alone: a file edited by hand (its "status"
    turned to BLESSED, a "passed" flag flipped) would ship a model the thresholds
    refuse. So, as TFX's Pusher trusts only the Evaluator's own artifact, the status
    is recomputed from the evaluate stage's metrics (`tests`, report.json's `test`
    entries) and the config's thresholds (`specs`; the push stage is stale unless
    they are what evaluate ran with), and the recorded blessing must equal the
    recomputed one entry for entry.

    Returns the recomputed blessing (judge's) with "tampered": None when `recorded`
    is exactly it, else a one-line reason (`recorded` may be anything read from
    JSON: a list, a dict without "status").
    """
    if run not in tests:
        raise ValueError(f"report.json has no test metrics for run {run!r}")
    judged = judge(run, tests, specs)
    expected = as_written(judged)
    why = None
    if not isinstance(recorded, dict):
        why = f"it holds a JSON {type(recorded).__name__}, not an object"
    elif recorded.get("status") != expected["status"]:
        why = (
            f"it says {recorded.get('status')!r} where the thresholds and report.json's "
            f"metrics give {expected['status']!r}"
        )
    elif recorded != expected:
        keys = sorted(k for k in {*recorded, *expected} if recorded.get(k) != expected.get(k))
        inner = (
            sorted(
                n
                for n in {*recorded.get("thresholds", {}), *expected["thresholds"]}
                if recorded["thresholds"].get(n) != expected["thresholds"].get(n)
            )
            if keys == ["thresholds"] and isinstance(recorded.get("thresholds"), dict)
            else []
        )
        why = f"its {'thresholds ' + ', '.join(inner) if inner else ', '.join(keys)} differ from "
        why += "what the thresholds and report.json's metrics give"
    return {**judged, "tampered": why}


def _num(v, spec: str = ".4f") -> str:
    """A figure, or "n/a" for a missing one (NaN here, null once read back from JSON)."""
    return "n/a" if v is None or not math.isfinite(v) else format(v, spec)


def describe(name: str, r: dict) -> str:
    """One threshold's outcome in words, e.g. for the push stage's refusal; `r` as
    judge_one returns it or as read back from blessing.json."""
    what = f"{r['metric']} on {r['slice']}"
    if r["kind"] == "value":
        bounds = [f">= {r['lower_bound']:g}" if r["lower_bound"] is not None else ""]
        bounds.append(f"<= {r['upper_bound']:g}" if r["upper_bound"] is not None else "")
        return (
            f"{name}: {what} = {_num(r['value'])}, must be {' and '.join(b for b in bounds if b)}"
        )
    if r["passed"] is None:
        return f"{name}: skipped ({r['skipped']})"
    sign = ">=" if r["direction"] == "higher_is_better" else "<="
    need = [f"change {sign} {r['absolute']:+g}" if r["absolute"] is not None else ""]
    need.append(f"relative change {sign} {r['relative']:+g}" if r["relative"] is not None else "")
    return (
        f"{name}: {what} = {_num(r['value'])} vs {r['baseline']}'s {_num(r['baseline_value'])} "
        f"(change {_num(r['diff'], '+.4f')}, relative {_num(r['relative_change'], '+.4f')}), "
        "must be " + " and ".join(n for n in need if n)
    )


def failures(blessing: dict) -> list[str]:
    """describe() of every failed threshold of a blessing."""
    return [describe(n, r) for n, r in blessing["thresholds"].items() if r["passed"] is False]


def path(evaluate_dir: str, run: str) -> str:
    """Where the evaluate stage writes run `run`'s blessing: <evaluate>/<run>/blessing.json."""
    return os.path.join(evaluate_dir, run, FILE)
