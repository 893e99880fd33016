"""Stage 6: SavedModel of one trained run, in TF Serving's versioned layout.

Writes <workdir>/export/<model_name>/<version>/ (saved_model.pb, variables/). The
`serving_default` signature takes the raw stored input, `image`: uint8
[batch, H, W, C], and returns `probabilities` (float32 [batch, C]) and `class_id`
(int64 [batch]); normalization happens inside the model.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from pipeline import data, modeling, stage

NAME = "export"


def export_saved_model(model: keras.Model, path: str, image_shape) -> None:
    """Writes `model` as a SavedModel with a uint8-image `serving_default` signature."""
    backbone = model.backbone if hasattr(model, "backbone") else model

    def serve(image):
        logits = backbone(tf.cast(image, tf.float32), training=False)
        return {
            "probabilities": tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1),
            "class_id": tf.argmax(logits, axis=-1),
        }

    archive = keras.export.ExportArchive()
    archive.track(backbone)
    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[
            tf.TensorSpec([None, *[int(d) for d in image_shape]], tf.uint8, name="image")
        ],
    )
    archive.write_out(path, verbose=False)


def run(config, workdir: str) -> None:
    section = config.export
    train_dir = stage.require(workdir, "train")
    model_path = os.path.join(train_dir, section.run, "model.keras")
    if not os.path.exists(model_path):
        raise stage.PipelineError(
            f"export.run={section.run!r} names no trained run; trained: "
            f"{sorted(os.listdir(train_dir))}"
        )
    if int(section.version) < 1:
        raise stage.PipelineError(f"export.version must be >= 1, got {section.version}")
    model = modeling.load_model(model_path)
    image_shape = data.load_manifest(workdir)["image_shape"]
    with stage.stage_output(workdir, NAME, config=section) as out:
        path = os.path.join(out, section.model_name, str(int(section.version)))
        export_saved_model(model, path, image_shape)
        # Self-check: the reloaded SavedModel agrees with the Keras model.
        images, _ = next(iter(data.make_dataset(workdir, "test", batch_size=8, training=False)))
        served = tf.saved_model.load(path).signatures["serving_default"](
            image=tf.cast(images, tf.uint8)
        )
        expected = tf.nn.softmax(model.predict_on_batch(images), axis=-1)
        err = float(np.max(np.abs(served["probabilities"].numpy() - expected.numpy())))
        if err > 1e-4:
            raise stage.PipelineError(f"exported model disagrees with the trained one by {err}")
        logging.info("Exported %s (max |diff| vs Keras %.2e)", path, err)


if __name__ == "__main__":
    from pipeline import cli

    cli.run_stage(NAME, run)
