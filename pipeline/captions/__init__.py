"""Captions as SCAN sees them: its tokenisation, its vocabulary format, and a Parquet table of token ids."""
from pipeline.captions.parquet import SCHEMA, caption_tokens, read_captions, write_captions
from pipeline.captions.tokenizer import split_sentences, tokenize
from pipeline.captions.vocabulary import END, PAD, SPECIALS, START, UNK, Vocabulary, save_scan_json

__all__ = ["END", "PAD", "SCHEMA", "SPECIALS", "START", "UNK", "Vocabulary", "caption_tokens", "read_captions",
           "save_scan_json", "split_sentences", "tokenize", "write_captions"]
