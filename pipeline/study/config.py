"""Study configs: loading, checking (before any training) and the ordered job plan.

A study config (configs/studies/*.py, `get_config(arg)` -> ConfigDict) holds:
  name             the study's name (reports)
  base             an experiment config, "configs/x.py[:variant]" (repo-relative)
  overrides        nested fields set on the base for every job, e.g.
                   dict(train=dict(epochs=48)); a field the base lacks is an error
  settings         ordered name -> dict(overrides=..., seeds=(), methods=()):
                   a data / schedule setting; empty seeds / methods = each method's
                   own seeds / every method (what the selection setting uses)
  selection_setting  the setting where lambda grids run and are selected
  grid_seeds       the seeds every grid lambda runs on
  methods          ordered name -> dict(regularizer, lam, lam_grid, lam_from, drw,
                   reg_every, drop, labels, reweight, seeds, tier)
                   (configs/studies/common.py: method(); drop, labels and reweight
                   choose the training set: pipeline.training.training_set);
                   lambda comes from exactly one of: lam (fixed), lam_grid (selected
                   on validation, pipeline.study.stats.SELECTION_RULE), lam_from
                   (another grid method's selected lambda)
  reference        the method paired differences are taken against (ERM)
  primary_group    the eval group of the headline (noisy_rare)
Optional (older studies lack them; the defaults change nothing):
  grid_extensions  how many lambdas a grid may grow by on each side (0): a selection
                   at the grid's edge adds the next value on that side at the grid's
                   own ratio (study_stats.extend_grid), run on the grid seeds
  comparisons      ((a, b), ...): pre-registered paired differences a - b besides
                   those against the reference
  ceilings         methods that bound what noise handling can gain (clean labels,
                   the oracle filter): headroom = ceiling - reference, and the share
                   of it each method captures
  cut              dict(methods=(...), note="date: why"): methods whose runs not yet
                   finished are no longer run (a budget cut, decided and dated by the
                   study's author); their finished runs are still reported, and the
                   report names the cut. Not the reference nor a grid method (others
                   take their lambda from it).

Jobs run in this order (most important numbers first): (1) in the selection setting,
per grid seed, every grid lambda of every grid method and the reference; (2) the
selection setting's remaining (method, seed) pairs, ordered by (tier, seed, method
order), each grid method at its selected lambda; (3) every other setting, seed by
seed, each method at its selection-setting lambda.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

import ml_collections

from pipeline import train
from pipeline.core import config_ranges, stage
from pipeline.training import training_set

TOP_FIELDS = (
    "name", "base", "overrides", "settings", "selection_setting", "grid_seeds",
    "methods", "reference", "primary_group",
)  # fmt: skip
OPTIONAL_FIELDS = {"grid_extensions": 0, "comparisons": (), "ceilings": (), "cut": None}
METHOD_FIELDS = (
    "regularizer", "lam", "lam_grid", "lam_from", "drw", "reg_every", "drop", "labels",
    "reweight", "seeds", "tier",
)  # fmt: skip
METHOD_DEFAULTS = {"drop": "none", "labels": "noisy", "reweight": "none"}
SETTING_FIELDS = ("overrides", "seeds", "methods")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # a directory name; ConfigDict keys take no dots


class StudyConfigError(stage.PipelineError):
    """A study config that cannot run; the message names the field."""


def load_config_file(spec: str, root: str = ""):
    """`get_config(variant)` of a config file spec "path.py[:variant]"."""
    path, _, arg = spec.partition(":")
    if root and not os.path.isabs(path):
        path = os.path.join(root, path)
    if not os.path.isfile(path):
        raise StudyConfigError(f"base: no config file {path!r}")
    module_spec = importlib.util.spec_from_file_location("_study_base_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run: a method at one lambda on one seed of one setting."""

    setting: str
    seed: int
    method: str
    lam: float | None  # None: its selection is pending

    def run_name(self, regularizer: str) -> str:
        return self.method if regularizer == "none" else f"{self.method}_lam{lam_label(self.lam)}"


def lam_label(lam: float) -> str:
    """A lambda as it appears in a run name: `:g` with "p" for the decimal point (0.01 ->
    "0p01"), since the name is a key of config.train.runs, which takes no dots."""
    return f"{lam:g}".replace(".", "p")


def _plain(value):
    return value.to_dict() if hasattr(value, "to_dict") else value


def apply_overrides(config, overrides, where: str) -> None:
    """Sets nested `overrides` on `config`; a field config lacks is a StudyConfigError."""
    for key, value in _plain(overrides).items():
        field = f"{where}.{key}"
        if key not in config:
            raise StudyConfigError(f"{field}: the base config has no field {key!r}")
        target = config[key]
        if isinstance(value, dict):
            if not isinstance(target, ml_collections.ConfigDict):
                raise StudyConfigError(f"{field}: {key!r} is a value, not a section")
            apply_overrides(target, value, field)
            continue
        if isinstance(target, ml_collections.ConfigDict):
            raise StudyConfigError(f"{field}: {key!r} is a section; give a dict of its fields")
        try:
            config[key] = value
        except (TypeError, ValueError) as e:
            raise StudyConfigError(f"{field}: {e}") from None


def _check_names(mapping, where: str) -> None:
    for name in mapping:
        if not NAME.match(name):
            raise StudyConfigError(
                f"{where}: {name!r} is not a usable name (letters, digits, _ and -)"
            )


def _check_seeds(seeds, field: str, *, allow_empty: bool = False) -> None:
    seeds = tuple(seeds)
    if not seeds and not allow_empty:
        raise StudyConfigError(f"{field} is empty")
    if any(not isinstance(s, int) or s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise StudyConfigError(f"{field} must hold distinct integers >= 0, got {seeds}")


def validate(study, root: str = "") -> None:
    """Checks every field, and builds every job's pipeline config (with a stand-in
    lambda where it will be selected), so that a bad config fails before training."""
    known = TOP_FIELDS + tuple(OPTIONAL_FIELDS)
    for key in study:
        if key not in known:
            raise StudyConfigError(f"unknown study field {key!r} (known: {', '.join(known)})")
    missing = [k for k in TOP_FIELDS if k not in study]
    if missing:
        raise StudyConfigError(f"study config lacks {', '.join(missing)}")
    if not study.methods:
        raise StudyConfigError("methods is empty: nothing to run")
    if not study.settings:
        raise StudyConfigError("settings is empty: name at least one setting")
    _check_names(study.methods, "methods")
    _check_names(study.settings, "settings")
    _check_seeds(study.grid_seeds, "grid_seeds")
    for name, m in study.methods.items():
        _validate_method(study, name, m)
    ref = study.methods.get(study.reference)
    if ref is None or ref.regularizer != "none":
        raise StudyConfigError(f"reference: {study.reference!r} is not an ERM method of methods")
    _validate_optional(study)
    if study.selection_setting not in study.settings:
        raise StudyConfigError(f"selection_setting: {study.selection_setting!r} is not a setting")
    for name, s in study.settings.items():
        where = f"settings.{name}"
        for key in s:
            if key not in SETTING_FIELDS:
                raise StudyConfigError(
                    f"{where}: unknown field {key!r} (known: {', '.join(SETTING_FIELDS)})"
                )
        _check_seeds(s.get("seeds", ()), f"{where}.seeds", allow_empty=True)
        for m in s.get("methods", ()):
            if m not in study.methods:
                raise StudyConfigError(f"{where}.methods: {m!r} is not a method")
    base = pipeline_config(study, Job(study.selection_setting, 0, study.reference, 0.0), root)
    if study.primary_group not in base.eval.groups:
        raise StudyConfigError(
            f"primary_group: {study.primary_group!r} is not a group of the base config's "
            f"eval.groups ({', '.join(base.eval.groups)})"
        )
    for setting in study.settings:
        for method in setting_methods(study, setting):
            for lam in tuple(study.methods[method].lam_grid) or (1.0,):
                config = pipeline_config(study, Job(setting, 0, method, float(lam)), root)
                try:
                    config_ranges.check(config)
                    train.validate_runs(
                        config.train.runs, cross_fit=bool(config.tau.get("cross_fit", False))
                    )
                except stage.PipelineError as e:
                    raise StudyConfigError(f"methods.{method}: {e}") from None


def _validate_method(study, name: str, m) -> None:
    """One method's fields: known, a known regularizer, seeds, and exactly one source
    of lambda where it needs one."""
    where = f"methods.{name}"
    for key in m:
        if key not in METHOD_FIELDS:
            raise StudyConfigError(
                f"{where}: unknown field {key!r} (known: {', '.join(METHOD_FIELDS)})"
            )
    if m.regularizer not in train.REGULARIZERS:
        raise StudyConfigError(
            f"{where}.regularizer: {m.regularizer!r} is not one of {train.REGULARIZERS}"
        )
    _check_seeds(m.seeds, f"{where}.seeds")
    try:
        training_set.check_run(name, m, cross_fit=True)  # cross_fit: checked per job
    except stage.PipelineError as e:
        raise StudyConfigError(f"{where}: {e}") from None
    grid = tuple(m.lam_grid)
    for lam in grid:
        if not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam <= 0:
            raise StudyConfigError(f"{where}.lam_grid holds {lam!r}: every lam must be > 0")
    if len(set(grid)) != len(grid):
        raise StudyConfigError(f"{where}.lam_grid repeats a value: {grid}")
    if m.regularizer == "none":
        if m.lam or grid or m.lam_from:
            raise StudyConfigError(f"{where}: an ERM method (regularizer 'none') takes no lam")
        return
    sources = [bool(m.lam), bool(grid), bool(m.lam_from)]
    if m.lam < 0 or not math.isfinite(m.lam):
        raise StudyConfigError(f"{where}.lam must be > 0, got {m.lam}")
    if sum(sources) == 0:
        raise StudyConfigError(
            f"{where}.lam_grid is empty and neither lam nor lam_from is set: a "
            f"{m.regularizer} method needs a lambda"
        )
    if sum(sources) > 1:
        raise StudyConfigError(f"{where}: give only one of lam, lam_grid and lam_from")
    if grid and not set(study.grid_seeds) <= set(m.seeds):
        raise StudyConfigError(f"{where}.seeds must include every grid seed")
    if m.lam_from:
        ref = study.methods.get(m.lam_from)
        if ref is None or not tuple(ref.lam_grid):
            raise StudyConfigError(f"{where}.lam_from: {m.lam_from!r} is not a grid method")


def optional(study, key: str):
    """An OPTIONAL_FIELDS value of the study (its default where the config lacks it)."""
    return study.get(key, OPTIONAL_FIELDS[key])


def comparison_pairs(study) -> list[tuple[str, str]]:
    """The study's `comparisons` as (a, b) method pairs: a - b."""
    return [(str(a), str(b)) for a, b in optional(study, "comparisons")]


def _validate_optional(study) -> None:
    ext = optional(study, "grid_extensions")
    if isinstance(ext, bool) or not isinstance(ext, int) or ext < 0:
        raise StudyConfigError(f"grid_extensions must be an integer >= 0, got {ext!r}")
    if ext:
        for name, m in study.methods.items():
            if 0 < len(tuple(m.lam_grid)) < 2:
                raise StudyConfigError(
                    f"methods.{name}.lam_grid: grid_extensions needs at least two lambdas "
                    "(the grid's ratio gives the next value)"
                )
    for comp in optional(study, "comparisons"):
        pair = tuple(comp) if isinstance(comp, (tuple, list)) else ()
        if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(study.methods):
            raise StudyConfigError(
                f"comparisons: {comp!r} is not a pair (a, b) of two different methods"
            )
    for name in optional(study, "ceilings"):
        if name not in study.methods or name == study.reference:
            raise StudyConfigError(
                f"ceilings: {name!r} is not a method of methods other than the reference"
            )
    _validate_cut(study)


def cut_methods(study) -> tuple[str, ...]:
    """The methods the study's `cut` stops (none without one)."""
    cut = optional(study, "cut")
    return () if cut is None else tuple(str(m) for m in cut.get("methods", ()))


def _validate_cut(study) -> None:
    cut = optional(study, "cut")
    if cut is None:
        return
    if not hasattr(cut, "get") or set(cut) != {"methods", "note"}:
        raise StudyConfigError(f'cut must be dict(methods=(...), note="..."), got {cut!r}')
    if not isinstance(cut.note, str) or not cut.note.strip():
        raise StudyConfigError("cut.note is empty: say when the cut was made and why")
    names = cut_methods(study)
    if not names:
        raise StudyConfigError("cut.methods is empty: name the methods the cut stops")
    for name in names:
        if name not in study.methods or name == study.reference:
            raise StudyConfigError(
                f"cut.methods: {name!r} is not a method of methods other than the reference"
            )
        if tuple(study.methods[name].lam_grid):
            raise StudyConfigError(
                f"cut.methods: {name!r} is a grid method (its selection feeds other methods)"
            )


def setting_methods(study, setting: str) -> list[str]:
    return list(study.settings[setting].get("methods", ())) or list(study.methods)


def setting_seeds(study, setting: str, method: str) -> list[int]:
    return list(study.settings[setting].get("seeds", ())) or list(study.methods[method].seeds)


def pipeline_config(study, job: Job, root: str = ""):
    """The experiment config of one job: base + overrides + setting + seed + one run."""
    config = load_config_file(study.base, root)
    apply_overrides(config, study.overrides, "overrides")
    setting = study.settings[job.setting]
    apply_overrides(config, setting.get("overrides", {}), f"settings.{job.setting}.overrides")
    m = study.methods[job.method]
    config.seed = int(job.seed)
    lam = 0.0 if m.regularizer == "none" else float(job.lam)
    name = job.run_name(m.regularizer)
    run = dict(regularizer=m.regularizer, lam=lam, drw=bool(m.drw), reg_every=int(m.reg_every))
    for key, default in METHOD_DEFAULTS.items():
        if m.get(key, default) != default:  # a default run stays as before (fingerprints)
            run[key] = m[key]
    config.train.runs = ml_collections.ConfigDict({name: run})
    config.export.run = name
    for section in (config.pretrain, config.train):
        section.verbose = 0  # not part of any fingerprint
    return config


def lam_of(study, method: str, selected: dict) -> float | None:
    """A method's lambda outside its grid: fixed, or a selected one (None: pending)."""
    m = study.methods[method]
    if m.regularizer == "none":
        return 0.0
    if tuple(m.lam_grid):
        return selected.get(method)
    if m.lam_from:
        return selected.get(m.lam_from)
    return float(m.lam)


def plan(study, selected: dict, grids: dict | None = None) -> list[Job]:
    """Every job, in the order they run (module docstring); duplicates removed.

    selected: method -> its selected lambda (None: pending); grids: method -> its grid
    so far (the registered one plus what grid_extensions added; default registered).
    """
    grids = grids or {}
    jobs: list[Job] = []
    seen = set()

    def add(job: Job) -> None:
        key = (job.setting, job.seed, job.method, job.lam)
        if job.lam is None or key not in seen:
            seen.add(key)
            jobs.append(job)

    sel = study.selection_setting
    for seed in study.grid_seeds:
        for name, m in study.methods.items():
            if tuple(m.lam_grid):
                for lam in grids.get(name, m.lam_grid):
                    add(Job(sel, seed, name, float(lam)))
            elif name == study.reference:
                add(Job(sel, seed, name, 0.0))
    order = list(study.methods)
    pairs = [
        (m.get("tier", 0), seed, order.index(n), n)
        for n, m in study.methods.items()
        for seed in m.seeds
    ]
    for _, seed, _, name in sorted(pairs):
        if tuple(study.methods[name].lam_grid) and seed in study.grid_seeds:
            continue  # its grid runs hold the selected lambda's
        add(Job(sel, seed, name, lam_of(study, name, selected)))
    for setting in study.settings:
        if setting == sel:
            continue
        methods = setting_methods(study, setting)
        seeds = sorted({s for m in methods for s in setting_seeds(study, setting, m)})
        for seed in seeds:
            for name in methods:
                if seed in setting_seeds(study, setting, name):
                    add(Job(setting, seed, name, lam_of(study, name, selected)))
    return jobs
