"""Where `preprocess` reads its examples from (`config.data.source`).

Every source implements `Source` (base.py), the calls preprocess makes:
`description`, `modality`, `check()`, `num_examples(split)`, `image_shape(split)`,
`labels_origin(split)`, `num_label_classes()`, `split_info()`,
`read(split, start, stop)` (uint8 [n, H, W, C] images or n strings, int64 [n]
labels) and `read_labels(split, start, stop)`.

Sources, one module each (docs/DATA.md has an example command for each):
  idx.py         IdxSource: MNIST-style IDX files ("auto", "idx").
  tfds.py        TfdsSource: any TFDS image-classification dataset, read by split
                 slices ("tfds"); with a text_key, a text dataset.
  npz.py         NpzSource: one .npz per split, `x` uint8 images and `y` int labels,
                 memory-mapped (np.savez) or streamed (np.savez_compressed) by chunk.
  image_list.py  ImageListSource: WebVision-style lists of `<relative path> <label>`,
                 images decoded with PIL and resized to config.data.image_shape.
  csv_text.py    CsvTextSource: texts and integer labels in a CSV file with a header;
                 the test split is a stratified, seeded held-out share of it ("csv").
images.py decodes and resizes images; resolve.py checks `config.data` and builds the
source it names.

Resolution order for the IDX datasets under source "auto" (`resolve_source`):
  1. `config.data.data_dir` if non-empty (must hold the files);
  2. `$HAR_DATA_DIR` if set (must hold the files);
  3. the Debian package's directory (`apt-get install dataset-fashion-mnist`);
  4. a TFDS download of the builder with the same name.
"""

from pipeline.data.sources.base import ENV_DATA_DIR, Source, SourceDefaults, data_dirs
from pipeline.data.sources.csv_text import CsvIndex, CsvTextSource
from pipeline.data.sources.idx import (
    DATASETS,
    IDX_FILES,
    DatasetSpec,
    IdxHeader,
    IdxSource,
    dataset_spec,
    find_idx_files,
    read_idx_chunk,
    read_idx_header,
)
from pipeline.data.sources.image_list import ImageListSource
from pipeline.data.sources.images import check_channels, fit_image, load_image
from pipeline.data.sources.npz import NpyMember, NpzSource, read_npz_chunk, read_npz_member
from pipeline.data.sources.resolve import (
    MODALITIES,
    SOURCE_KINDS,
    check_source_config,
    resolve_source,
    split_size,
)
from pipeline.data.sources.tfds import TfdsSource, _tfds_builder

__all__ = [
    "DATASETS",
    "ENV_DATA_DIR",
    "IDX_FILES",
    "MODALITIES",
    "SOURCE_KINDS",
    "CsvIndex",
    "CsvTextSource",
    "DatasetSpec",
    "IdxHeader",
    "IdxSource",
    "ImageListSource",
    "NpyMember",
    "NpzSource",
    "Source",
    "SourceDefaults",
    "TfdsSource",
    "_tfds_builder",
    "check_channels",
    "check_source_config",
    "data_dirs",
    "dataset_spec",
    "find_idx_files",
    "fit_image",
    "load_image",
    "read_idx_chunk",
    "read_idx_header",
    "read_npz_chunk",
    "read_npz_member",
    "resolve_source",
    "split_size",
]
