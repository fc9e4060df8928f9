"""Every malformed input gives an InputError naming the file, the place and the problem."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.config import DatasetConfig
from pipeline.datasets import load_dataset
from pipeline.errors import InputError, MissingDataError


def _entry(name: str = "a.jpg", split: str = "train",
           captions: tuple[str, ...] = ("A dog .",), **extra: object) -> dict:
    return {"filename": name, "split": split, "imgid": 0, "sentences": [{"raw": raw, "tokens": []} for raw in captions],
            **extra}


def _load(tmp_path: Path, name: str, content: str | bytes, *, dataset: str = "f30k", policy: str = "allow"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return load_dataset(DatasetConfig(name=dataset, image_dir=tmp_path, captions_file=path, missing_images=policy))


KARPATHY_CASES = {
    "latin-1 bytes": (b'{"images": [\n{"filename": "caf\xe9.jpg"}]}', r"\(line 2\): not UTF-8: byte 0xe9"),
    "not json": ('{"images": [', r"line 1, column \d+\): malformed JSON"),
    "no images key": (json.dumps({"imgs": []}), r"expected an object with an 'images' list"),
    "missing filename": (json.dumps({"images": [{"split": "train", "sentences": []}]}),
                         r"\(images\[0\]\): missing key 'filename'"),
    "split not a string": (json.dumps({"images": [_entry(split=3)]}), r"\(images\[0\]\): 'split' must be str, got int"),
    "unknown split": (json.dumps({"images": [_entry(), _entry("b.jpg", split="holdout")]}),
                      r"\(images\[1\]\): unknown split 'holdout'"),
    "sentence without raw": (json.dumps({"images": [{**_entry(), "sentences": [{"tokens": []}]}]}),
                             r"\(images\[0\]\.sentences\[0\]\): missing key 'raw'"),
    "raw not a string": (json.dumps({"images": [{**_entry(), "sentences": [{"raw": ["a"]}]}]}),
                         r"'raw' must be str, got list"),
    "imgid a bool": (json.dumps({"images": [_entry(imgid=True)]}), r"'imgid' must be int or str, got bool"),
    "duplicate file": (json.dumps({"images": [_entry(), _entry(split="test")]}),
                       r"\(images\[1\]\): duplicate image id 'a' \(first at images\[0\]\)"),
    "duplicate id": (json.dumps({"images": [_entry("x/a.jpg"), _entry("y/a.jpg")]}),
                     r"\(images\[1\]\): duplicate image id 'a'"),
    "escaping path": (json.dumps({"images": [_entry("../../etc/passwd")]}),
                      r"\(images\[0\]\): path '../../etc/passwd' escapes"),
    "absolute path": (json.dumps({"images": [_entry("/etc/passwd")]}), r"\(images\[0\]\): absolute path '/etc/passwd'"),
    "escaping filepath": (json.dumps({"images": [_entry("passwd", filepath="../../etc")]}),
                          r"escapes the dataset root"),
}


@pytest.mark.parametrize("case", sorted(KARPATHY_CASES))
def test_malformed_karpathy_json(tmp_path: Path, case: str) -> None:
    content, pattern = KARPATHY_CASES[case]
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "bad.json")) + r"\b.*" + pattern):
        _load(tmp_path, "bad.json", content)


def test_non_utf8_bytes_name_their_line(tmp_path: Path) -> None:
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}.txt").write_text("1.jpg\n" if split == "train" else "")
    content = "1.jpg#0\tA dog .\n1.jpg#1\tA caf\xe9 .\n".encode("latin-1")
    with pytest.raises(InputError, match=r"bad.token \(line 2\): not UTF-8: byte 0xe9"):
        _load(tmp_path, "bad.token", content)


TOKEN_CASES = {
    "no tab": ("1.jpg#0 A dog .\n", r"\(line 1\): expected 'image.jpg#k<TAB>caption'"),
    "no caption number": ("1.jpg\tA dog .\n", r"\(line 1\): expected 'image.jpg#k<TAB>caption'"),
    "duplicate caption": ("1.jpg#0\tA dog .\n1.jpg#0\tA cat .\n",
                          r"\(line 2\): duplicate caption '1.jpg#0' \(first on line 1\)"),
    "escaping image": ("../x.jpg#0\tA dog .\n", r"\(line 1\): path '../x.jpg' escapes"),
}


@pytest.mark.parametrize("case", sorted(TOKEN_CASES))
def test_malformed_token_file(tmp_path: Path, case: str) -> None:
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}.txt").write_text("")
    content, pattern = TOKEN_CASES[case]
    with pytest.raises(InputError, match=r"bad.token " + pattern):
        _load(tmp_path, "bad.token", content)


def test_split_lists_must_name_known_images_once(tmp_path: Path) -> None:
    token = "1.jpg#0\tA dog .\n2.jpg#0\tA cat .\n"
    (tmp_path / "dev.txt").write_text("")
    (tmp_path / "test.txt").write_text("1.jpg\n")
    (tmp_path / "train.txt").write_text("2\n3.jpg\n")
    with pytest.raises(InputError, match=r"train.txt \(line 2\): image '3' has no captions in bad.token"):
        _load(tmp_path, "bad.token", token)
    (tmp_path / "train.txt").write_text("2\n1\n")
    with pytest.raises(InputError, match=r"test.txt \(line 1\): image '1.jpg' is listed twice "
                                         r"\(first in train.txt line 2\)"):
        _load(tmp_path, "bad.token", token)


CUSTOM_CASES = {
    "csv header": ("captions.csv", "file,text\na.jpg,A dog .\n", r"captions.csv \(line 1\): header must name columns"),
    "csv short row": ("captions.csv", "image,caption,split\na.jpg\n", r"captions.csv \(line 2\): expected 3 columns"),
    "csv long row": ("captions.csv", "image,caption\na.jpg,A dog .,x\n",
                     r"captions.csv \(line 2\): expected 2 columns"),
    "csv split conflict": ("captions.csv", "image,caption,split\na.jpg,A,train\na.jpg,B,test\n",
                           r"\(line 3\): image 'a.jpg' is in split 'test' here but 'train' at line 2"),
    "csv unknown split": ("captions.csv", "image,caption,split\na.jpg,A,val2\n", r"\(line 2\): unknown split 'val2'"),
    "jsonl bad json": ("captions.jsonl", '{"image": "a.jpg", "caption": "A"}\n{"image": \n',
                       r"\(line 2\): malformed JSON"),
    "jsonl not object": ("captions.jsonl", '["a.jpg", "A"]\n', r"\(line 1\): a line must be dict, got list"),
    "jsonl caption type": ("captions.jsonl", '{"image": "a.jpg", "caption": 5}\n',
                           r"\(line 1\): 'caption' must be str, got int"),
    "jsonl escaping": ("captions.jsonl", '{"image": "../../etc/passwd", "caption": "A"}\n',
                       r"\(line 1\): path '../../etc/passwd' escapes"),
}


@pytest.mark.parametrize("case", sorted(CUSTOM_CASES))
def test_malformed_custom_captions(tmp_path: Path, case: str) -> None:
    name, content, pattern = CUSTOM_CASES[case]
    with pytest.raises(InputError, match=pattern):
        _load(tmp_path, name, content, dataset="custom")


def test_empty_captions_are_skipped_and_recorded(tmp_path: Path) -> None:
    content = json.dumps({"images": [_entry("a.jpg", captions=("A dog .", "   ", "")),
                                     _entry("b.jpg", captions=(" ",))]})
    dataset = _load(tmp_path, "data.json", content)
    assert [(r.relpath, r.captions) for r in dataset.images] == [("a.jpg", ("A dog .",))]
    assert [(s.location, s.reason) for s in dataset.skipped] == [
        ("images[0].sentences[1]", "empty caption for 'a.jpg'"),
        ("images[0].sentences[2]", "empty caption for 'a.jpg'"),
        ("images[1].sentences[0]", "empty caption for 'b.jpg'"), ("images[1]", "'b.jpg' has no non-empty caption")]


def test_absent_images_error_or_skip(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8")
    content = json.dumps({"images": [_entry("a.jpg"), _entry("b.jpg")]})
    with pytest.raises(MissingDataError, match=r"1 of 2 images listed in .*data.json are absent \(e.g. b.jpg\)"):
        _load(tmp_path, "data.json", content, policy="error")
    dataset = _load(tmp_path, "data.json", content, policy="skip")
    assert [r.relpath for r in dataset.images] == ["a.jpg"] and dataset.skipped[0].reason == "image file absent"
    assert len(_load(tmp_path, "data.json", content, policy="allow").images) == 2


def test_config_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="name='flickr'"):
        DatasetConfig(name="flickr")
    with pytest.raises(ValueError, match="missing_images='ignore'"):
        DatasetConfig(missing_images="ignore")
