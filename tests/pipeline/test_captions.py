"""Tokeniser, vocabulary and the captions Parquet table, on SCAN's real Flickr30K captions and vocabulary."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.captions import (END, PAD, SPECIALS, START, UNK, Vocabulary, caption_tokens, read_captions,
                               save_scan_json, split_sentences, tokenize, write_captions)
from pipeline.config import CaptionConfig, DatasetConfig
from pipeline.datasets import load_dataset
from pipeline.errors import InputError, MissingDataError

REAL_CAPTIONS = {  # lines of the real fixtures -> NLTK word_tokenize(lower()) as SCAN's loader gets them
    "A woman dressed up in green , probably for St. Patrick 's day .":
        ["a", "woman", "dressed", "up", "in", "green", ",", "probably", "for", "st.", "patrick", "'s", "day", "."],
    "A uniformed member of the U.S. military speaks into a microphone .":
        ["a", "uniformed", "member", "of", "the", "u.s.", "military", "speaks", "into", "a", "microphone", "."],
    "A boy wears Mr. Potato head features .": ["a", "boy", "wears", "mr.", "potato", "head", "features", "."],
    'A protester in a cowboy gear holds up a sign that says , " Dont tax me bro! "':
        ["a", "protester", "in", "a", "cowboy", "gear", "holds", "up", "a", "sign", "that", "says", ",", "``", "dont",
         "tax", "me", "bro", "!", "``"],
    "Two Rubbish men standing on they’re truck loading trash .":
        ["two", "rubbish", "men", "standing", "on", "they", "’", "re", "truck", "loading", "trash", "."],
    "A black dog and a tri-colored dog playing with each other on the road .":
        ["a", "black", "dog", "and", "a", "tri-colored", "dog", "playing",
         "with", "each", "other", "on", "the", "road", "."],
    "A man's hat, 37,000 fans... cannot stop":
        ["a", "man", "'s", "hat", ",", "37,000", "fans", "...", "can", "not", "stop"],
    "Café naïve DÉJÀ vu.": ["café", "naïve", "déjà", "vu", "."],
}


@pytest.mark.parametrize("caption", sorted(REAL_CAPTIONS))
def test_tokenize_matches_word_tokenize(caption: str) -> None:
    assert tokenize(caption) == REAL_CAPTIONS[caption]


def test_multi_sentence_captions_split_like_punkt() -> None:
    assert split_sentences("a dog is running. it is happy!  is it? yes.") == \
        ["a dog is running.", "it is happy!", "is it?", "yes."]
    assert tokenize("A dog runs. A J.P. Morgan sign, Dr. Who.") == \
        ["a", "dog", "runs", ".", "a", "j.p.", "morgan", "sign", ",", "dr.", "who", "."]
    assert tokenize("the letter a. on a sign") == ["the", "letter", "a.", "on", "a", "sign"]  # initial, lower-case next


@pytest.fixture(scope="module")
def scan_vocab(shared_data: Path) -> Vocabulary:
    return Vocabulary.from_scan_json(shared_data / "scan_f30k" / "f30k_precomp_vocab.json")


def test_scan_vocab_reads_and_round_trips(scan_vocab: Vocabulary, shared_data: Path, tmp_path: Path) -> None:
    original = json.loads((shared_data / "scan_f30k" / "f30k_precomp_vocab.json").read_text())
    assert len(scan_vocab) == 8481 and scan_vocab.idx2word[:4] == list(SPECIALS)
    assert scan_vocab("yellow") == 7 and scan_vocab("no-such-word") == UNK
    save_scan_json(scan_vocab, tmp_path / "vocab.json")
    written = json.loads((tmp_path / "vocab.json").read_text())
    assert written == original  # same keys, int ids, str keys in idx2word, idx = size
    assert Vocabulary.from_scan_json(tmp_path / "vocab.json") == scan_vocab


def test_scan_test_captions_rarely_map_to_unk(scan_vocab: Vocabulary, shared_data: Path) -> None:
    """SCAN's 5000 Flickr30K test captions with SCAN's own vocabulary: unknown words are test-only rarities."""
    lines = (shared_data / "scan_f30k" / "test_caps.txt").read_text(encoding="utf-8").splitlines()
    ids = [index for line in lines for index in scan_vocab.encode(tokenize(line))[1:-1]]
    unk_share = ids.count(UNK) / len(ids)
    print(f"<unk> share on SCAN f30k test_caps.txt: {unk_share:.4%} of {len(ids)} tokens")
    assert len(ids) > 60000 and 0 < unk_share < 0.02


def test_encode_decode(scan_vocab: Vocabulary) -> None:
    ids = scan_vocab.encode(tokenize("A yellow zzzqqq dog ."))
    assert ids[0] == START and ids[-1] == END and ids[3] == UNK
    assert scan_vocab.decode(ids + [PAD, PAD]) == ["a", "yellow", "<unk>", "dog", "."]


def test_build_counts_threshold_and_is_deterministic() -> None:
    tokens = [["b", "a", "c"], ["a", "b"], ["a", "b", "d"], ["a", "c", "b"]]
    vocab = Vocabulary.build(tokens, threshold=2)
    assert vocab.idx2word == [*SPECIALS, "a", "b", "c"]  # a and b tie at 4: alphabetical; d seen once: dropped
    assert Vocabulary.build(list(reversed(tokens)), threshold=2) == vocab
    assert len(Vocabulary.build(tokens)) == len(SPECIALS) + 2  # default threshold 4, as SCAN


@pytest.mark.parametrize("content, pattern", [
    ("{", r"not a JSON vocabulary"),
    ('{"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "a": 5}}',
     r"\(word2idx\): word ids must be 0..n-1"),
    ('{"word2idx": {"a": 0, "<start>": 1, "<end>": 2, "<unk>": 3}}', r"\(word2idx\): a vocabulary starts with"),
    ('{"word2idx": {"<pad>": "0"}}', r"integer ids"),
    ('{"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3}, "idx2word": {"0": "x"}}',
     r"\(idx2word\): 'idx2word' disagrees"),
])
def test_bad_vocab_files(tmp_path: Path, content: str, pattern: str) -> None:
    (tmp_path / "vocab.json").write_text(content)
    with pytest.raises(InputError, match=pattern):
        Vocabulary.from_scan_json(tmp_path / "vocab.json")


def test_absent_vocab_file_says_where_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=r"nope.json: vocabulary file not found. SCAN's own vocabularies"):
        Vocabulary.from_scan_json(tmp_path / "nope.json")


def test_captions_parquet_round_trip(scan_vocab: Vocabulary, shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "f30k_mini"
    dataset = load_dataset(DatasetConfig(name="f30k", image_dir=folder / "images",
                                         captions_file=folder / "dataset_flickr30k_subset.json"))
    path = tmp_path / "captions.parquet"
    assert write_captions(dataset, scan_vocab, path, row_group_size=64) == 0  # no caption cut
    assert pq.ParquetFile(path).metadata.num_row_groups == 6  # 330 captions in groups of 64
    table = read_captions(path)
    rows = table.to_pylist()
    assert (len(rows) == 330
            and [f.name for f in table.schema] == ["image_id", "caption_index", "split", "raw", "token_ids"])
    first = dataset.images[0]
    assert rows[0] == {"image_id": first.image_id, "caption_index": 0, "split": first.split, "raw": first.captions[0],
                       "token_ids": scan_vocab.encode(tokenize(first.captions[0]))}
    assert [r["caption_index"] for r in rows[:6]] == [0, 1, 2, 3, 4, 0]
    test_rows = read_captions(path, split="test").to_pylist()
    assert len(test_rows) == 160 and {r["split"] for r in test_rows} == {"test"}
    assert not list(tmp_path.glob(".*tmp"))


def test_failed_write_keeps_the_previous_file(scan_vocab: Vocabulary, tmp_path: Path) -> None:
    from pipeline.datasets import Dataset, ImageRecord
    good = Dataset("custom", tmp_path,
                   (ImageRecord("a", tmp_path / "a.jpg", "a.jpg", "train", ("A dog .",)),), tmp_path)
    path = tmp_path / "captions.parquet"
    write_captions(good, scan_vocab, path)
    before = path.read_bytes()
    broken = Dataset("custom", tmp_path, (ImageRecord("b", tmp_path / "b.jpg", "b.jpg", "train", (None,)),), tmp_path)
    with pytest.raises(AttributeError):
        write_captions(broken, scan_vocab, path)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*tmp"))


def test_read_captions_rejects_other_files(tmp_path: Path) -> None:
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(InputError, match=r"x.parquet: not a readable captions Parquet file"):
        read_captions(tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        read_captions(tmp_path / "x.parquet", split="val")


def test_caption_config_validates() -> None:
    assert CaptionConfig().vocab_threshold == 4 and CaptionConfig().row_group_size == 65536
    with pytest.raises(ValueError, match="vocab_threshold=0"):
        CaptionConfig(vocab_threshold=0)


def test_runaway_captions_are_cut_and_counted(scan_vocab: Vocabulary, tmp_path: Path) -> None:
    from pipeline.datasets import Dataset, ImageRecord
    long = " ".join(["dog"] * 10_000)
    dataset = Dataset("custom", tmp_path, (ImageRecord("a", tmp_path / "a.jpg", "a.jpg", "train", (long, "A cat .")),),
                      tmp_path)
    path = tmp_path / "captions.parquet"
    assert write_captions(dataset, scan_vocab, path, max_words=100) == 1
    lengths = [len(ids) for ids in read_captions(path).column("token_ids").to_pylist()]
    assert lengths == [102, 5]  # <start> + 100 words + <end>; the short caption untouched
    assert caption_tokens(long, 100) == ["dog"] * 100
