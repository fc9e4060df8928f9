"""Malformed caption/split files, generated per source format and read through `load_dataset`.

Each case must give an InputError naming the file and the place (line / entry / key) and the
problem, or a documented skip recorded in Dataset.skipped; never another exception type.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.captions import Vocabulary, read_captions, write_captions
from pipeline.captions.parquet import DEFAULT_MAX_WORDS
from pipeline.datasets import load_dataset, registered_config
from pipeline.errors import InputError, MissingDataError

GOOD = {"images": [
    {"filename": "a.jpg", "split": "train", "imgid": 0,
     "sentences": [{"raw": "A dog runs ."}, {"raw": "a brown dog"}]},
    {"filename": "b.jpg", "split": "val", "imgid": 1, "sentences": [{"raw": "Two cats sit ."}]},
]}


def _karpathy(root: Path, document: object) -> Path:
    folder = root / "f8k"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for name in ("a.jpg", "b.jpg"):
        (folder / "images" / name).write_bytes(b"jpeg")
    path = folder / "dataset_flickr8k.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    return path


def _edit(change) -> dict:
    document = copy.deepcopy(GOOD)
    change(document)
    return document


def _set(path: tuple, value):
    def change(document):
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _delete(path: tuple):
    def change(document):
        target = document
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return change


KARPATHY_ERRORS = {
    "truncated JSON": (json.dumps(GOOD)[:40], "malformed JSON", "line 1, column"),
    "top level is a list": ("[]", "not a Karpathy captions file", None),
    "images not a list": (_edit(_set(("images",), {"a": 1})), "'images' must be list", "images"),
    "entry not an object": (_edit(_set(("images", 1), "b.jpg")), "must be dict", "images[1]"),
    "missing filename": (_edit(_delete(("images", 0, "filename"))), "missing key 'filename'", "images[0]"),
    "filename is a number": (_edit(_set(("images", 0, "filename"), 7)), "'filename' must be str", "images[0]"),
    "missing split": (_edit(_delete(("images", 1, "split"))), "missing key 'split'", "images[1]"),
    "unknown split": (_edit(_set(("images", 1, "split"), "validation")), "unknown split 'validation'", "images[1]"),
    "split is null": (_edit(_set(("images", 1, "split"), None)), "'split' must be str", "images[1]"),
    "missing sentences": (_edit(_delete(("images", 0, "sentences"))), "missing key 'sentences'", "images[0]"),
    "raw is a number": (_edit(_set(("images", 0, "sentences", 1, "raw"), 3)),
                        "'raw' must be str", "images[0].sentences[1]"),
    "sentence is a string": (_edit(_set(("images", 0, "sentences", 0), "a dog")),
                             "must be dict", "images[0].sentences[0]"),
    "imgid is a bool": (_edit(_set(("images", 0, "imgid"), True)), "'imgid' must be int or str", "images[0]"),
    "duplicate file": (_edit(_set(("images", 1, "filename"), "a.jpg")), "duplicate image", "images[1]"),
    "path escapes the root": (_edit(_set(("images", 0, "filename"), "../../etc/passwd")),
                              "escapes the dataset root", "images[0]"),
    "absolute path": (_edit(_set(("images", 0, "filename"), "/etc/passwd")), "absolute path", "images[0]"),
    "folder escapes the root": (_edit(_set(("images", 0, "filepath"), "../..")),
                                "escapes the dataset root", "images[0]"),
    "NUL in path": (_edit(_set(("images", 0, "filename"), "a\x00.jpg")), "invalid image path", "images[0]"),
    "empty path": (_edit(_set(("images", 0, "filename"), "")), "invalid image path", "images[0]"),
    "duplicate id": (_edit(lambda d: d["images"].append({**d["images"][0], "filepath": "sub"})),
                     "duplicate image id 'a'", "images[2]"),
}


@pytest.mark.parametrize("case", sorted(KARPATHY_ERRORS))
def test_karpathy_json_errors_name_file_place_and_problem(tmp_path, case) -> None:
    document, problem, location = KARPATHY_ERRORS[case]
    source = _karpathy(tmp_path, document)
    with pytest.raises(InputError) as raised:
        load_dataset(registered_config("f8k", tmp_path, missing_images="allow"))
    assert raised.value.path == str(source)
    assert problem in raised.value.problem
    assert raised.value.location == location or (location and location in (raised.value.location or ""))


def test_non_utf8_bytes_are_located(tmp_path) -> None:
    source = _karpathy(tmp_path, GOOD)
    source.write_bytes(source.read_bytes().replace(b"Two cats", b"Two \xff\xfe cats")
                       .replace(b'{"filename": "b', b'\n{"filename": "b'))
    with pytest.raises(InputError, match=r"not UTF-8: byte 0xff") as raised:
        load_dataset(registered_config("f8k", tmp_path))
    assert raised.value.location == "line 2"


def test_empty_and_whitespace_captions_are_skipped_and_recorded(tmp_path) -> None:
    document = _edit(lambda d: d["images"][0]["sentences"].extend([{"raw": ""}, {"raw": " \t\n"}]))
    document["images"][1]["sentences"] = [{"raw": "   "}]
    source = _karpathy(tmp_path, document)
    dataset = load_dataset(registered_config("f8k", tmp_path))
    assert [image.image_id for image in dataset.images] == ["a"]
    assert dataset.images[0].captions == ("A dog runs .", "a brown dog")
    assert {(s.source, s.location) for s in dataset.skipped} >= {
        (source, "images[0].sentences[2]"), (source, "images[0].sentences[3]"), (source, "images[1]")}


def test_unknown_image_is_an_error_or_a_recorded_skip(tmp_path) -> None:
    _karpathy(tmp_path, _edit(lambda d: d["images"].append({"filename": "ghost.jpg", "split": "test",
                                                            "sentences": [{"raw": "x"}]})))
    with pytest.raises(MissingDataError, match="1 of 3 images .* absent .*ghost.jpg"):
        load_dataset(registered_config("f8k", tmp_path))
    dataset = load_dataset(registered_config("f8k", tmp_path, missing_images="skip"))
    assert [s.reason for s in dataset.skipped] == ["image file absent"]
    assert len(dataset.images) == 2


def test_extremely_long_caption_is_read_and_cut_to_max_words(tmp_path) -> None:
    """A 20,000-word caption is read whole and stored cut to max_words tokens plus <start> and <end>."""
    words = " ".join(["dog", "runs", "fast", "."] * 5000)
    _karpathy(tmp_path, _edit(_set(("images", 0, "sentences", 0, "raw"), words)))
    dataset = load_dataset(registered_config("f8k", tmp_path))
    vocab = Vocabulary.build([["dog", "runs", "fast", "."]], threshold=1)
    cut = write_captions(dataset, vocab, tmp_path / "captions.parquet")
    lengths = [len(ids) for ids in read_captions(tmp_path / "captions.parquet").column("token_ids").to_pylist()]
    assert cut == 1 and max(lengths) == DEFAULT_MAX_WORDS + 2


def test_lone_surrogate_caption_is_refused_at_reading(tmp_path) -> None:
    source = _karpathy(tmp_path, json.dumps(GOOD).replace("Two cats", "Two \\ud800 cats"))
    with pytest.raises(InputError) as raised:
        load_dataset(registered_config("f8k", tmp_path))
    assert raised.value.path == str(source) and raised.value.location == "images[1].sentences[0]"


def test_failed_captions_write_keeps_the_previous_file(tmp_path) -> None:
    """Whatever fails while encoding captions, the earlier captions.parquet stays whole and no temp file is left."""
    _karpathy(tmp_path, GOOD)
    dataset = load_dataset(registered_config("f8k", tmp_path))
    vocab = Vocabulary.build([["a", "dog"]], threshold=1)
    target = tmp_path / "captions.parquet"
    write_captions(dataset, vocab, target)
    before = target.read_bytes()
    broken = copy.deepcopy(dataset.images[0])
    object.__setattr__(broken, "captions", ("a dog \ud800",))
    with pytest.raises(Exception):
        write_captions(type(dataset)(dataset.name, dataset.image_root, (broken,), dataset.source), vocab, target)
    assert target.read_bytes() == before
    assert pq.read_table(target).num_rows == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["captions.parquet", "f8k"]


# ---------------------------------------------------------------- Flickr token files + split lists


def _token_dataset(root: Path, tokens: bytes, lists: dict[str, str]) -> Path:
    folder = root / "f8k"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for name in ("1.jpg", "2.jpg"):
        (folder / "images" / name).write_bytes(b"jpeg")
    for split, name in (("train", "Flickr_8k.trainImages.txt"), ("dev", "Flickr_8k.devImages.txt"),
                        ("test", "Flickr_8k.testImages.txt")):
        if split in lists:
            (folder / name).write_text(lists[split], encoding="utf-8")
    (folder / "Flickr8k.token.txt").write_bytes(tokens)
    return folder


GOOD_TOKENS = b"1.jpg#0\tA dog .\n1.jpg#1\ta dog runs\n2.jpg#0\ta cat\n"
GOOD_LISTS = {"train": "1.jpg\n", "dev": "2.jpg\n", "test": ""}
TOKEN_ERRORS = {
    "no tab": (b"1.jpg#0 A dog .\n", GOOD_LISTS, "Flickr8k.token.txt", "expected 'image.jpg#k<TAB>caption'", "line 1"),
    "no caption number": (b"1.jpg\tA dog .\n", GOOD_LISTS, "Flickr8k.token.txt", "expected 'image.jpg#k", "line 1"),
    "duplicate caption": (GOOD_TOKENS + b"1.jpg#1\tagain\n", GOOD_LISTS, "Flickr8k.token.txt",
                          "duplicate caption", "line 4"),
    "not UTF-8": (GOOD_TOKENS.replace(b"a cat", b"a \xc3 cat"), GOOD_LISTS, "Flickr8k.token.txt",
                  "not UTF-8", "line 3"),
    "listed twice": (GOOD_TOKENS, {**GOOD_LISTS, "test": "1.jpg\n"}, "Flickr_8k.testImages.txt",
                     "listed twice", "line 1"),
    "listed without captions": (GOOD_TOKENS, {**GOOD_LISTS, "test": "\n3.jpg\n"}, "Flickr_8k.testImages.txt",
                                "has no captions", "line 2"),
    "escaping name": (b"../../x.jpg#0\tA dog .\n", {"train": "x.jpg\n", "dev": "", "test": ""}, "Flickr8k.token.txt",
                      "escapes the dataset root", "line 1"),
}


@pytest.mark.parametrize("case", sorted(TOKEN_ERRORS))
def test_token_file_errors_name_file_line_and_problem(tmp_path, case) -> None:
    tokens, lists, culprit, problem, location = TOKEN_ERRORS[case]
    folder = _token_dataset(tmp_path, tokens, lists)
    with pytest.raises(InputError) as raised:
        load_dataset(registered_config("f8k", tmp_path, missing_images="allow"))
    assert (Path(raised.value.path).name, raised.value.location) == (culprit, location)
    assert problem in raised.value.problem and Path(raised.value.path).parent == folder


def test_missing_split_list_says_where_to_get_it(tmp_path) -> None:
    _token_dataset(tmp_path, GOOD_TOKENS, {"train": "1.jpg\n", "dev": "2.jpg\n"})
    with pytest.raises(MissingDataError, match="Flickr_8k.testImages.txt.*split list missing.*Flickr8k"):
        load_dataset(registered_config("f8k", tmp_path))


# ---------------------------------------------------------------- custom captions.csv / captions.jsonl


def _custom(root: Path, name: str, text: str) -> Path:
    folder = root / "custom"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "x.jpg").write_bytes(b"jpeg")
    (folder / name).write_text(text, encoding="utf-8")
    return folder / name


CUSTOM_ERRORS = {
    "csv without caption column": ("captions.csv", "image,text\nx.jpg,a dog\n", "missing caption", "line 1"),
    "csv row with extra cells": ("captions.csv", "image,caption\nx.jpg,a dog\nx.jpg,a,dog\n",
                                 "expected 2 columns", "line 3"),
    "csv row too short": ("captions.csv", "image,caption\nx.jpg\n", "expected 2 columns", "line 2"),
    "csv conflicting splits": ("captions.csv", "image,caption,split\nx.jpg,a,train\nx.jpg,b,test\n",
                               "in split 'test' here", "line 3"),
    "csv unknown split": ("captions.csv", "image,caption,split\nx.jpg,a,holdout\n",
                          "unknown split 'holdout'", "line 2"),
    "csv escaping path": ("captions.csv", "image,caption\n../x.jpg,a dog\n", "escapes the dataset root", "line 2"),
    "jsonl malformed line": ("captions.jsonl", '{"image": "x.jpg", "caption": "a"}\n{"image": \n',
                             "malformed JSON", "line 2"),
    "jsonl caption is a number": ("captions.jsonl", '{"image": "x.jpg", "caption": 5}\n',
                                  "'caption' must be str", "line 1"),
    "jsonl line is a list": ("captions.jsonl", '["x.jpg", "a dog"]\n', "a line must be dict", "line 1"),
    "jsonl missing image": ("captions.jsonl", '{"caption": "a dog"}\n', "missing key 'image'", "line 1"),
    "jsonl absolute path": ("captions.jsonl", '{"image": "/etc/passwd", "caption": "a"}\n', "absolute path", "line 1"),
}


@pytest.mark.parametrize("case", sorted(CUSTOM_ERRORS))
def test_custom_caption_errors_name_file_line_and_problem(tmp_path, case) -> None:
    name, text, problem, location = CUSTOM_ERRORS[case]
    source = _custom(tmp_path, name, text)
    with pytest.raises(InputError) as raised:
        load_dataset(registered_config("custom", tmp_path, missing_images="allow"))
    assert (raised.value.path, raised.value.location) == (str(source), location)
    assert problem in raised.value.problem
