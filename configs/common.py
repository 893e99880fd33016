"""Config blocks shared by every experiment; each experiment file overrides fields.

One tree, one section per stage: `data` (preprocess), `model`, `pretrain`, `tau`,
`train`, `eval`, `export`. Every stage reads only its own section (plus `data` for
shapes and `model` to build networks). Configs are locked by `config_flags`, so a
misspelled override such as `--config.train.epoch=3` is an error, not a no-op.
"""

import ml_collections


def optimizer_block(*, epochs, batch_size, lr, lr_drop_epochs):
    """SGD recipe of the authors' CIFAR code (momentum 0.9, weight decay 1e-4)."""
    return ml_collections.ConfigDict(
        dict(
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=lr,
            momentum=0.9,
            # Coupled L2 on every trainable variable, as torch.optim.SGD(weight_decay).
            weight_decay=1e-4,
            # Epochs after which the learning rate is multiplied by lr_drop_factor.
            lr_drop_epochs=tuple(lr_drop_epochs),
            lr_drop_factor=0.1,
            # Pad-4 + random crop + horizontal flip, on the fly (the authors' recipe).
            augment=True,
            shuffle_buffer=10_000,
            verbose=1,
        )
    )


def run(*, regularizer, lam, drw=False):
    """One training run of the train stage (a fresh model)."""
    return ml_collections.ConfigDict(dict(regularizer=regularizer, lam=lam, drw=drw))


def base_config():
    config = ml_collections.ConfigDict()
    # Seeds the noise draw, the imbalance cut, the split, and weight initialization.
    # The authors' code fixes RandomState(0); here it is a recorded config value.
    config.seed = 0

    config.data = ml_collections.ConfigDict(
        dict(
            dataset="fashion_mnist",
            # Directory of IDX files; "" = $HAR_DATA_DIR, then the Debian package's
            # /usr/share/datasets/fashion-mnist, then a TFDS download.
            data_dir="",
            num_classes=10,
            image_shape=(28, 28, 1),
            # Keep only the first N source examples of each split (0 = all): for tests.
            limit_train=0,
            limit_test=0,
            noise=ml_collections.ConfigDict(
                dict(
                    kind="pairs",  # "none" | "pairs"
                    pairs=((0, 6), (2, 4)),
                    flip_prob=0.4,
                )
            ),
            imbalance=ml_collections.ConfigDict(
                dict(
                    kind="step",  # "none" | "step"
                    classes=(0, 2, 4, 6),
                    ratio=10.0,  # n_max / n_rare
                    by="noisy",  # cut by "noisy" label after the noise (authors) or "clean"
                )
            ),
            num_shards=4,
            # Examples per chunk that one Beam worker reads and corrupts at once (numpy,
            # vectorized): bounds a worker's memory, and sets the parallelism.
            chunk_size=10_000,
            # Per-channel normalization applied inside the model (so serving takes raw
            # uint8): pixel values are (x - mean) / std on the 0..255 scale.
            mean=(72.94,),
            std=(90.02,),
        )
    )

    config.model = ml_collections.ConfigDict(
        dict(
            name="resnet",
            blocks_per_stage=1,
            widths=(16, 32, 64),
            stem_strides=2,
        )
    )

    # The authors' CIFAR schedule: 120 epochs, lr x0.1 after epochs 80 and 100.
    config.pretrain = optimizer_block(epochs=120, batch_size=128, lr=0.1, lr_drop_epochs=(80, 100))
    # Half A trains the ERM model, half B measures its per-class error.
    config.pretrain.stratified = True

    config.tau = ml_collections.ConfigDict(
        dict(
            uncertainty_exponent=0.6,  # a in tau = err^a / n^b (paper eq. 5)
            density_exponent=0.4,  # b
            # The authors' code lets a class with zero validation error get tau = 0;
            # a floor > 0 keeps some regularization there. 0 reproduces the authors.
            error_floor=0.0,
        )
    )

    config.train = optimizer_block(epochs=120, batch_size=128, lr=0.1, lr_drop_epochs=(80, 100))
    # "official": sum over tapped layers of per-example gradient norms (authors' code);
    # "paper": square root of the sum of squares (paper, Sec. 2.3).
    config.train.aggregation = "official"
    # "official": R from the gradient of the batch-MEAN loss (a 1/B factor per
    # example), so lambda here is the authors' lambda (README: 10 at B = 128).
    # "per_example": gradient of each example's own loss (lambda * tau <= 0.1 in the
    # paper's text).
    config.train.scale = "official"
    # Runs to train; each is a fresh model. regularizer: "none" (ERM, lambda ignored
    # and no double backprop), "uniform" (tau = 1), "har" (estimated tau).
    # drw: class-balanced loss weights from epoch drw_start_epoch (HAR-DRW, ERM-DRW).
    config.train.runs = ml_collections.ConfigDict(
        dict(
            erm=run(regularizer="none", lam=0.0),
            har=run(regularizer="har", lam=10.0),
        ),
        sort_keys=False,  # runs train and are reported in this order
    )

    # Deferred re-weighting (for runs with drw=True): from the first lr drop, as the
    # authors do, with beta 0.9999.
    config.train.drw_start_epoch = 80
    config.train.drw_beta = 0.9999

    config.eval = ml_collections.ConfigDict(
        dict(
            batch_size=512,
            # Report columns, in this order (sort_keys=False keeps it).
            groups=ml_collections.ConfigDict(
                dict(noisy_rare=(0, 2, 4, 6), clean=(1, 3, 5, 7, 8, 9)), sort_keys=False
            ),
        )
    )

    config.export = ml_collections.ConfigDict(dict(run="har", model_name="har", version=1))
    return config
