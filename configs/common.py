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
            # "sgd" (with momentum) or "adam" (the paper's IMDB recipe).
            optimizer="sgd",
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
            # tf.distribute strategy the stage trains under: "default" (one device),
            # "mirrored" (every local GPU; batch_size stays the global batch, split
            # across replicas; set model.synchronized_bn too) or "multi_worker" (the
            # TF_CONFIG cluster; run the stage alone on every worker, all reading
            # one shared workdir). See docs/DISTRIBUTED.md.
            strategy="default",
            # TensorFlow op determinism (tf.config.experimental.enable_op_determinism)
            # while this stage trains: with the seeded tf.data input, a run resumed
            # from its per-epoch checkpoint ends with the weights of an uninterrupted one.
            deterministic=True,
        )
    )


def run(*, regularizer, lam, drw=False, reg_every=1, drop="none", labels="noisy", reweight="none"):
    """One training run of the train stage (a fresh model).

    reg_every > 1: the opt-in approximation of `HARModel(reg_every=...)`, the
    regularizer on every k-th step only, with k * lam (docs/PERFORMANCE.md).
    drop: "none"; "label_issues" trains without the examples cleanlab flags (needs
    tau.cross_fit: cleanlab's recipe, combinable with HAR); "wrong_labels" without
    every wrongly-labelled one (a benchmark's oracle). labels: "noisy", or "clean"
    (a benchmark's ceiling). reweight: "none", or "noise_rate" (CleanLearning's
    class weights after its drop; needs tau.cross_fit). pipeline/training/
    training_set.py has the details.
    """
    return ml_collections.ConfigDict(
        dict(
            regularizer=regularizer,
            lam=lam,
            drw=drw,
            reg_every=reg_every,
            drop=drop,
            labels=labels,
            # Only when set: a run without it keeps the fingerprint it had before.
            **({} if reweight == "none" else {"reweight": reweight}),
        )
    )


def rare_but_clean_imbalance(classes, *, ratio=10.0):
    """The paper's App. C.3 variant: the rare classes are clean ones.

    A step imbalance of `classes`, chosen among classes the noise leaves alone, so
    that rarity and label noise fall on different classes. Used by the `rare_clean`
    variant of configs/fashion_mnist_hetero.py.
    """
    return ml_collections.ConfigDict(
        dict(kind="step", classes=tuple(classes), ratio=ratio, counts=(), by="noisy")
    )


def har_thresholds(slices, *, baseline="erm"):
    """The blessing HAR's purpose asks for (config.eval.thresholds;
    pipeline/evaluation/blessing.py).

    HAR trades nothing on the clean classes for the noisy & rare ones, so a HAR model
    ships only if, against the ERM run of the same pipeline (the baseline), it loses
    at most 0.5 points on each slice in `slices` (the noisy / rare groups: the slices
    that matter) and at most 1 point overall, and if its overall accuracy is at least
    0.5: a floor that only a broken model misses (on the Fashion-MNIST configs the
    six clean classes alone give about 58 points overall). Accuracies are fractions,
    so 0.5 points is 0.005. A gain passes; a model that gains overall and loses the
    noisy & rare classes does not. The baseline run itself is judged on the value
    threshold only.
    """
    out = {
        "overall_floor": dict(metric="accuracy", slice="overall", lower_bound=0.5),
        **{
            f"{s}_vs_{baseline}": dict(
                metric="accuracy",
                slice=s,
                baseline=baseline,
                direction="higher_is_better",
                absolute=-0.005,
            )
            for s in slices
        },
        f"overall_vs_{baseline}": dict(
            metric="accuracy",
            slice="overall",
            baseline=baseline,
            direction="higher_is_better",
            absolute=-0.01,
        ),
    }
    return ml_collections.ConfigDict(out, sort_keys=False)


def apply_smoke(config):
    """Shrinks any experiment to seconds: a slice of the data, one epoch, a tiny net."""
    config.data.limit_train = 3000
    config.data.limit_test = 500
    config.data.num_shards = 2
    config.model.widths = (4, 8, 8)
    for section in (config.pretrain, config.train):
        section.epochs = 1
        section.lr_drop_epochs = ()
        section.batch_size = 64
        section.verbose = 0
    config.train.drw_start_epoch = 0
    return config


def _data_source():
    """config.data, first part: where the examples come from."""
    return dict(
        # The dataset's name, recorded in manifest.json. For source "auto" / "idx"
        # one of pipeline.data.sources.DATASETS; for "tfds" the TFDS builder name, e.g.
        # "cifar10", "cifar100", "mnist", "fashion_mnist" (or "name:version").
        dataset="fashion_mnist",
        # Where examples come from (pipeline/data/sources/, one module per source):
        #   "auto"        IDX files: data_dir, then $HAR_DATA_DIR, then the Debian
        #                 package's directory, then a TFDS download (IDX datasets only)
        #   "idx"         IDX files in data_dir (or $HAR_DATA_DIR); no fallback
        #   "tfds"        the TFDS builder `dataset` (download_and_prepare, then
        #                 sliced reads); data_dir = TFDS data_dir ("" = its default)
        #   "npz"         <data_dir>/<split_names.SPLIT>.npz holding `x` uint8
        #                 [N, H, W(, C)] and `y` int [N]
        #   "image_list"  WebVision-style "<relative path> <label>" lists (image_list)
        #   "csv"         a text CSV (_data_text's csv; modality "text")
        source="auto",
        # "auto" / "idx": the directory of IDX files; "" = $HAR_DATA_DIR, then the
        # Debian package's /usr/share/datasets/fashion-mnist, then a TFDS download.
        # "tfds": TFDS's data_dir. "npz" / "image_list": the dataset's root.
        data_dir="",
        # The source's name of each split: a TFDS split name (e.g. test="validation")
        # or an .npz file stem. Not used by the IDX and image-list sources.
        split_names=ml_collections.ConfigDict(dict(train="train", test="test")),
        # TFDS feature keys. CIFAR-100's 20 superclasses: label_key="coarse_label"
        # (with num_classes=20).
        image_key="image",
        label_key="label",
        # source = "image_list" (WebVision 1.0's layout by default): list files and
        # the directories their paths are relative to, all under data_dir. Images
        # are decoded (PIL) and resized to image_shape.
        image_list=ml_collections.ConfigDict(
            dict(
                train="info/train_filelist_google.txt",
                train_root="",
                test="info/val_filelist.txt",
                test_root="val_images_256",
                # Keep only labels < max_classes (0 = all): 50 = "mini WebVision"
                # (Jiang et al. 2018), the first 50 classes of the Google subset.
                max_classes=0,
            )
        ),
    )


def _data_text():
    """config.data, second part: the modality, and what text data needs."""
    return dict(
        # "image" or "text": what the records hold. Text comes from source "csv" or
        # a TFDS text dataset ("tfds" with text_key); see configs/imdb_hetero.py.
        modality="image",
        # source = "csv": one CSV file with a header row. The test split is a
        # stratified, seeded held-out share of it (recorded in manifest.json).
        csv=ml_collections.ConfigDict(
            dict(
                # Relative paths are under data_dir; "package:<module>/<path>" is a
                # file inside an installed Python package, found wherever it is
                # installed (so no virtualenv location enters the fingerprints).
                path="",
                text_column="text",
                label_column="label",  # integer labels 0 .. num_classes - 1
                # Or class names in the label column: class c is label_names[c],
                # e.g. ("neg", "pos"). Empty: the column holds integers.
                label_names=(),
                # Keep only rows whose filter_column equals filter_value ("" = all).
                filter_column="",
                filter_value="",
                test_fraction=0.2,
                split_seed=0,
            )
        ),
        # modality = "text" with source "tfds": the Text feature (imdb_reviews: "text").
        text_key="text",
        # modality = "text": the vocabulary preprocess builds from the kept train
        # records (vocab.txt; max_tokens counts the padding and OOV ids), and the
        # number of tokens a text is cut or padded to (pipeline/data/text.py).
        text=ml_collections.ConfigDict(dict(max_tokens=20_000, sequence_length=256)),
    )


def _noise():
    """config.data.noise: label noise on the train split (docs/DATA.md)."""
    return ml_collections.ConfigDict(
        dict(
            # "none" | "pairs" | "groups" | "cifar10_hetero" |
            # "cifar100_superclass" | "uniform" | "asymmetric" | "matrix"
            kind="pairs",
            # "pairs": each pair swaps labels with probability flip_prob.
            pairs=((0, 6), (2, 4)),
            # "pairs", "groups" and the two presets: the probability of leaving
            # the clean label (0.4 in the paper).
            flip_prob=0.4,
            # "groups": a label moves to each other member of its group with
            # flip_prob / (size - 1). Default: CIFAR-100's vehicles 1 and 2.
            # The presets fix their classes: "cifar10_hetero" = pairs (1, 9),
            # (3, 5) (needs num_classes 10); "cifar100_superclass" = these two
            # groups (needs num_classes 100); both use flip_prob.
            groups=((8, 13, 48, 58, 90), (41, 69, 81, 85, 89)),
            # "uniform": flip to a uniformly chosen OTHER class with this rate.
            rate=0.2,
            # "asymmetric": class c flips to targets[c] with probability
            # rates[c]; one entry per class. IMDB (paper App. C.1):
            # rates=(0.05, 0.4), targets=(1, 0).
            rates=(),
            targets=(),
            # "matrix": the full (C, C) T[clean, noisy]; rows must sum to 1.
            matrix=(),
        )
    )


def _imbalance():
    """config.data.imbalance: class imbalance of the train split (docs/DATA.md)."""
    return ml_collections.ConfigDict(
        dict(
            # "none" | "step" | "long_tailed" | "counts"
            kind="step",
            # "step": these classes are cut to floor(n_max / ratio). The paper's
            # App. C.3 "rare but clean" setting is a step cut of classes the
            # noise does not touch: see rare_but_clean_imbalance() above.
            classes=(0, 2, 4, 6),
            # "step" and "long_tailed": n_max / n_rare. "long_tailed" keeps
            # floor(n_max * ratio ** (-c / (C - 1))) of class c (Cao et al. 2019).
            ratio=10.0,
            # "counts": examples to keep per class, one entry per class.
            counts=(),
            by="noisy",  # cut by "noisy" label after the noise (authors) or "clean"
        )
    )


def data_block():
    """config.data. Every field is documented in docs/DATA.md (sources, noise kinds,
    imbalance kinds, with example commands)."""
    return ml_collections.ConfigDict(
        dict(
            **_data_source(),
            **_data_text(),
            num_classes=10,
            # (H, W, C) of the records. The IDX, npz and TFDS sources must match it;
            # image lists (and TFDS datasets of variable image size) are resized to it.
            image_shape=(28, 28, 1),
            # Keep only the first N source examples of each split (0 = all): for tests.
            limit_train=0,
            limit_test=0,
            # Share of the (noisy) train split held out as a validation split, per noisy
            # label, seeded (pipeline/data/validation.py; ids in manifest.json). Pretrain,
            # estimate_tau and train never use it; model selection reads it. 0 = none.
            val_fraction=0.0,
            # Label noise on the train split; T[clean, noisy] is recorded in the manifest.
            noise=_noise(),
            # Class imbalance of the train split, cut after the noise. Targets use n_max =
            # the source's largest class before noise (Fashion-MNIST 6000, CIFAR-10 5000).
            imbalance=_imbalance(),
            # The data schema (TFX's Schema proto, text format) the splits are checked
            # against: "" = <workdir>/schema/schema.pbtxt, inferred by the workdir's
            # first run and kept for later ones; a path = a curated schema, read only
            # (docs/DATA_VALIDATION.md).
            schema="",
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


def model_block():
    """config.model: the network (pipeline.training.modeling.build_backbone)."""
    return ml_collections.ConfigDict(
        dict(
            name="resnet",
            blocks_per_stage=1,
            widths=(16, 32, 64),
            stem_strides=2,
            # BatchNorm statistics over the global batch of all replicas. Set True
            # under a multi-replica strategy (strategy = "mirrored" on several GPUs),
            # so that training does not depend on how a batch is split. On one device
            # both compute the same statistics.
            synchronized_bn=False,
        )
    )


def pretrain_block():
    """config.pretrain: the ERM model whose errors give tau."""
    # The authors' CIFAR schedule: 120 epochs, lr x0.1 after epochs 80 and 100.
    pretrain = optimizer_block(epochs=120, batch_size=128, lr=0.1, lr_drop_epochs=(80, 100))
    # Half A trains the ERM model, half B measures its per-class error.
    pretrain.stratified = True
    return pretrain


def tau_block():
    """config.tau: tau = err^a / n^b from the pretrained model (estimate_tau)."""
    return ml_collections.ConfigDict(
        dict(
            uncertainty_exponent=0.6,  # a in tau = err^a / n^b (paper eq. 5)
            density_exponent=0.4,  # b
            # The authors' code lets a class with zero validation error get tau = 0;
            # a floor > 0 keeps some regularization there. 0 reproduces the authors.
            error_floor=0.0,
            # Cross-fitting: pretrain also fits ERM on half B, which predicts half A,
            # so err_c uses every train example and estimate_tau writes cleanlab's
            # label_issues.csv (evaluate then scores it against the clean labels).
            # Needs the label-issues extra (cleanlab). False: the authors' one split.
            cross_fit=False,
        )
    )


def train_block():
    """config.train: the runs (ERM, uniform, HAR) and how they train."""
    train = optimizer_block(epochs=120, batch_size=128, lr=0.1, lr_drop_epochs=(80, 100))
    # "official": sum over tapped layers of per-example gradient norms (authors' code);
    # "paper": square root of the sum of squares (paper, Sec. 2.3).
    train.aggregation = "official"
    # "official": R from the gradient of the batch-MEAN loss (a 1/B factor per
    # example), so lambda here is the authors' lambda (README: 10 at B = 128).
    # "per_example": gradient of each example's own loss (lambda * tau <= 0.1 in the
    # paper's text).
    train.scale = "official"
    # True: regularized runs recompute each residual block instead of keeping its
    # tensors (HARModel checkpoint_layers; resnet only). The same objective, less
    # peak memory for more time per step (the measured trade-off on ResNet-32 is in
    # docs/PERFORMANCE.md). For a GPU that the exact step does not fit in.
    train.checkpoint_blocks = False
    # Runs to train; each is a fresh model. regularizer: "none" (ERM, lambda ignored
    # and no double backprop), "uniform" (tau = 1), "har" (estimated tau).
    # drw: class-balanced loss weights from epoch drw_start_epoch (HAR-DRW, ERM-DRW).
    train.runs = ml_collections.ConfigDict(
        dict(
            erm=run(regularizer="none", lam=0.0),
            har=run(regularizer="har", lam=10.0),
        ),
        sort_keys=False,  # runs train and are reported in this order
    )

    # Deferred re-weighting (for runs with drw=True): from the first lr drop, as the
    # authors do, with beta 0.9999.
    train.drw_start_epoch = 80
    train.drw_beta = 0.9999
    return train


def eval_block():
    """config.eval: the evaluate stage's report and the blessing thresholds."""
    return ml_collections.ConfigDict(
        dict(
            batch_size=512,
            # Evaluate on the test split after every epoch of the train stage (one
            # inference pass over it per epoch), recorded in each run's history.json.
            # Needed for the report's best-epoch figure (selected on the test set, as
            # the authors report); without it the report says that figure is missing.
            per_epoch_test=True,
            # After every epoch of the train stage, the memorization diagnostic on the
            # records the run trains on, un-augmented, in inference mode (fit_* in
            # history.json): accuracy against the noisy labels, and the fraction of
            # wrongly-labelled examples predicted as their wrong label. One more
            # inference pass over the training data per epoch; the study runner sets it.
            per_epoch_memorization=False,
            # Run those per-epoch passes (test, validation, memorization) only after
            # every k-th epoch and after the last: each is a pass over its split, which
            # on a small training set with a long schedule costs more than the epoch's
            # training. The final-epoch figures are the same for every k.
            per_epoch_every=1,
            # Report columns, in this order (sort_keys=False keeps it).
            groups=ml_collections.ConfigDict(
                dict(noisy_rare=(0, 2, 4, 6), clean=(1, 3, 5, 7, 8, 9)), sort_keys=False
            ),
            # What a run must reach to be BLESSED (name -> threshold; TFMA's value and
            # change thresholds, per metric and slice: pipeline/evaluation/blessing.py). Only a
            # blessed export is pushed. A config that renames the groups or the ERM
            # run sets its own (har_thresholds(slices, baseline=...)); empty: every
            # run is blessed.
            thresholds=har_thresholds(("noisy_rare",)),
        )
    )


def export_block():
    """config.export: the exported (and pushed) run."""
    return ml_collections.ConfigDict(
        dict(
            run="har",  # the run exported (and pushed)
            model_name="har",
            version=1,
            # The push stage's TF Serving model base path: the exported version
            # directory is copied to <push_destination>/<version> when the run is
            # blessed (evaluate) and infra-blessed (export). A relative path is under
            # the workdir. "" = no push (the push stage records that).
            push_destination="",
        )
    )


def base_config():
    """The defaults of every experiment, one section per stage; configs/*.py change
    what differs."""
    config = ml_collections.ConfigDict()
    # Seeds the noise draw, the imbalance cut, the split, and weight initialization.
    # The authors' code fixes RandomState(0); here it is a recorded config value.
    config.seed = 0
    config.data = data_block()
    config.model = model_block()
    config.pretrain = pretrain_block()
    config.tau = tau_block()
    config.train = train_block()
    config.eval = eval_block()
    config.export = export_block()
    return config
