r"""Heteroskedastic + imbalanced Fashion-MNIST: the CIFAR-10 experiment's stand-in.

T-shirt/top (0) <-> Shirt (6) and Pullover (2) <-> Coat (4) swap labels with
probability 0.4 (the CIFAR-10 cat/dog, truck/automobile pairs); then those four
classes are cut to 1/10 of the others by noisy label (step imbalance, ratio 10, the
authors' order). Runs: ERM and HAR (lambda 10, batch-mean scale as in the authors'
README). Groups: noisy_rare = {0, 2, 4, 6}, clean = the rest.

Commands:
  python -m pipeline.run --config=configs/fashion_mnist_hetero.py --workdir=runs/fm
  python -m pipeline.run --config=configs/fashion_mnist_hetero.py:quick \
      --workdir=runs/quickstart          # what `make run` runs
  python -m pipeline.run --config=configs/fashion_mnist_hetero.py:smoke \
      --workdir=/tmp/smoke               # seconds; used by the tests
  python -m pipeline.run --config=configs/fashion_mnist_hetero.py:quick,rare_clean \
      --workdir=runs/fm_rare_clean       # paper App. C.3: the rare classes are clean

Variants: a schedule (full, quick or smoke), optionally followed by ",rare_clean":
the same noise, but the step cut falls on the clean classes 1, 3, 5, 7 (Trouser,
Dress, Sandal, Sneaker) instead of the noisy ones; groups noisy / rare_clean / clean.
",reg_every" trains HAR exactly and with `reg_every` 2 and 4 (the opt-in speed
approximation), to measure what the approximation costs in accuracy.

Expected runtime and result of each variant, measured on named hardware:
docs/RESULTS.md, "Runs of each config" (`:quick` is `make run`; `:smoke` runs in
seconds and is not a result).
"""

import ml_collections

from configs import common


def get_config(arg=None):
    config = common.base_config()
    variant, *modifiers = (arg or "full").split(",")
    if variant == "rare_clean":
        variant, modifiers = "full", ["rare_clean", *modifiers]
    if variant == "full":
        pass
    elif variant == "quick":
        # Fits `make run` into 15 minutes on 2 cores: fewer epochs, same data and
        # the same shape of schedule (drops at 2/3 and 5/6 of training).
        for section in (config.pretrain, config.train):
            section.epochs = 12
            section.lr_drop_epochs = (8, 10)
        config.train.drw_start_epoch = 8
        # `make run` pushes a blessed HAR model here, for `python -m pipeline.serve
        # --model_base_path=runs/quickstart/serving/har`.
        config.export.push_destination = "serving/har"
    elif variant == "smoke":
        common.apply_smoke(config)
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of full, quick, smoke")
    for modifier in modifiers:
        if modifier == "rare_clean":
            config.data.imbalance = common.rare_but_clean_imbalance((1, 3, 5, 7), ratio=10.0)
            config.eval.groups = ml_collections.ConfigDict(
                dict(noisy=(0, 2, 4, 6), rare_clean=(1, 3, 5, 7), clean=(8, 9)),
                sort_keys=False,
            )
            config.eval.thresholds = common.har_thresholds(("noisy", "rare_clean"))
        elif modifier == "reg_every":
            # The speed approximation against the exact objective (docs/PERFORMANCE.md):
            # HAR exact, and regularized on every 2nd / 4th step with 2 / 4 x lambda.
            lam = config.train.runs.har.lam
            config.train.runs = ml_collections.ConfigDict(
                dict(
                    har=common.run(regularizer="har", lam=lam),
                    har_every2=common.run(regularizer="har", lam=lam, reg_every=2),
                    har_every4=common.run(regularizer="har", lam=lam, reg_every=4),
                ),
                sort_keys=False,
            )
            config.export.run = "har"
            # No ERM run: the approximations are judged against the exact objective.
            config.eval.thresholds = common.har_thresholds(("noisy_rare",), baseline="har")
        else:
            raise ValueError(
                f"unknown config modifier {modifier!r}; expected rare_clean or reg_every"
            )
    return config
