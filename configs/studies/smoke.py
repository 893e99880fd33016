"""A smoke study for the tests: 2 seeds x (ERM + HAR at 2 lambdas), tiny data, seconds.

  python -m pipeline.study --config=configs/studies/smoke.py --workdir=/tmp/smoke_study

Not a result. Variant "all" adds a second setting and a lam_from method (DRW on HAR's
selected lambda) to exercise every phase of the plan.
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
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; expected all or nothing")
    return c.study(
        name="smoke",
        base="configs/fashion_mnist_hetero.py:smoke",
        overrides=overrides,
        settings=settings,
        selection_setting="main",
        grid_seeds=(0, 1),
        methods=methods,
    )
