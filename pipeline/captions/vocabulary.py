"""Word <-> id mapping with SCAN's special tokens and SCAN's vocab JSON format.

SCAN's file (e.g. f30k_precomp_vocab.json): {"word2idx": {word: int}, "idx2word": {"<int as
str>": word}, "idx": next free id}; ids 0-3 are <pad>, <start>, <end>, <unk>.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from pipeline.atomic import write_text_atomic
from pipeline.errors import InputError, MissingDataError

SCAN_VOCAB_HINT = ("SCAN's own vocabularies (f30k_precomp_vocab.json, coco_precomp_vocab.json) come with its data, "
                   "see https://github.com/kuanghuei/SCAN#download-data; or build one from the train captions")
SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")
PAD, START, END, UNK = range(len(SPECIALS))


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """json's object hook: Python keeps the last of two equal keys; a vocabulary must not be ambiguous."""
    found: dict[str, object] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key)
        found[key] = value
    return found


class Vocabulary:
    """Words in id order; ids 0-3 are the specials, so a padded batch is all zeros past each caption."""

    def __init__(self, words: Sequence[str]) -> None:
        if tuple(words[:len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {SPECIALS}; got {tuple(words[:len(SPECIALS)])}")
        self.idx2word = list(words)
        self.word2idx = {word: index for index, word in enumerate(self.idx2word)}
        if len(self.word2idx) != len(self.idx2word):
            raise ValueError("a vocabulary cannot hold the same word twice")

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], threshold: int = 4) -> "Vocabulary":
        """Words seen >= `threshold` times (SCAN: 4, over the train captions), most frequent first,
        ties in alphabetical order, so the same captions always give the same ids."""
        counts = Counter(token for tokens in token_lists for token in tokens)
        kept = sorted((word for word, count in counts.items() if count >= threshold and word not in SPECIALS),
                      key=lambda word: (-counts[word], word))
        return cls(SPECIALS + tuple(kept))

    @classmethod
    def from_scan_json(cls, path: str | os.PathLike[str]) -> "Vocabulary":
        """Reads SCAN's vocab JSON; the ids must be exactly 0..n-1 with the specials first."""
        path = Path(path)
        if not path.is_file():
            raise MissingDataError(path, "vocabulary file not found", hint=SCAN_VOCAB_HINT)
        try:
            document = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_refuse_duplicate_keys)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(path, f"not a JSON vocabulary ({error})") from error
        except _DuplicateKey as duplicate:
            raise InputError(path, f"the key {duplicate.key!r} appears twice; a word has one id") from None
        word2idx = document.get("word2idx") if isinstance(document, dict) else None
        if not isinstance(word2idx, dict) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                     for i in word2idx.values()):
            raise InputError(path, "expected SCAN's vocab format: 'word2idx' mapping words to integer ids",
                             location="word2idx")
        words = sorted(word2idx, key=word2idx.__getitem__)
        if [word2idx[word] for word in words] != list(range(len(words))):
            raise InputError(path, "word ids must be 0..n-1 without gaps or repeats", location="word2idx")
        idx2word = document.get("idx2word", {str(index): word for index, word in enumerate(words)})
        if idx2word != {str(index): word for index, word in enumerate(words)}:
            raise InputError(path, "'idx2word' disagrees with 'word2idx'", location="idx2word")
        try:
            return cls(words)
        except ValueError as error:
            raise InputError(path, str(error), location="word2idx") from error

    def save_scan_json(self, path: str | os.PathLike[str]) -> None:
        """Writes SCAN's format atomically (temp file + rename), so readers never see half a file."""
        path = Path(path)
        document = {"idx2word": {str(index): word for index, word in enumerate(self.idx2word)},
                    "word2idx": self.word2idx, "idx": len(self)}
        write_text_atomic(path, json.dumps(document, ensure_ascii=False))

    def __len__(self) -> int:
        return len(self.idx2word)

    def __call__(self, word: str) -> int:
        """Id of `word`, <unk> (3) when unknown, as the reference's vocab(word)."""
        return self.word2idx.get(word, UNK)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.idx2word == other.idx2word

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """[<start>, ids..., <end>] as the reference's data loader builds each caption."""
        return [START, *(self(token) for token in tokens), END]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of `ids`, without <start>, <end> and <pad>; unknown words stay "<unk>"."""
        return [self.idx2word[index] for index in ids if index not in (PAD, START, END)]


def save_scan_json(vocab: Vocabulary, path: str | os.PathLike[str]) -> None:
    """Function form of Vocabulary.save_scan_json, for callers that pass the vocabulary around."""
    vocab.save_scan_json(path)
