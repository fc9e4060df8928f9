"""Property: any input either parses or raises InputError naming the file; never another exception.

Inputs are drawn as raw bytes, as arbitrary JSON built from the format's own keys, and as
line-oriented text built from the format's own separators, so most examples get past the
first checks and exercise the deeper ones.
"""
from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.captions import Vocabulary
from pipeline.datasets.build import build_records
from pipeline.datasets.custom import read_captions_csv, read_captions_jsonl
from pipeline.datasets.karpathy import read_karpathy
from pipeline.datasets.tokenfile import read_token_file
from pipeline.errors import InputError
from pipeline.store.interop import read_butd_tsv

EXAMPLES = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

KARPATHY_KEYS = ("images", "filename", "filepath", "split", "sentences", "raw", "imgid", "cocoid", "tokens")
SPLIT_WORDS = ("train", "val", "test", "restval", "none", "dev", "other")
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False),
                    st.sampled_from(SPLIT_WORDS), st.text(max_size=8),
                    st.sampled_from(("a.jpg", "../x.jpg", "/etc/passwd", "", "sub/b.png", "a\x00b")))


def json_values(keys: tuple[str, ...]) -> st.SearchStrategy:
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(keys), st.text(max_size=4)), inner, max_size=5)), max_leaves=25)


def _check(reader: Callable[[Path], object], data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"input{suffix}"
        path.write_bytes(data)
        try:
            reader(path)
        except InputError as error:
            assert error.path == str(path), error
            assert error.problem


def _karpathy_and_records(path: Path) -> None:
    build_records(read_karpathy(path), source=path, image_root=path.parent)


@EXAMPLES
@given(st.one_of(st.binary(max_size=200), json_values(KARPATHY_KEYS).map(lambda v: json.dumps(v).encode()),
                 st.fixed_dictionaries({"images": st.lists(json_values(KARPATHY_KEYS), max_size=4)})
                 .map(lambda v: json.dumps(v).encode())))
def test_karpathy_json(data: bytes) -> None:
    _check(_karpathy_and_records, data, ".json")


token_lines = st.lists(st.tuples(st.sampled_from(("a.jpg", "b.jpg", "", "x y.jpg", "../z.jpg")),
                                 st.sampled_from(("#0", "#1", "#", "#x", "")), st.sampled_from(("\t", " ", "")),
                                 st.text(max_size=10)).map("".join), max_size=6).map("\n".join)


@EXAMPLES
@given(st.one_of(st.binary(max_size=200), token_lines.map(lambda text: text.encode("utf-8", "surrogatepass"))))
def test_token_file(data: bytes) -> None:
    _check(read_token_file, data, ".token")


csv_text = st.lists(st.lists(st.sampled_from(("image", "caption", "split", "a.jpg", "train", "test", "a dog", '"', "",
                                              "x,y", "\u00e9")), max_size=4).map(",".join), max_size=5).map("\n".join)


@EXAMPLES
@given(st.one_of(st.binary(max_size=200), csv_text.map(lambda text: text.encode("utf-8", "surrogatepass"))))
def test_captions_csv(data: bytes) -> None:
    _check(read_captions_csv, data, ".csv")


@EXAMPLES
@given(st.one_of(st.binary(max_size=200),
                 st.lists(json_values(("image", "caption", "split")), max_size=4)
                 .map(lambda rows: "\n".join(json.dumps(row) for row in rows).encode())))
def test_captions_jsonl(data: bytes) -> None:
    _check(read_captions_jsonl, data, ".jsonl")


def _b64_floats(count: int) -> str:
    return base64.b64encode(np.ones(count, np.float32).tobytes()).decode()


tsv_cells = st.sampled_from(("1", "0", "-1", "2", "x", "", "AAAA", "AAA=", "b'AAAA'", "!!", _b64_floats(4),
                             _b64_floats(8), _b64_floats(16)))


@EXAMPLES
@given(st.one_of(st.binary(max_size=200),
                 st.lists(st.lists(tsv_cells, min_size=4, max_size=11).map("\t".join), max_size=4)
                 .map(lambda rows: "\n".join(rows).encode())))
def test_butd_tsv(data: bytes) -> None:
    _check(lambda path: list(read_butd_tsv(path)), data, ".tsv")


vocab_documents = st.fixed_dictionaries(
    {"word2idx": st.one_of(st.dictionaries(st.sampled_from(("<pad>", "<start>", "<end>", "<unk>", "a", "b")),
                                           st.one_of(st.integers(-1, 6), st.booleans(), st.text(max_size=2)),
                                           max_size=7),
                           json_values(("a",)))},
    optional={"idx2word": json_values(("0", "1", "2", "3", "4")), "idx": scalars})


@EXAMPLES
@given(st.one_of(st.binary(max_size=200), vocab_documents.map(lambda v: json.dumps(v).encode()),
                 json_values(("word2idx", "idx2word", "idx")).map(lambda v: json.dumps(v).encode())))
def test_scan_vocab_json(data: bytes) -> None:
    _check(Vocabulary.from_scan_json, data, ".json")
