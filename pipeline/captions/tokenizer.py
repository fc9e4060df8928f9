"""SCAN's caption tokenisation, `nltk.word_tokenize(caption.lower())`, without NLTK's downloadable data.

word_tokenize = Punkt sentence split (needs the `punkt_tab` model) + NLTKWordTokenizer per
sentence (needs nothing). The split matters: NLTKWordTokenizer only detaches the period that
ends its input, so "a dog. a cat." must be split into sentences to give "dog", ".".
We run NLTK's own Punkt algorithm with a small hand-written parameter set instead of the
trained English model: the common abbreviations of captions, and every dotted acronym
("u.s.", "j.p.") as an abbreviation, which is how the trained model treats the frequent ones
(SCAN's Flickr30K vocabulary holds "mr.", "st.", "u.s.", "j.p."). Rare acronyms the trained
model does not know may be split differently there; captions are lower-cased first, so
Punkt's capitalisation cues play no part in either.
"""
from __future__ import annotations

from functools import lru_cache

from nltk.tokenize import NLTKWordTokenizer
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "mt", "ft", "vs", "etc", "prof", "gen", "sgt", "lt", "col",
    "capt", "rev", "ave", "blvd", "inc", "co", "corp", "ltd", "dept", "univ", "approx",
})


class _Abbreviations(frozenset):
    """Punkt's abbreviation set (types without their final period) plus any dotted acronym."""

    def __contains__(self, word: object) -> bool:
        return (isinstance(word, str) and "." in word) or super().__contains__(word)


@lru_cache(maxsize=1)
def _tokenizers() -> tuple[PunktSentenceTokenizer, NLTKWordTokenizer]:
    params = PunktParameters()
    params.abbrev_types = _Abbreviations(ABBREVIATIONS)
    return PunktSentenceTokenizer(params), NLTKWordTokenizer()


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` by NLTK's Punkt algorithm with this module's abbreviations."""
    return _tokenizers()[0].tokenize(text)


def tokenize(caption: str) -> list[str]:
    """Lower-cased word tokens as SCAN's data loader makes them: "A man's hat." -> a man 's hat ."""
    words = _tokenizers()[1]
    return [token for sentence in split_sentences(caption.lower()) for token in words.tokenize(sentence)]
