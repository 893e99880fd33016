"""A smoke study for the tests: 2 seeds x (ERM + HAR at 2 lambdas), tiny data, seconds.

  python -m pipeline.study --config=configs/studies/smoke.py --workdir=/tmp/smoke_study

Not a result. Variant "all" adds a second setting and a lam_from method (DRW on HAR's
selected lambda) to exercise every phase of the plan. Variant "study2" runs every
method of Study 2 (configs/studies/fm_study2.py) on one seed: label cleaning with
cleanlab (cross-fitted pretraining), with and without HAR, the two ceilings (clean
labels, the oracle filter), DRW, the grid-extension rule and the extra comparisons.
"""

from configs.studies import common as c


def get_config(arg=None):
    overrides = dict(
        data=dict(data_dir="", limit_train=1500, limit_test=300, val_fraction=0.1),
        model=dict(widths=(4, 4, 8)),
        pretrain=dict(epochs=1, batch_size=128),
        train=dict(epochs=2, batch_size=128),
        # Passes after epoch 2 only: exercises the epochs without one (null).
        eval=dict(per_epoch_memorization=True, per_epoch_every=2),
    )
    methods = c.ordered(
        erm=c.method(regularizer="none", seeds=(0, 1)),
        har=c.method(regularizer="har", lam_grid=(1.0, 10.0), seeds=(0, 1)),
    )
    settings = c.ordered(main=c.setting())
    if arg == "all":
        methods.har_drw = c.method(regularizer="har", lam_from="har", drw=True, seeds=(0,), tier=1)
        settings.noaug = c.setting(
            dict(train=dict(augment=False)), seeds=(0,), methods=("erm", "har")
        )
    elif arg == "study2":
        return _study2(overrides)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; expected all, study2 or nothing")
    return c.study(
        name="smoke",
        base="configs/fashion_mnist_hetero.py:smoke",
        overrides=overrides,
        settings=settings,
        selection_setting="main",
        grid_seeds=(0, 1),
        methods=methods,
    )


def _study2(overrides):
    overrides = dict(overrides, tau=dict(cross_fit=True))
    overrides["train"] = dict(overrides["train"], drw_start_epoch=1)
    seeds = (0,)
    methods = c.ordered(
        erm=c.method(regularizer="none", seeds=seeds),
        har=c.method(regularizer="har", lam_grid=(1.0, 10.0), seeds=seeds),
        drw=c.method(regularizer="none", drw=True, seeds=seeds, tier=1),
        cl_filter=c.method(
            regularizer="none", drop="label_issues", reweight="noise_rate", seeds=seeds, tier=1
        ),
        cl_filter_har=c.method(
            regularizer="har",
            lam_from="har",
            drop="label_issues",
            reweight="noise_rate",
            seeds=seeds,
            tier=2,
        ),
        erm_clean=c.method(regularizer="none", labels="clean", seeds=seeds, tier=2),
        erm_oracle_filter=c.method(regularizer="none", drop="wrong_labels", seeds=seeds, tier=2),
    )
    return c.study(
        name="smoke:study2",
        base="configs/fashion_mnist_hetero.py:smoke",
        overrides=overrides,
        settings=c.ordered(main=c.setting()),
        selection_setting="main",
        grid_seeds=seeds,
        methods=methods,
        grid_extensions=1,
        comparisons=(("har", "drw"), ("har", "cl_filter"), ("cl_filter_har", "cl_filter")),
        ceilings=("erm_clean", "erm_oracle_filter"),
    )
