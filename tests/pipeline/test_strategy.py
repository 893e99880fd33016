"""config.<stage>.strategy: the tf.distribute strategy a training stage runs under."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from configs import fashion_mnist_hetero
from pipeline.core.stage import PipelineError
from pipeline.training import modeling
from tests import harness


def test_unknown_strategy_is_a_clear_error():
    with pytest.raises(PipelineError, match="unknown strategy 'tpu'; known: default, mirrored"):
        modeling.distribution_strategy("tpu")
    config = fashion_mnist_hetero.get_config("smoke")
    config.train.strategy = "Mirrored"
    with pytest.raises(PipelineError, match="unknown strategy 'Mirrored'"):
        modeling.build_har_model(config, config.train, lam=0.0, seed=0)


def test_default_strategy_is_tensorflows_default():
    """A section with strategy "default", or with no strategy field, builds and
    compiles its model (optimizer included) under TensorFlow's default strategy."""
    config = fashion_mnist_hetero.get_config("smoke")
    named = ml_collections.ConfigDict(config.train.to_dict())
    named.strategy = "default"
    unnamed = ml_collections.ConfigDict(config.train.to_dict())
    del unnamed["strategy"]
    for section in (named, unnamed):
        model = modeling.build_har_model(config, section, lam=0.0, seed=0)
        assert model.distribute_strategy is tf.distribute.get_strategy()
        modeling.compile_model(model, section, steps_per_epoch=1)
        assert not isinstance(model.optimizer.iterations.value, tf.distribute.DistributedValues)
    assert isinstance(modeling.distribution_strategy("mirrored"), tf.distribute.MirroredStrategy)


# Run in a fresh interpreter: the two logical CPUs must exist before TF initializes.
# MirroredStrategy() takes every local GPU (the CPU alone where there is none), so
# the test puts a two-CPU MirroredStrategy in modeling's cache under "mirrored".
_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    from configs import fashion_mnist_hetero
    from pipeline.training import modeling

    modeling._strategies["mirrored"] = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    config = fashion_mnist_hetero.get_config("smoke")
    config.train.strategy = "mirrored"
    config.model.synchronized_bn = True
    section = config.train
    model = modeling.build_har_model(config, section, lam=1.0, seed=0)
    modeling.compile_model(model, section, steps_per_epoch=2)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(32, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, size=32).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = modeling.fit(model, ds, section, out_dir=sys.argv[1])
    json.dump(
        {
            "replicas": model.distribute_strategy.num_replicas_in_sync,
            "optimizer_variable": type(model.optimizer.iterations.value).__name__,
            "history": history,
        },
        open(sys.argv[1] + "/result.json", "w"),
    )
    """
)


@pytest.mark.slow
def test_mirrored_strategy_builds_compiles_and_fits_on_two_replicas(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path)],
        cwd=harness.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    with open(tmp_path / "result.json") as f:
        out = json.load(f)
    assert out["replicas"] == 2
    # The optimizer was created in the strategy's scope: its variables are mirrored.
    assert out["optimizer_variable"] == "MirroredVariable"
    assert {"loss", "ce", "reg", "accuracy"} <= set(out["history"])
    assert out["history"]["reg"][0] > 0
    # The saved model loads and runs on one device, synchronized BNs included.
    loaded = keras.saving.load_model(str(tmp_path / "model.keras"))
    assert loaded.backbone.get_layer("stem_bn").synchronized
    preds = loaded.predict(np.zeros((2, 28, 28, 1), "float32"), verbose=0)
    assert preds.shape == (2, 10) and np.all(np.isfinite(preds))
