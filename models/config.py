"""SCAN settings, defined once: the Luigi tasks and the CLI build these dataclasses.

Defaults are the reference implementation's (kuanghuei/SCAN train.py); the paper's per-dataset
settings are presets in `pipeline.presets`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

CROSS_ATTN = ("t2i", "i2t")
AGG_FUNCS = ("Mean", "LogSumExp", "Max", "Sum")
RAW_FEATURE_NORMS = ("clipped_l2norm", "l2norm", "softmax", "clipped", "no_norm", "l1norm", "clipped_l1norm")
IMAGE_ENCODERS = ("basic", "weight_norm")
EVAL_SPLITS = ("dev", "test", "testall")
HEAD_POOLINGS = ("gpo", "mean", "none")
HEAD_TRAINING = ("frozen", "joint")
EVAL_MODES = ("exact", "global", "two-stage")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and attention options of one SCAN model."""

    img_dim: int = field(default=2048, metadata={"help": "Dimension of the region features."})
    word_dim: int = field(default=300, metadata={"help": "Dimension of the word embeddings."})
    embed_size: int = field(default=1024, metadata={"help": "Dimension of the joint embedding space."})
    num_layers: int = field(default=1, metadata={"help": "Number of GRU layers."})
    bi_gru: bool = field(default=True, metadata={"help": "Bidirectional GRU, the two directions averaged."})
    no_imgnorm: bool = field(default=False, metadata={"help": "Do not L2-normalise region embeddings."})
    no_txtnorm: bool = field(default=False, metadata={"help": "Do not L2-normalise word embeddings."})
    precomp_enc_type: str = field(default="basic", metadata={
        "help": "Image encoder: basic | weight_norm.", "choices": IMAGE_ENCODERS})
    cross_attn: str = field(default="t2i", metadata={"help": "Attention direction: t2i | i2t.", "choices": CROSS_ATTN})
    agg_func: str = field(default="Mean", metadata={
        "help": "Aggregation: Mean | LogSumExp | Max | Sum.", "choices": AGG_FUNCS})
    lambda_softmax: float = field(default=9.0, metadata={
        "help": "Inverse temperature of the attention softmax (lambda_1)."})
    lambda_lse: float = field(default=6.0, metadata={"help": "LogSumExp aggregation temperature (lambda_2)."})
    raw_feature_norm: str = field(default="clipped_l2norm", metadata={
        "help": "Normalisation of the raw attention: " + " | ".join(RAW_FEATURE_NORMS) + ".",
        "choices": RAW_FEATURE_NORMS})

    def __post_init__(self) -> None:
        for name, allowed in (("cross_attn", CROSS_ATTN), ("agg_func", AGG_FUNCS),
                              ("raw_feature_norm", RAW_FEATURE_NORMS), ("precomp_enc_type", IMAGE_ENCODERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {', '.join(allowed)}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (reference defaults; the paper's per-dataset ones are in pipeline.presets)."""

    margin: float = field(default=0.2, metadata={"help": "Triplet loss margin."})
    max_violation: bool = field(default=True, metadata={
        "help": "Hardest negatives (the paper's setting) instead of the sum over negatives."})
    warmup_epochs: int = field(default=0, metadata={
        "help": "Epochs that use the sum over negatives before switching to hardest negatives."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Adam learning rate."})
    lr_update: int = field(default=15, metadata={"help": "Multiply the learning rate by 0.1 after this many epochs."})
    num_epochs: int = field(default=30, metadata={"help": "Number of training epochs."})
    batch_size: int = field(default=128, metadata={"help": "Training batch size (global, split across processes)."})
    grad_clip: float = field(default=2.0, metadata={"help": "Gradient norm clipping; <= 0 disables."})
    seed: int = field(default=0, metadata={"help": "Random seed (model init, shuffling)."})
    workers: int = field(default=2, metadata={"help": "DataLoader worker processes."})
    log_step: int = field(default=10, metadata={"help": "Log training scalars every this many steps."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast (GPU only)."})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N."})


@dataclass(frozen=True)
class HeadConfig:
    """The global embedding head beside SCAN (models.pooling): the first stage of large-gallery search."""

    pooling: str = field(default="gpo", metadata={
        "help": "Global head: gpo (generalised pooling, VSE-infinity) | mean (ablation) | none (no head; search "
                "falls back to untrained mean pooling).", "choices": HEAD_POOLINGS})
    head_training: str = field(default="frozen", metadata={
        "help": "frozen: an extra stage after SCAN's epochs trains only the head (SCAN trains exactly as without "
                "it) | joint: the head's loss is added to SCAN's from the first epoch.", "choices": HEAD_TRAINING})
    head_epochs: int = field(default=4, metadata={"help": "Epochs of the frozen-encoder head stage."})
    head_learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate of the head stage."})
    head_warmup_epochs: int = field(default=1, metadata={
        "help": "Head stage epochs on the sum over negatives before hardest negatives (as VSE-infinity)."})
    head_weight: float = field(default=1.0, metadata={"help": "Joint training: weight of the head's triplet loss."})
    gpo_pe_dim: int = field(default=32, metadata={"help": "GPO: dimension of the positional encodings."})
    gpo_hidden: int = field(default=32, metadata={"help": "GPO: hidden size of its bidirectional GRU."})

    def __post_init__(self) -> None:
        for name, allowed in (("pooling", HEAD_POOLINGS), ("head_training", HEAD_TRAINING)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {', '.join(allowed)}")

    @property
    def enabled(self) -> bool:
        return self.pooling != "none"

    @property
    def extra_stage(self) -> bool:
        """Whether a head stage runs after SCAN's epochs (frozen encoders)."""
        return self.enabled and self.head_training == "frozen" and self.head_epochs > 0


@dataclass(frozen=True)
class EvalConfig:
    """How a model is evaluated."""

    split: str = field(default="test", metadata={
        "help": "Split to evaluate: dev | test (COCO: testall for the 5K images).", "choices": EVAL_SPLITS})
    fold5: bool = field(default=False, metadata={"help": "COCO: average over five 1K folds instead of the full 5K."})
    reference_dev: bool = field(default=True, metadata={
        "help": "Dev split of SCAN precomp data: only its first 5000 captions / 1000 images, as the reference's "
                "loader; --no-reference-dev scores the whole split."})
    score_memory_mb: int = field(default=1024, metadata={
        "help": "Memory budget for one chunk of the similarity computation."})
    fused_scores: bool = field(default=True, metadata={
        "help": "Score large CPU evaluations with the fused C++ kernel (built once on first use; needs a C++ "
                "compiler, else eager PyTorch)."})
    batch_size: int = field(default=128, metadata={"help": "Batch size for encoding images and captions."})
    modes: tuple[str, ...] = field(default=("exact",), metadata={
        "help": "Tables to compute: exact (SCAN) | global (the pooled head alone) | two-stage (global shortlist "
                "re-ranked by SCAN)."})
    shortlist_fraction: float = field(default=0.05, metadata={
        "help": "Two-stage: share of the gallery re-ranked by SCAN per query (at least 1 item)."})

    def __post_init__(self) -> None:
        unknown = sorted(set(self.modes) - set(EVAL_MODES))
        if unknown or not self.modes:
            raise ValueError(f"modes={self.modes!r}; expected some of {', '.join(EVAL_MODES)}")
        if not 0 < self.shortlist_fraction <= 1:
            raise ValueError(f"shortlist_fraction={self.shortlist_fraction}; expected (0, 1]")
