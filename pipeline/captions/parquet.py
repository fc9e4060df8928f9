"""Every caption of a dataset with its split and token ids, in one Parquet file.

Columns: image_id (string), caption_index (int32, order among the image's captions), split
(string), raw (string), token_ids (list<int32>: <start> ... <end>). Rows follow the dataset's
image order, then caption order, so row i of a split is stable across runs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import atomic_output
from pipeline.captions.tokenizer import tokenize
from pipeline.captions.vocabulary import Vocabulary
from pipeline.config import CaptionConfig
from pipeline.datasets import SPLITS, Dataset
from pipeline.errors import InputError

SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("caption_index", pa.int32()),
    ("split", pa.string()),
    ("raw", pa.string()),
    ("token_ids", pa.list_(pa.int32())),
])
DEFAULT_ROW_GROUP_SIZE = 65536
DEFAULT_MAX_WORDS = CaptionConfig.max_words


def caption_tokens(caption: str, max_words: int = DEFAULT_MAX_WORDS) -> list[str]:
    """SCAN's tokens of a caption, cut after `max_words` (what the vocabulary and the token ids see)."""
    return tokenize(caption)[:max_words]


def _batches(dataset: Dataset, vocab: Vocabulary, size: int,
             max_words: int, cut: list[int]) -> Iterator[pa.RecordBatch]:
    """Record batches of at most `size` captions, so memory stays bounded on COCO's 600k captions."""
    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    for image in dataset.images:
        for index, caption in enumerate(image.captions):
            tokens = tokenize(caption)
            cut[0] += len(tokens) > max_words
            for name, value in zip(SCHEMA.names, (image.image_id, index, image.split, caption,
                                                  vocab.encode(tokens[:max_words]))):
                columns[name].append(value)
            if len(columns["raw"]) == size:
                yield pa.RecordBatch.from_pydict(columns, schema=SCHEMA)
                columns = {name: [] for name in SCHEMA.names}
    if columns["raw"]:
        yield pa.RecordBatch.from_pydict(columns, schema=SCHEMA)


def write_captions(dataset: Dataset, vocab: Vocabulary, path: str | os.PathLike[str], *,
                   row_group_size: int = DEFAULT_ROW_GROUP_SIZE, max_words: int = DEFAULT_MAX_WORDS) -> int:
    """Tokenises and encodes every caption into `path` (temp file + rename: no half-written file).

    Returns how many captions were cut to `max_words` tokens.
    """
    cut = [0]
    with atomic_output(Path(path)) as temporary, pq.ParquetWriter(temporary, SCHEMA) as writer:
        for batch in _batches(dataset, vocab, row_group_size, max_words, cut):
            writer.write_batch(batch, row_group_size=row_group_size)
    return cut[0]


def read_captions(path: str | os.PathLike[str], split: str | None = None) -> pa.Table:
    """The captions table, or only the rows of one split ("train" | "dev" | "test")."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    try:
        table = pq.read_table(path, filters=None if split is None else [("split", "=", split)])
    except (pa.ArrowInvalid, OSError) as error:
        raise InputError(path, f"not a readable captions Parquet file ({error})") from error
    if not table.schema.equals(SCHEMA):
        raise InputError(path, f"unexpected columns {table.schema.names}; expected {SCHEMA.names}")
    return table
