"""Search through the public API and the CLI, on a real store and a real checkpoint.

The known match is built, not hoped for: the target image's region features are solved so
that its region embeddings equal the query caption's word embeddings under the (untrained,
seeded) model, so stacked cross attention must rank it first among random images.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from models.__main__ import main
from models.compat import CHECKPOINT_FORMAT
from models.config import ModelConfig
from models.encoders import SCANModel
from models.search import CaptionSet, SearchConfig, SearchIndex, load_caption_set, read_queries
from pipeline.captions import SPECIALS, Vocabulary, tokenize
from pipeline.errors import InputError
from pipeline.store import RegionRecord, ShardWriter, StoreInfo, commit_manifest, init_store

WORDS = ("red", "blue", "green", "circle", "square", "star", "big", "small", "a", "and", "left", "of")
CONFIG = ModelConfig(img_dim=24, word_dim=8, embed_size=12)
MAX_BOXES = 10
QUERY = "a red circle and a blue square"
TARGET = "img03"


def make_vocab(path: Path) -> Vocabulary:
    vocab = Vocabulary(SPECIALS + WORDS)
    vocab.save_scan_json(path)
    return vocab


def make_checkpoint(path: Path, config: ModelConfig = CONFIG, seed: int = 0) -> SCANModel:
    """Our checkpoint format, as models.train writes it, for a seeded untrained model."""
    torch.manual_seed(seed)
    model = SCANModel(len(SPECIALS) + len(WORDS), config).eval()
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_config": asdict(config),
                "vocab_size": len(SPECIALS) + len(WORDS)}, path)
    return model


@torch.no_grad()
def features_matching(model: SCANModel, vocab: Vocabulary, caption: str) -> np.ndarray:
    """(W, img_dim) features whose region embeddings are the caption's word embeddings."""
    ids = vocab.encode(tokenize(caption))
    words, _ = model.txt_enc(torch.tensor([ids]), [len(ids)])
    weight, bias = model.img_enc.fc.weight, model.img_enc.fc.bias
    return ((words[0] - bias) @ torch.linalg.pinv(weight).T).numpy().astype(np.float32)


def record(image_id: str, features: np.ndarray, rng: np.random.Generator) -> RegionRecord:
    k = len(features)
    corner = rng.uniform(0, 60, size=(k, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(10, 40, size=(k, 2))], axis=1).astype(np.float32)
    return RegionRecord(image_id=image_id, features=features, boxes=boxes, object_ids=np.ones(k, np.int64),
                        object_conf=np.ones(k, np.float32), attr_ids=np.zeros(k, np.int64),
                        attr_conf=np.zeros(k, np.float32), image_hw=(100, 120))


def build_store(store_dir: Path, records: list[RegionRecord]) -> Path:
    init_store(store_dir, StoreInfo(feature_dim=CONFIG.img_dim, max_boxes=MAX_BOXES, feature_dtype="float32"))
    with ShardWriter.for_store(store_dir, 0) as writer:
        for item in records:
            writer.append(item, relpath=f"images/{item.image_id}.png")
    commit_manifest(store_dir)
    return store_dir


def known_match_setup(tmp_path: Path, n_images: int = 12) -> tuple[Path, Path, Path]:
    """(checkpoint, store, vocab): image TARGET is built to match QUERY; the others are random."""
    vocab = make_vocab(tmp_path / "vocab.json")
    model = make_checkpoint(tmp_path / "model.pth")
    rng = np.random.default_rng(5)
    records = []
    for i in range(n_images):
        image_id = f"img{i:02d}"
        features = (features_matching(model, vocab, QUERY) if image_id == TARGET else
                    rng.normal(size=(int(rng.integers(2, MAX_BOXES + 1)), CONFIG.img_dim)).astype(np.float32))
        records.append(record(image_id, features, rng))
    return tmp_path / "model.pth", build_store(tmp_path / "store", records), tmp_path / "vocab.json"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return known_match_setup(tmp_path_factory.mktemp("search"))


@pytest.fixture(scope="module")
def index(setup):
    return SearchIndex.open(*setup)


@pytest.mark.parametrize("mode", ["exact", "two-stage", "global"])
def test_text_query_finds_the_built_match_first(index, mode):
    [result] = index.search_text([QUERY], SearchConfig(top_k=5, mode=mode, shortlist=4))
    assert result.hits[0].image_id == TARGET
    scores = [hit.score for hit in result.hits]
    assert scores == sorted(scores, reverse=True) and len(scores) == 5
    assert [hit.rank for hit in result.hits] == [1, 2, 3, 4, 5]


def test_image_query_finds_its_caption_first(index):
    captions = CaptionSet(["big green star", QUERY, "small left of square", "green and star"], ["x", TARGET, "y", "z"])
    [result] = index.search_images([TARGET], captions, SearchConfig(top_k=3, mode="exact"))
    assert result.hits[0].caption == QUERY and result.hits[0].image_id == TARGET


def test_unknown_image_id_is_an_input_error(index):
    with pytest.raises(InputError, match="nope"):
        index.search_images(["nope"], CaptionSet(["a"], [None]))


def test_cli_batch_queries_write_json_and_table(setup, tmp_path, capsys):
    checkpoint, store, vocab = setup
    (tmp_path / "queries.txt").write_text(f"{QUERY}\n\nimage:{TARGET}\n")
    (tmp_path / "captions.txt").write_text(f"big green star\n{QUERY}\nsmall square\n")
    out = tmp_path / "out" / "results.json"
    code = main(["search", "--checkpoint", str(checkpoint), "--store", str(store), "--vocab", str(vocab),
                 "--queries", str(tmp_path / "queries.txt"), "--captions", str(tmp_path / "captions.txt"),
                 "--top-k", "2", "--mode", "two-stage", "--shortlist", "3", "--json", str(out)])
    assert code == 0
    document = json.loads(out.read_text())
    text, image = document["queries"]
    assert (text["kind"], text["hits"][0]["image_id"]) == ("text", TARGET)
    assert (image["kind"], image["hits"][0]["caption"]) == ("image", QUERY)
    assert document["config"]["shortlist"] == 3
    assert f"text query: {QUERY}" in capsys.readouterr().out


def test_cli_reports_a_vocabulary_that_does_not_fit(setup, tmp_path, capsys):
    checkpoint, store, _ = setup
    Vocabulary(SPECIALS + ("one",)).save_scan_json(tmp_path / "small.json")
    code = main(["search", "--checkpoint", str(checkpoint), "--store", str(store),
                 "--vocab", str(tmp_path / "small.json"), "--text", QUERY])
    assert code == 2 and "small.json" in capsys.readouterr().err


def test_query_and_caption_files_are_checked(tmp_path):
    (tmp_path / "q.txt").write_text("a dog\nimage:\n")
    with pytest.raises(InputError, match=r"q.txt \(line 2\)"):
        read_queries(tmp_path / "q.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(InputError, match="no captions"):
        load_caption_set(tmp_path / "empty.txt")


def test_cli_uses_the_saved_index_and_refuses_a_missing_one_when_required(tmp_path, capsys):
    checkpoint, store, vocab = known_match_setup(tmp_path)
    common = ["search", "--checkpoint", str(checkpoint), "--store", str(store), "--vocab", str(vocab), "--text", QUERY]
    assert main([*common, "--index-policy", "require"]) == 2
    assert "no search index for this checkpoint" in capsys.readouterr().err
    assert main([*common, "--mode", "global"]) == 0
    first = capsys.readouterr()
    assert "search index built" in first.err and TARGET in first.out
    assert main([*common, "--index-policy", "require"]) == 0
    assert "up to date (12 images)" in capsys.readouterr().err
