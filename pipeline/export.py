"""Stage 6: SavedModel of one trained run, in TF Serving's versioned layout.

Writes <workdir>/export/<model_name>/<version>/ (saved_model.pb, variables/). The
`serving_default` signature takes the raw stored input and returns `probabilities`
(float32 [batch, C]) and `class_id` (int64 [batch]). The input is, for images,
`image`: uint8 [batch, H, W, C] (normalization happens inside the model); for text,
`text`: string [batch], raw UTF-8 (the preprocess stage's standardization and
vocabulary are inside the SavedModel, see pipeline/data/text.py).

Before it completes, the export is infra-validated (pipeline/serving/infra_validation.py,
TFX's InfraValidator): the project's REST server, started on it in a subprocess,
must answer real test examples as the Keras model does; the record is
<workdir>/export/infra_blessing.json. A model that fails to load or answers
otherwise is not exported (PipelineError; nothing is marked complete).

Beside the version directories it writes a model card, <model_name>/model_card.md and
model_card.json: the config summary, the data manifest summary, the evaluate stage's
metrics for the exported run (when that stage completed) and the serving signature.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf
from absl import logging

from pipeline.config_check import check_export
from pipeline.core import stage
from pipeline.data import datasets
from pipeline.serving import infra_validation
from pipeline.serving.signature import CLASS_ID, IMAGE_INPUT, PROBABILITIES, SIGNATURE, TEXT_INPUT
from pipeline.training import modeling

NAME = "export"
# The config.data.noise fields each noise kind uses (the model card shows only these).
NOISE_FIELDS = {
    "none": (),
    "pairs": ("pairs", "flip_prob"),
    "groups": ("groups", "flip_prob"),
    "cifar10_hetero": ("flip_prob",),
    "cifar100_superclass": ("flip_prob",),
    "uniform": ("rate",),
    "asymmetric": ("rates", "targets"),
    "matrix": (),
}


def signature_summary(image_shape, num_classes: int, *, modality: str = "image") -> dict:
    """The `serving_default` signature as the model card describes it."""
    if modality == "text":
        inputs = {TEXT_INPUT: {"dtype": "string", "shape": [-1], "content": "raw UTF-8 text"}}
    else:
        h, w, c = (int(d) for d in image_shape)
        inputs = {IMAGE_INPUT: {"dtype": "uint8", "shape": [-1, h, w, c], "range": [0, 255]}}
    return {
        "name": SIGNATURE,
        "inputs": inputs,
        "outputs": {
            PROBABILITIES: {"dtype": "float32", "shape": [-1, int(num_classes)]},
            CLASS_ID: {"dtype": "int64", "shape": [-1]},
        },
    }


def model_card(config, manifest: dict, metrics: dict | None, signature: dict) -> dict:
    """The model card's content (JSON-able); `metrics` is the evaluate stage's entry
    for the exported run, or None if that stage has not completed."""
    section = config.export
    run_cfg = config.train.runs.get(section.run)
    train = manifest["splits"]["train"]
    return {
        "model_name": section.model_name,
        "version": int(section.version),
        "run": section.run,
        "config": {
            "seed": config.seed,
            "model": config.model.to_dict(),
            "run": run_cfg.to_dict() if run_cfg is not None else None,
            "train": {
                k: config.train[k]
                for k in ("epochs", "batch_size", "learning_rate", "weight_decay", "augment")
            },
            "tau": config.tau.to_dict(),
        },
        "data": {
            "dataset": manifest["dataset"],
            "source": manifest.get("source"),
            "num_classes": manifest["num_classes"],
            "modality": manifest.get("modality", "image"),
            "image_shape": manifest["image_shape"],
            "text": manifest.get("text"),
            "noise": {
                k: v
                for k, v in manifest["noise"].items()
                if k == "kind" or k in NOISE_FIELDS.get(manifest["noise"].get("kind"), ())
            },
            "true_noise_rate": [1.0 - row[c] for c, row in enumerate(train["transition_rates"])],
            "imbalance": manifest["imbalance"],
            "train_examples": train["num_examples"],
            "train_counts_noisy": train["counts_after_cut"]["noisy"],
            "train_counts_clean": train["counts_after_cut"]["clean"],
            "test_examples": manifest["splits"]["test"]["num_examples"],
        },
        "metrics": metrics,
        "signature": signature,
    }


def model_card_markdown(card: dict) -> str:
    d = card["data"]
    lines = [
        f"# Model card: {card['model_name']} (version {card['version']})",
        "",
        f"Run `{card['run']}` of the train stage: {card['config']['run']}.",
        "",
        "## Data",
        "",
        f"- dataset: {d['dataset']} ({d['source']}), {d['num_classes']} classes, "
        + (
            f"texts (vocabulary of {d['text']['vocabulary_size']} tokens, "
            f"{d['text']['sequence_length']} tokens per text)"
            if d.get("modality") == "text"
            else f"images {d['image_shape']}"
        ),
        f"- noise: {d['noise']}; true noise rate per class (train): "
        f"{[round(r, 3) for r in d['true_noise_rate']]}",
        f"- imbalance: {d['imbalance']}",
        f"- train examples: {d['train_examples']}; per class (noisy label): "
        f"{d['train_counts_noisy']}",
        f"- test examples: {d['test_examples']}",
        "",
        "## Metrics on the clean test split",
        "",
    ]
    m = card["metrics"]
    if m is None:
        lines.append("Not available: the evaluate stage had not completed at export time.")
    else:
        t = m["test"]
        lines += [f"- top-1 accuracy: {100 * t['overall']:.2f}%"]
        if t.get("top5") is not None:
            lines += [f"- top-5 accuracy: {100 * t['top5']:.2f}%"]
        lines += [
            f"- {g}: {'n/a' if v is None else f'{100 * v:.2f}%'}" for g, v in t["groups"].items()
        ]
    s = card["signature"]
    lines += ["", "## Serving signature", "", f"`{s['name']}`:", ""]
    for kind in ("inputs", "outputs"):
        for name, spec in s[kind].items():
            lines.append(f"- {kind[:-1]} `{name}`: {spec['dtype']} {spec['shape']}")
    c = card["config"]
    lines += [
        "",
        "## Config",
        "",
        f"- seed {c['seed']}; model {c['model']}",
        f"- train: {c['train']}",
        f"- tau: {c['tau']}",
    ]
    return "\n".join(lines) + "\n"


def checked(tensor, shape):
    """`tensor`, checked at run time against the signature's declared `shape`.

    A SavedModel does not enforce its signature's declared shape by itself, and the
    graph's own shape arithmetic is folded from the declared shape: a wrong H, W or C
    reached the first convolution ("grouped convolutions" error) and an unbatched
    image was taken as a batch. EnsureShape checks the fed tensor; the check lives in
    the exported graph, so TF Serving's binary gives the same message, e.g. "Shape of
    tensor image [2,32,32,3] is not compatible with expected shape [?,28,28,1]".
    """
    return tf.ensure_shape(tensor, shape)


def export_saved_model(model: keras.Model, path: str, image_shape=None, *, vectorizer=None) -> None:
    """Writes `model` as a SavedModel with a `serving_default` signature.

    Images: `image` uint8 [batch, *image_shape]. Text (`vectorizer` given, a
    `pipeline.data.text.vectorizer` layer): `text` string [batch], vectorized inside.
    """
    backbone = model.backbone if hasattr(model, "backbone") else model

    def outputs(logits):
        return {
            PROBABILITIES: tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1),
            CLASS_ID: tf.argmax(logits, axis=-1),
        }

    archive = keras.export.ExportArchive()
    archive.track(backbone)
    if vectorizer is not None:
        archive.track(vectorizer)
        archive.add_endpoint(
            name=SIGNATURE,
            fn=lambda text: outputs(backbone(vectorizer(checked(text, [None])), training=False)),
            input_signature=[tf.TensorSpec([None], tf.string, name=TEXT_INPUT)],
        )
    else:
        archive.add_endpoint(
            name=SIGNATURE,
            fn=lambda image: outputs(
                backbone(tf.cast(checked(image, [None, *image_shape]), tf.float32), training=False)
            ),
            input_signature=[
                tf.TensorSpec([None, *[int(d) for d in image_shape]], tf.uint8, name=IMAGE_INPUT)
            ],
        )
    # Writing a SavedModel sets absl's logger level for the whole process (hiding
    # later INFO logs); restore it.
    absl_logger = logging.get_absl_logger()
    level = absl_logger.level
    try:
        archive.write_out(path, verbose=False)
    finally:
        absl_logger.setLevel(level)


def evaluate_metrics(config, workdir: str) -> dict | None:
    """The evaluate stage's metrics of the exported run (None if it has not completed),
    with the groups in the config's order (report.json's keys are sorted)."""
    if not stage.is_complete(workdir, "evaluate"):
        return None
    report = stage.read_json(os.path.join(stage.stage_dir(workdir, "evaluate"), "report.json"))
    metrics = report["runs"].get(config.export.run)
    if metrics is None:
        return None
    metrics = {k: metrics[k] for k in ("lam", "test", "final_train") if k in metrics}
    groups = metrics["test"]["groups"]
    order = [g for g in config.eval.groups if g in groups]
    metrics["test"]["groups"] = {
        g: groups[g] for g in [*order, *(g for g in groups if g not in order)]
    }
    return metrics


def infra_validate(workdir: str, model, base_path: str, section, modality: str) -> dict:
    """pipeline/serving/infra_validation on real test examples: the raw stored input through
    the REST server against the Keras model fed what training feeds it."""
    n = infra_validation.NUM_EXAMPLES
    inputs, _ = next(iter(datasets.make_dataset(workdir, "test", batch_size=n, training=False)))
    if modality == "text":
        batch = datasets.raw_texts(workdir, "test", n)
    else:
        batch = tf.cast(inputs, tf.uint8).numpy()
    expected = tf.nn.softmax(model.predict_on_batch(inputs), axis=-1).numpy()
    record = infra_validation.validate(
        base_path, section.model_name, int(section.version), batch, expected
    )
    logging.info("Infra validation passed (max |diff| vs Keras %.2e)", record["max_abs_diff"])
    return record


def run(config, workdir: str) -> None:
    section = config.export
    train_dir = stage.require(workdir, "train")
    model_path = os.path.join(train_dir, section.run, "model.keras")
    if not os.path.exists(model_path):
        raise stage.PipelineError(
            f"export.run={section.run!r} names no trained run; trained: "
            f"{sorted(os.listdir(train_dir))}"
        )
    check_export(config)
    model = modeling.load_model(model_path)
    manifest = datasets.load_manifest(workdir)
    image_shape = manifest["image_shape"]
    modality = manifest.get("modality", "image")
    with stage.stage_output(workdir, NAME, config) as out:
        card_dir = os.path.join(out, section.model_name)
        vectorizer = datasets.text_vectorizer(workdir, manifest) if modality == "text" else None
        path = os.path.join(card_dir, str(int(section.version)))
        export_saved_model(model, path, image_shape, vectorizer=vectorizer)
        # Raises (and the stage does not complete) unless the served model answers as
        # the trained one.
        record = infra_validate(workdir, model, card_dir, section, modality)
        stage.write_json(os.path.join(out, infra_validation.FILE), record)
        logging.info("Exported %s", path)
        card = model_card(
            config,
            manifest,
            evaluate_metrics(config, workdir),
            signature_summary(image_shape, config.data.num_classes, modality=modality),
        )
        stage.write_json(os.path.join(card_dir, "model_card.json"), card)
        with open(os.path.join(card_dir, "model_card.md"), "w") as f:
            f.write(model_card_markdown(card))


if __name__ == "__main__":
    from pipeline import cli

    cli.run_stage(NAME, run)
