r"""Study 2 (issue 30): HAR against reweighting and label cleaning at a realistic size.

docs/RESULTS.md "Study 2" holds the pre-registered protocol, how the sizes below were
chosen (from ERM probes only), and the results.

  python -m pipeline.study --config=configs/studies/fm_study2.py:probe --workdir=DIR

Data (every variant): heteroskedastic + imbalanced Fashion-MNIST as in Study 1
(configs/fashion_mnist_hetero.py: pairs 0<->6 and 2<->4 swap with probability 0.4, and
those four classes are cut x10 by noisy label) on a stratified subset of 1,200
examples per clean class and 120 per noisy & rare class (by noisy label), of which
12.5% of each noisy label is held out for validation (150 and 15): 6,720 training
examples, 105 per noisy & rare class, so each pretrain half holds 52-53 of them.
Network: the paper's ResNet-32 (5 blocks per stage, widths 16/32/64) with the
project's stride-2 stem for 28x28 inputs.

Variant "probe": ERM only, on seed 0, in two schedules (settings `e120`: the paper's
120 epochs with lr drops after 80 and 100; `e60`: 60 epochs, drops after 40 and 50)
and without augmentation (`e60_noaug`, pretrain likewise), to size the schedule from
ERM's memorization alone (training accuracy against the noisy labels, wrong labels
fitted); no other method runs before the sizes are fixed.
"""

from configs.studies import common as c

RARE, CLEAN = 120, 1200  # per class by noisy label, before the validation split
VAL_FRACTION = 0.125  # 15 per noisy & rare class, 150 per clean class
NOISY_RARE = (0, 2, 4, 6)
EVERY = 10  # the per-epoch passes (test, validation, memorization) after every 10th epoch


def schedule(epochs: int) -> dict:
    """The paper's schedule shape: lr x0.1 after 2/3 and 5/6 of the epochs."""
    return dict(epochs=epochs, lr_drop_epochs=(epochs * 2 // 3, epochs * 5 // 6))


def data_overrides() -> dict:
    counts = tuple(RARE if k in NOISY_RARE else CLEAN for k in range(10))
    return dict(
        data=dict(
            val_fraction=VAL_FRACTION,
            imbalance=dict(kind="counts", classes=(), counts=counts, by="noisy"),
        ),
        model=dict(blocks_per_stage=5, widths=(16, 32, 64), stem_strides=2),
        eval=dict(per_epoch_memorization=True, per_epoch_every=EVERY),
    )


def probe_config():
    erm_only = c.ordered(erm=c.method(regularizer="none", seeds=(0,)))

    def timed(epochs, augment=True):
        s = dict(schedule(epochs), augment=augment)
        return c.setting(
            dict(
                pretrain=dict(s),
                train=dict(s, drw_start_epoch=s["lr_drop_epochs"][0]),
            )
        )

    return c.study(
        name="fm_study2:probe",
        base="configs/fashion_mnist_hetero.py",
        overrides=data_overrides(),
        settings=c.ordered(e120=timed(120), e60=timed(60), e60_noaug=timed(60, augment=False)),
        selection_setting="e120",
        grid_seeds=(0,),
        methods=erm_only,
    )


# The schedule the probes chose (docs/RESULTS.md, Study 2 "Sizing probes").
EPOCHS, AUGMENT = 60, False
LAM_GRID = (1.0, 4.0, 16.0, 64.0)  # x4 steps; grown by up to 2 values per side at an edge
FIVE, THREE = (0, 1, 2, 3, 4), (0, 1, 2)


def study_config():
    s = dict(schedule(EPOCHS), augment=AUGMENT)
    overrides = data_overrides()
    overrides.update(
        pretrain=dict(s),
        train=dict(s, drw_start_epoch=s["lr_drop_epochs"][0]),
        tau=dict(cross_fit=True),
    )
    m = c.method
    methods = c.ordered(
        erm=m(regularizer="none", seeds=FIVE),
        har=m(regularizer="har", lam_grid=LAM_GRID, seeds=FIVE),
        unif=m(regularizer="uniform", lam_grid=LAM_GRID, seeds=FIVE),
        drw=m(regularizer="none", drw=True, seeds=FIVE),
        har_drw=m(regularizer="har", lam_from="har", drw=True, seeds=FIVE),
        # cleanlab's CleanLearning: drop the flagged examples, weigh the rest by
        # 1 / (1 - noise rate) of their label (Deviation 2, docs/RESULTS.md).
        cl_filter=m(regularizer="none", drop="label_issues", reweight="noise_rate", seeds=FIVE),
        cl_filter_har=m(
            regularizer="har",
            lam_from="har",
            drop="label_issues",
            reweight="noise_rate",
            seeds=THREE,
            tier=1,
        ),
        erm_clean=m(regularizer="none", labels="clean", seeds=THREE, tier=1),
        erm_oracle_filter=m(regularizer="none", drop="wrong_labels", seeds=THREE, tier=1),
    )
    return c.study(
        name="fm_study2",
        base="configs/fashion_mnist_hetero.py",
        overrides=overrides,
        settings=c.ordered(main=c.setting()),
        selection_setting="main",
        grid_seeds=(0, 1),
        methods=methods,
        grid_extensions=2,
        comparisons=(
            ("har", "drw"),
            ("har_drw", "drw"),
            ("har", "unif"),
            ("har", "cl_filter"),
            ("cl_filter_har", "cl_filter"),
        ),
        ceilings=("erm_clean", "erm_oracle_filter"),
    )


def get_config(arg=None):
    if arg == "probe":
        return probe_config()
    if arg:
        raise ValueError(f"unknown variant {arg!r}; expected probe or nothing")
    return study_config()
