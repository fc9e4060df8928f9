"""Export to the reference SCAN's files: its checkpoint layout, and its evalrank path scoring the export.

The reference is kuanghuei/SCAN; the readers below re-state what its files do, citing them, and
build its modules from the exported ``opt`` with torch's own layers.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.__main__ import main as models_main
from models.compat import CHECKPOINT_FORMAT, load_model
from models.config import EvalConfig, ModelConfig, TrainConfig
from models.encoders import SCANModel
from models.export import REFERENCE_CHECKPOINT, export_scan
from models.reference import reference_xattn_scores
from models.train import BEST_CHECKPOINT, run_train_job, write_train_job
from pipeline.captions import Vocabulary
from pipeline.errors import InputError

# Every flag of the reference's train.py parser (train.py:33-90) and the type argparse gives it;
# vocab_size is added at run time (train.py:99).
REFERENCE_FLAGS = {
    "data_path": str, "data_name": str, "vocab_path": str, "margin": float, "num_epochs": int, "batch_size": int,
    "word_dim": int, "embed_size": int, "grad_clip": float, "num_layers": int, "learning_rate": float,
    "lr_update": int, "workers": int, "log_step": int, "val_step": int, "logger_name": str, "model_name": str,
    "resume": str, "max_violation": bool, "img_dim": int, "no_imgnorm": bool, "no_txtnorm": bool,
    "raw_feature_norm": str, "agg_func": str, "cross_attn": str, "precomp_enc_type": str, "bi_gru": bool,
    "lambda_lse": float, "lambda_softmax": float, "vocab_size": int,
}
CONCEPTS = tuple(f"thing{i}" for i in range(12))
FILLERS = tuple(f"filler{i}" for i in range(20))
WORDS = ("<pad>", "<start>", "<end>", "<unk>", *CONCEPTS, *FILLERS)


def reference_encoders(opt) -> tuple[nn.Module, nn.Module]:
    """The reference's encoders as SCAN(opt) builds them (model.py:386-392): image fc = nn.Linear
    (model.py:63) or weight_norm(nn.Linear, dim=None) (model.py:106); text embed + GRU (model.py:143-147)."""
    image, text = nn.Module(), nn.Module()
    linear = nn.Linear(opt.img_dim, opt.embed_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # torch deprecates weight_norm; the reference uses it
        image.fc = nn.utils.weight_norm(linear, dim=None) if opt.precomp_enc_type == "weight_norm" else linear
    text.embed = nn.Embedding(opt.vocab_size, opt.word_dim)
    text.rnn = nn.GRU(opt.word_dim, opt.embed_size, opt.num_layers, batch_first=True, bidirectional=opt.bi_gru)
    return image, text


def our_checkpoint(path: Path, config: ModelConfig, vocab_size: int, seed: int = 0) -> SCANModel:
    """A checkpoint as models.train writes it (the fields export reads), of a seeded model."""
    torch.manual_seed(seed)
    model = SCANModel(vocab_size, config).eval()
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_config": asdict(config),
                "train_config": asdict(TrainConfig(learning_rate=5e-4, num_epochs=20, lr_update=10)),
                "vocab_size": vocab_size, "epoch": 4, "step": 1200, "best_rsum": 301.5}, path)
    return model


@pytest.mark.parametrize("config", [
    ModelConfig(img_dim=10, word_dim=6, embed_size=8, precomp_enc_type="basic"),
    ModelConfig(img_dim=10, word_dim=6, embed_size=8, precomp_enc_type="weight_norm", bi_gru=False, num_layers=2,
                cross_attn="i2t", agg_func="LogSumExp", lambda_softmax=4, no_txtnorm=True),
])
def test_export_has_the_reference_layout(tmp_path, config):
    vocab = Vocabulary(WORDS)
    vocab.save_scan_json(tmp_path / "coco_precomp_vocab.json")
    original = our_checkpoint(tmp_path / "ours.pth", config, len(vocab))
    files = export_scan(tmp_path / "ours.pth", tmp_path / "coco_precomp_vocab.json", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["coco_precomp_vocab.json", REFERENCE_CHECKPOINT]

    checkpoint = torch.load(files.checkpoint, weights_only=False)   # the reference's plain torch.load
    assert set(checkpoint) == {"epoch", "model", "best_rsum", "opt", "Eiters"}   # train.py:145-151
    assert (checkpoint["epoch"], checkpoint["Eiters"], checkpoint["best_rsum"]) == (3, 1200, 301.5)
    opt = checkpoint["opt"]
    assert {name: type(value) for name, value in vars(opt).items()} == REFERENCE_FLAGS
    assert {name: getattr(opt, name) for name in asdict(config)} == asdict(config)
    assert (opt.learning_rate, opt.lr_update, opt.data_name, opt.vocab_size) == (5e-4, 10, "coco_precomp", len(vocab))
    vocab_file = Path(opt.vocab_path) / f"{opt.data_name}_vocab.json"   # evaluation.py:155
    document = json.loads(vocab_file.read_text())                      # deserialize_vocab, vocab.py:55-62
    assert len(document["word2idx"]) == document["idx"] == opt.vocab_size
    assert document["idx2word"] == {str(i): w for i, w in enumerate(WORDS)}

    reference_image, reference_text = reference_encoders(opt)
    for exported, module in zip(checkpoint["model"], (reference_image, reference_text)):
        expected = module.state_dict()
        layout = [(k, v.shape, v.dtype) for k, v in exported.items()]
        assert layout == [(k, v.shape, v.dtype) for k, v in expected.items()]
        module.load_state_dict(exported)                                # strict: nothing missing or extra
    for name, value in original.img_enc.state_dict().items():
        assert torch.equal(checkpoint["model"][0][name], value), name
    reloaded = load_model(files.checkpoint)                              # our safe loader reads the export
    assert reloaded.origin == "scan" and reloaded.model.config == config
    for name, value in original.state_dict().items():
        assert torch.equal(reloaded.model.state_dict()[name], value), name


def test_export_refuses_what_it_cannot_write(tmp_path, capsys):
    vocab = Vocabulary(WORDS)
    vocab.save_scan_json(tmp_path / "words.json")
    config = ModelConfig(img_dim=10, word_dim=6, embed_size=8)
    our_checkpoint(tmp_path / "ours.pth", config, len(vocab))
    with pytest.raises(InputError, match=r"words.json: the dataset name cannot be read"):
        export_scan(tmp_path / "ours.pth", tmp_path / "words.json", tmp_path / "out")
    assert export_scan(tmp_path / "ours.pth", tmp_path / "words.json", tmp_path / "out",
                       data_name="f30k_precomp").vocab.name == "f30k_precomp_vocab.json"
    our_checkpoint(tmp_path / "other.pth", config, len(vocab) + 1)
    with pytest.raises(InputError, match=r"words.json: 36 words, but .*other.pth was trained with 37"):
        export_scan(tmp_path / "other.pth", tmp_path / "words.json", tmp_path / "again", data_name="x")
    with pytest.raises(InputError, match="already a reference SCAN checkpoint"):
        export_scan(tmp_path / "out" / REFERENCE_CHECKPOINT, tmp_path / "words.json", tmp_path / "again", data_name="x")
    assert models_main(["export-scan", "--checkpoint", str(tmp_path / "other.pth"), "--vocab",
                        str(tmp_path / "words.json"), "--out", str(tmp_path / "again"), "--data-name", "x"]) == 2
    assert "words.json: 36 words" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


def write_precomp_split(folder: Path, split: str, n_images: int, seed: int) -> None:
    """SCAN precomp files: image i shows 3 of 12 concepts (one region each, plus a noise region);
    its 5 captions name them in random order among 1-3 filler words."""
    prototypes = np.random.default_rng(99).normal(size=(len(CONCEPTS), 16))
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(len(CONCEPTS), size=3, replace=False) for _ in range(n_images)]
    features = np.stack([np.concatenate([prototypes[c], rng.normal(size=(1, 16))]) for c in chosen])
    np.save(folder / f"{split}_ims.npy", (features + 0.3 * rng.normal(size=features.shape)).astype(np.float32))
    lines = []
    for concepts in chosen:
        for _ in range(5):
            words = [CONCEPTS[c] for c in concepts] + list(rng.choice(FILLERS, size=rng.integers(1, 4)))
            lines.append(" ".join(rng.permutation(words)))
    (folder / f"{split}_caps.txt").write_text("\n".join(lines) + "\n")


def reference_evalrank(model_path: Path, data_dir: Path, split: str) -> tuple[dict, dict]:
    """evalrank (evaluation.py:141-196, 1K protocol) re-stated: opt and vocab from the checkpoint,
    encoders built from opt, float64 scores of the reference formulation, argsort ranks."""
    checkpoint = torch.load(model_path, weights_only=False)               # evaluation.py:148
    opt = checkpoint["opt"]
    word2idx = json.loads((Path(opt.vocab_path) / f"{opt.data_name}_vocab.json").read_text())["word2idx"]
    image_encoder, text_encoder = reference_encoders(opt)
    image_encoder.load_state_dict(checkpoint["model"][0])                 # SCAN.load_state_dict, model.py:415-417
    text_encoder.load_state_dict(checkpoint["model"][1])
    lines = (data_dir / f"{split}_caps.txt").read_text().splitlines()
    # data.py:57-62; these captions are space-separated lower-case words, so split() is word_tokenize
    captions = [[word2idx["<start>"], *(word2idx.get(w, word2idx["<unk>"]) for w in line.split()), word2idx["<end>"]]
                for line in lines]
    images = torch.from_numpy(np.load(data_dir / f"{split}_ims.npy")[: len(lines) // 5])
    with torch.no_grad():
        img_emb = image_encoder.fc(images)                                # model.py:79-83
        img_emb = img_emb if opt.no_imgnorm else img_emb / (img_emb.pow(2).sum(-1, keepdim=True).sqrt() + 1e-8)
        cap_emb, cap_lens = reference_text_forward(text_encoder, captions, opt)
    # encode_data keeps float64 arrays (evaluation.py:112-119), which shard_xattn_* score (evaluation.py:257-298)
    sims = reference_xattn_scores(img_emb.double(), cap_emb.double(), cap_lens, cross_attn=opt.cross_attn,
                                  agg_func=opt.agg_func, lambda_softmax=opt.lambda_softmax,
                                  lambda_lse=opt.lambda_lse, raw_feature_norm=opt.raw_feature_norm).numpy()
    ranks = {"i2t": np.array([min(np.where(np.argsort(sims[i])[::-1] == c)[0][0] for c in range(5 * i, 5 * i + 5))
                              for i in range(sims.shape[0])]),            # i2t(), evaluation.py:301-321
             "t2i": np.array([np.where(np.argsort(sims[:, c])[::-1] == c // 5)[0][0]
                              for c in range(sims.shape[1])])}           # t2i(), evaluation.py:335-354
    return {d: recalls(r) for d, r in ranks.items()}, ranks


def reference_text_forward(text_encoder: nn.Module, captions: list[list[int]], opt) -> tuple[torch.Tensor, list[int]]:
    """EncoderText.forward (model.py:154-175) on a batch sorted by length (collate_fn, data.py:83), unsorted after."""
    order = sorted(range(len(captions)), key=lambda i: -len(captions[i]))
    lengths = [len(captions[i]) for i in order]
    tokens = torch.zeros(len(captions), lengths[0], dtype=torch.long)
    for row, i in enumerate(order):
        tokens[row, : lengths[row]] = torch.tensor(captions[i])
    out, _ = text_encoder.rnn(pack_padded_sequence(text_encoder.embed(tokens), lengths, batch_first=True))
    cap_emb, _ = pad_packed_sequence(out, batch_first=True)
    if opt.bi_gru:
        half = cap_emb.size(2) // 2
        cap_emb = (cap_emb[:, :, :half] + cap_emb[:, :, half:]) / 2
    if not opt.no_txtnorm:
        cap_emb = cap_emb / (cap_emb.pow(2).sum(-1, keepdim=True).sqrt() + 1e-8)
    unsorted = torch.empty_like(cap_emb)
    unsorted[torch.tensor(order)] = cap_emb
    return unsorted, [len(c) for c in captions]


def recalls(ranks: np.ndarray) -> dict[str, float]:
    """r1/r5/r10 (percent), medr, meanr as i2t()/t2i() (evaluation.py:324-328)."""
    summary = {f"r{k}": 100.0 * len(np.where(ranks < k)[0]) / len(ranks) for k in (1, 5, 10)}
    return {**summary, "medr": float(np.floor(np.median(ranks)) + 1), "meanr": float(ranks.mean() + 1)}


def evaluate_command(checkpoint: Path, data: Path, vocab: Path, json_path: Path) -> dict:
    """``python -m models evaluate`` (its main(), in this process)."""
    assert models_main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--vocab", str(vocab),
                        "--split", "test", "--json", str(json_path)]) == 0
    return json.loads(json_path.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("config", [
    ModelConfig(img_dim=16, word_dim=16, embed_size=16, cross_attn="t2i", agg_func="Mean"),
    ModelConfig(img_dim=16, word_dim=16, embed_size=16, cross_attn="i2t", agg_func="LogSumExp", lambda_softmax=4,
                precomp_enc_type="weight_norm"),
])
def test_exported_model_ranks_the_same_through_the_reference_evalrank_path(tmp_path, config, one_torch_thread):
    data, vocab_path = tmp_path / "syn_precomp", tmp_path / "syn_precomp_vocab.json"
    data.mkdir()
    for split, n_images, seed in (("train", 40, 0), ("dev", 8, 1), ("test", 12, 2)):
        write_precomp_split(data, split, n_images, seed)
    Vocabulary(WORDS).save_scan_json(vocab_path)
    train = TrainConfig(learning_rate=5e-3, num_epochs=2, batch_size=20, workers=0, warmup_epochs=1, device="cpu")
    job = write_train_job(tmp_path / "job.json", model_config=config, train_config=train, data_dir=data,
                          vocab=vocab_path, out_dir=tmp_path / "run", eval_config=EvalConfig(split="dev"))
    run_train_job(job)
    ours = tmp_path / "run" / BEST_CHECKPOINT
    assert models_main(["export-scan", "--checkpoint", str(ours), "--vocab", str(vocab_path),
                        "--out", str(tmp_path / "scan")]) == 0

    results = evaluate_command(ours, data, vocab_path, tmp_path / "ours.json")
    expected, expected_ranks = reference_evalrank(tmp_path / "scan" / REFERENCE_CHECKPOINT, data, "test")
    print("trained, evaluated through the reference path:", expected)
    for direction in ("i2t", "t2i"):
        assert results[direction] == pytest.approx(expected[direction], abs=1e-9)
        np.testing.assert_array_equal(np.load(tmp_path / f"ours_{direction}_ranks.npy"), expected_ranks[direction])
    assert results["rsum"] > 200                                         # it learned (chance: about 100)
    again = evaluate_command(tmp_path / "scan" / REFERENCE_CHECKPOINT, data, vocab_path, tmp_path / "scan.json")
    assert again == results
    assert load_model(tmp_path / "scan" / REFERENCE_CHECKPOINT).model.config == config
