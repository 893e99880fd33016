r"""Label issues and tau from one split vs cross-fitted held-out predictions.

On the default config's data (Fashion-MNIST, pairs (0, 6), (2, 4) flipped with
probability 0.4, then those classes cut to 1/10 by noisy label), a stratified subset
of the train split, a small CNN. One `HARClassifier(cross_fit=True)` fit per seed
gives both estimates: the one-split one is half B predicted by the model of half A
(the authors' Algorithm 1), the cross-fitted one adds half A predicted by the model
of half B. Per seed it measures:

- detection of the truly flipped examples (given label != clean label):
  precision / recall of cleanlab's flags and AUROC of 1 - label quality, (a) with
  cleanlab on half B's probabilities only, (b) on every example's;
- Spearman rank correlation, over the C classes, of the estimated per-class error
  (HAR's I_c) and of cleanlab's noise rate with the true flip rate 1 - T[c, c] of
  the train split (manifest);
- the wall time of each pretraining (cross-fitting costs the second one).

Commands (docs/LABEL_ISSUES.md has the figures):
  python -m pipeline.preprocess --config=configs/fashion_mnist_hetero.py \
      --workdir=/tmp/lbl_fm
  nice -n 10 python benchmarks/label_issues.py --workdir=/tmp/lbl_fm --seeds 0 1 2

The final HAR model is trained for --epochs (default 1) only: its accuracy is not
measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from har_tf import HARClassifier, label_issues, layers, tau  # noqa: E402
from pipeline.data import datasets, detection  # noqa: E402
from pipeline.evaluate import true_noise_rates  # noqa: E402


def load_train(workdir: str):
    """Images float32 [N, 28, 28, 1], given labels, clean labels of the train split."""
    ds = datasets.make_dataset(workdir, "train", batch_size=4096, training=False, with_meta=True)
    xs, ys, cs = [], [], []
    for x, y, meta in ds.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
        cs.append(meta["clean_label"])
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64), np.concatenate(cs)


def stratified_subset(labels, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions: floor(fraction * n_c) of each label's examples, seeded."""
    rng = np.random.default_rng(seed)
    keep = [
        rng.permutation(np.flatnonzero(labels == c))[: int(fraction * np.sum(labels == c))]
        for c in np.unique(labels)
    ]
    return np.sort(np.concatenate(keep))


def small_cnn(num_classes: int = 10):
    """Two 3x3 convolutions (16, 32) with tappable pre-affine BNs, GAP, dense."""

    def build():
        inputs = keras.Input((28, 28, 1))
        h = keras.layers.Rescaling(1 / 90.02, offset=-72.94 / 90.02)(inputs)
        for i, width in enumerate((16, 32)):
            h = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(h)
            h = layers.pre_affine_batch_norm(h, name=f"bn{i}")
            h = keras.layers.ReLU()(h)
            h = keras.layers.MaxPooling2D()(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(inputs, keras.layers.Dense(num_classes)(h))

    return build


def one_seed(x, y, clean, true_rate, args, seed: int) -> dict:
    clf = HARClassifier(
        small_cnn(),
        lam=10.0,
        cross_fit=True,
        pretrain_epochs=args.pretrain_epochs,
        epochs=args.epochs,
        batch_size=128,
        optimizer=keras.optimizers.Adam(1e-3),
        random_state=seed,
    )
    start = time.perf_counter()
    clf.fit(x, y, verbose=0)
    total = time.perf_counter() - start
    num_classes = len(clf.classes_)
    _, half_b = clf.halves_
    proba_b = clf.held_out_proba_[half_b]
    one_split = label_issues.find_label_issues(y[half_b], proba_b, ids=half_b)
    cross = clf.label_issues_
    err_one, _ = tau.per_class_error(y[half_b], np.argmax(proba_b, axis=1), num_classes)

    def spearman(estimate):
        return float(stats.spearmanr(estimate, true_rate).statistic)

    def det(frame):
        rows = frame["id"].to_numpy()
        return detection.report(
            y[rows], clean[rows], frame["is_label_issue"], frame["label_quality"], num_classes
        )["overall"]

    return {
        "seed": seed,
        "detection_one_split": det(one_split),
        "detection_cross_fit": det(cross),
        "class_error_one_split": err_one.tolist(),
        "class_error_cross_fit": clf.class_error_.tolist(),
        "cleanlab_noise_rate_one_split": label_issues.noise_rates(y[half_b], proba_b).tolist(),
        "cleanlab_noise_rate_cross_fit": clf.noise_rate_.tolist(),
        "spearman_error_one_split": spearman(err_one),
        "spearman_error_cross_fit": spearman(clf.class_error_),
        "spearman_cleanlab_one_split": spearman(label_issues.noise_rates(y[half_b], proba_b)),
        "spearman_cleanlab_cross_fit": spearman(clf.noise_rate_),
        "tau_cross_fit": clf.tau_.tolist(),
        "pretrain_seconds": clf.pretrain_seconds_,
        "fit_seconds": total,
        "held_out_accuracy_vs_given": float(np.mean(np.argmax(clf.held_out_proba_, axis=1) == y)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="holds the preprocess stage's output")
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--subset_seed", type=int, default=0)
    parser.add_argument("--pretrain_epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="", help="append one JSON line per seed here")
    args = parser.parse_args()

    x, y, clean = load_train(args.workdir)
    true_rate = np.asarray(true_noise_rates(datasets.load_manifest(args.workdir)))
    keep = stratified_subset(y, args.fraction, args.subset_seed)
    x, y, clean = x[keep], y[keep], clean[keep]
    print(
        json.dumps(
            {
                "examples": int(len(y)),
                "per_label": np.bincount(y, minlength=10).tolist(),
                "flipped": int(np.sum(y != clean)),
                "true_flip_rate": true_rate.tolist(),
                "args": vars(args),
            }
        ),
        flush=True,
    )
    for seed in args.seeds:
        result = one_seed(x, y, clean, true_rate, args, seed)
        line = json.dumps(result)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
