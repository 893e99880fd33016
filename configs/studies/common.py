"""Blocks of study configs (pipeline.study.config documents every field)."""

import ml_collections


def method(
    *,
    regularizer,
    lam=0.0,
    lam_grid=(),
    lam_from="",
    drw=False,
    reg_every=1,
    drop="none",
    labels="noisy",
    reweight="none",
    seeds,
    tier=0,
):
    """One method of a study: a train run kind and where its lambda comes from.

    lam: a fixed lambda; lam_grid: lambdas to select from on the validation split (on
    the study's grid_seeds); lam_from: the name of a grid method whose selected lambda
    this one uses. ERM (regularizer "none") takes none of them. seeds: where its
    result runs. tier: order among the selection setting's non-grid runs (lower first).
    drop, labels: the run's training set (pipeline.training.training_set): cleanlab's filter
    ("label_issues"), the oracle filter ("wrong_labels"), the clean labels ("clean").
    reweight: "noise_rate" weighs the kept examples as cleanlab's CleanLearning does.
    """
    return ml_collections.ConfigDict(
        dict(
            regularizer=regularizer,
            lam=float(lam),
            lam_grid=tuple(float(x) for x in lam_grid),
            lam_from=lam_from,
            drw=drw,
            reg_every=reg_every,
            drop=drop,
            labels=labels,
            reweight=reweight,
            seeds=tuple(seeds),
            tier=tier,
        )
    )


def setting(overrides=None, *, seeds=(), methods=()):
    """A data / schedule setting: nested config overrides; seeds and methods empty =
    each method's own seeds, every method."""
    return ml_collections.ConfigDict(
        dict(overrides=dict(overrides or {}), seeds=tuple(seeds), methods=tuple(methods))
    )


def ordered(**items):
    return ml_collections.ConfigDict(items, sort_keys=False)


def study(*, name, base, overrides, settings, selection_setting, grid_seeds, methods,
          reference="erm", primary_group="noisy_rare", grid_extensions=0, comparisons=(),
          ceilings=(), cut=None):  # fmt: skip
    """A study config (pipeline.study.config documents every field); `cut` enters it
    only when given (a study without one keeps its config as before)."""
    extra = {} if cut is None else {"cut": dict(cut)}
    return ml_collections.ConfigDict(
        dict(
            **extra,
            grid_extensions=int(grid_extensions),
            comparisons=tuple(comparisons),
            ceilings=tuple(ceilings),
            name=name,
            base=base,
            overrides=overrides,
            settings=settings,
            selection_setting=selection_setting,
            grid_seeds=tuple(grid_seeds),
            methods=methods,
            reference=reference,
            primary_group=primary_group,
        )
    )
