r"""The paper's heteroskedastic + imbalanced CIFAR-10 (Cao et al. 2021, Sec. 4).

Automobile (1) <-> truck (9) and cat (3) <-> dog (5) swap labels with probability
0.4 (noise kind "cifar10_hetero"); then those four classes are cut to 1/10 of the
others by noisy label (step imbalance, ratio 10, n_max = 5000, so they keep 500).
The data comes from TFDS (`cifar10`), which must be prepared: without network,
run `tfds build cifar10` on a machine with one and copy its data_dir here, then
pass --config.data.data_dir=<that data_dir>. The network is the authors' ResNet-32.

  python -m pipeline.preprocess --config=configs/cifar10_hetero.py \
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=runs/c10
  python -m pipeline.run --config=configs/cifar10_hetero.py --workdir=runs/c10

Variants: full (default), smoke (a slice of the data, one epoch; used by the tests
on a mocked TFDS). Expected runtime: not measured on this project's machines.
Expected result: the paper's noisy_rare / clean accuracy, ERM 52.9 / 94.4 and HAR
63.5 / 94.3.
"""

import ml_collections

from configs import common

NOISY_RARE = (1, 3, 5, 9)


def get_config(arg=None):
    config = common.base_config()
    data = config.data
    data.source = "tfds"
    data.dataset = "cifar10"
    data.num_classes = 10
    data.image_shape = (32, 32, 3)
    data.noise.kind = "cifar10_hetero"
    data.imbalance.classes = NOISY_RARE
    # The usual CIFAR-10 per-channel statistics on the 0..255 scale.
    data.mean = (125.31, 122.95, 113.87)
    data.std = (62.99, 62.09, 66.70)
    # ResNet-32: 3 stages of 5 basic blocks, stride-1 stem (the authors' network).
    config.model.blocks_per_stage = 5
    config.model.stem_strides = 1
    config.eval.groups = ml_collections.ConfigDict(
        dict(noisy_rare=NOISY_RARE, clean=(0, 2, 4, 6, 7, 8)), sort_keys=False
    )
    variant = arg or "full"
    if variant == "full":
        pass
    elif variant == "smoke":
        common.apply_smoke(config)
        config.model.blocks_per_stage = 1  # ResNet-32 -> ResNet-8
    else:
        raise ValueError(f"unknown variant {variant!r}; expected full or smoke")
    return config
