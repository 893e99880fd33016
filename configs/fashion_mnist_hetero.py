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

Measured on the project's 2-core CPU machine (seed 0, README has the details):
  :quick  11.2 min; noisy_rare / clean accuracy: ERM 50.7 / 97.5, HAR 51.3 / 97.4
  :smoke  ~30 s; not a result (one epoch on 3,000 examples)
  full    not measured yet (120 epochs for each of pretrain, ERM and HAR)
"""

from configs import common


def get_config(arg=None):
    config = common.base_config()
    variant = arg or "full"
    if variant == "full":
        pass
    elif variant == "quick":
        # Fits `make run` into 15 minutes on 2 cores: fewer epochs, same data and
        # the same shape of schedule (drops at 2/3 and 5/6 of training).
        for section in (config.pretrain, config.train):
            section.epochs = 12
            section.lr_drop_epochs = (8, 10)
        config.train.drw_start_epoch = 8
    elif variant == "smoke":
        # Seconds: a slice of the data, one epoch, the smallest network.
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
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of full, quick, smoke")
    return config
