"""Every dataclass of an LHT run, field by field (`latentlm lht train --help` prints them).

One dialect: top-level `run_dir`, `batch_size`, `num_threads`; sections `model:` (`LHTConfig`, with
`edges:` and `hierarchy:`), `data:` (`DataConfig`, with `sources:` and `masking:`), `train:` (the core
`TrainConfig`) and `eval:` (`EvalConfig`). Every numeric field is range-checked when the config is built,
so a bad value stops the run at start-up with a message naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from latentlm.core.config import check_range
from latentlm.core.engine import TrainConfig

ATTENTION_KINDS = ("hierarchical", "full", "window")
BACKENDS = ("dense", "sparse", "flex")
BOUNDARY_MODES = ("learned", "random", "stride", "gold")
SELECTIONS = ("threshold", "top_k")
SOURCE_KINDS = ("rst", "plain", "hf")


@dataclass
class EdgeConfig:
    """Which edge types the hierarchical attention uses (each can be switched off for ablations)."""

    local_window: int = 8
    """Tokens attend to tokens within ±local_window positions; 0 = off (then same_unit must be on)."""
    same_unit: bool = True
    """Tokens attend to every token of their level-1 unit."""
    parent_child: bool = True
    """Every node <-> the head of its unit at each higher level."""
    siblings: bool = True
    """Heads <-> heads of the same level sharing a parent (top level: all heads of the level)."""
    neighbour_units: int = 1
    """Heads <-> heads of the same level within ±k units; 0 = off."""
    doc_token: bool = True
    """A [DOC] slot attends to and is attended by every valid slot."""

    def __post_init__(self) -> None:
        check_range("model.edges.local_window", self.local_window, 0)
        check_range("model.edges.neighbour_units", self.neighbour_units, 0)
        if self.local_window == 0 and not self.same_unit:
            raise ValueError(
                "model.edges.local_window: 0 with same_unit off leaves a token no other token to attend "
                "to; set local_window >= 1 or same_unit: true"
            )


@dataclass
class HierarchyConfig:
    """Levels of the hierarchy: one entry per level in `target_ratios` and `router_layers`."""

    target_ratios: list[float] = field(default_factory=lambda: [4.0, 4.0])
    """Members per unit, per level (level 1 over tokens, level l over level-(l-1) units); each > 1."""
    router_layers: list[int] = field(default_factory=lambda: [1, 2])
    """Router of level l runs before this block (non-decreasing, each < model.num_layers)."""
    capacity_factor: float = 2.0
    """Head slots of level l = ceil(capacity_factor * slots below / ratio); >= 1."""
    ratio_loss_weight: float = 0.1
    """Weight of each level's ratio loss in the training loss."""
    boundaries: str = "learned"
    """Where units start: 'learned' (routers), 'random' or 'stride' (exactly round(members / ratio)
    units, at random / evenly spaced positions), 'gold' (sentences / paragraphs / sections: the oracle)."""
    smoothing: int = 0
    """Learned routers: a boundary must also be the largest probability within ±smoothing members
    (non-maximum suppression; spaces units out). 0 = off."""
    selection: str = "threshold"
    """Learned routers: 'threshold' (a boundary where p >= 0.5, H-Net) or 'top_k' (the round(n / ratio)
    members with the highest p: the learned positions at exactly the rate of 'random' and 'stride')."""

    def __post_init__(self) -> None:
        if len(self.target_ratios) != len(self.router_layers):
            raise ValueError(
                f"model.hierarchy.target_ratios: {len(self.target_ratios)} entries but router_layers has "
                f"{len(self.router_layers)}; give one of each per level"
            )
        if not self.target_ratios:
            raise ValueError("model.hierarchy.target_ratios: give at least one level")
        for ratio in self.target_ratios:
            if not ratio > 1.0:
                raise ValueError(f"model.hierarchy.target_ratios: each ratio must be > 1, got {ratio}")
        if any(layer < 0 for layer in self.router_layers):
            raise ValueError(f"model.hierarchy.router_layers: must be >= 0, got {self.router_layers}")
        if any(b < a for a, b in zip(self.router_layers, self.router_layers[1:], strict=False)):
            raise ValueError(
                "model.hierarchy.router_layers: must be non-decreasing (level l pools level l-1's heads), "
                f"got {self.router_layers}"
            )
        check_range("model.hierarchy.capacity_factor", self.capacity_factor, 1.0)
        check_range("model.hierarchy.ratio_loss_weight", self.ratio_loss_weight, 0.0)
        check_range("model.hierarchy.smoothing", self.smoothing, 0)
        if self.selection not in SELECTIONS:
            raise ValueError(
                f"model.hierarchy.selection: expected one of {SELECTIONS}, got {self.selection!r}"
            )
        if self.boundaries not in BOUNDARY_MODES:
            raise ValueError(
                f"model.hierarchy.boundaries: expected one of {BOUNDARY_MODES}, got {self.boundaries!r}"
            )

    @property
    def num_levels(self) -> int:
        return len(self.target_ratios)


@dataclass
class LHTConfig:
    """Size and structure of an LHT encoder (or of a dense / sliding-window baseline of the same size)."""

    vocab_size: int = 30522
    """Vocabulary size (0 = the tokenizer's, filled in when a run builds the model)."""
    hidden_size: int = 256
    """D, width of every slot."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads (hidden_size must split into heads of even width, for RoPE)."""
    intermediate_size: int = 1024
    """GELU MLP width."""
    dropout: float = 0.1
    """Residual and MLP dropout."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities (backends 'dense' and 'sparse')."""
    rope_theta: float = 10000.0
    """RoPE base."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon."""
    pad_token_id: int = 0
    """Padding id (filled from the tokenizer in a run)."""
    tokenizer: str = ""
    """Tokenizer name (alias, path or hub id) saved with the model, so a saved model can read text."""
    attention: str = "hierarchical"
    """'hierarchical' (LHT), 'full' (dense baseline) or 'window' (tokens see ±edges.local_window only)."""
    backend: str = "dense"
    """'dense' (SDPA + boolean mask), 'sparse' (gathers only the key blocks the pattern allows; trains on
    CPU) or 'flex' (FlexAttention block masks; trains on GPU)."""
    block_size: int = 0
    """Slots per query/key block of the 'sparse' backend; 0 = by length: 16 up to 4,096 slots, 64 above
    (the faster of the two in benchmarks/lht_speed.py at 2,048 and at 8,192 tokens)."""
    gradient_checkpointing: bool = False
    """Recompute blocks in the backward pass to save memory."""
    edges: EdgeConfig = field(default_factory=EdgeConfig)
    """Hierarchical attention edge types."""
    hierarchy: HierarchyConfig = field(default_factory=HierarchyConfig)
    """Levels and router schedule."""

    def __post_init__(self) -> None:
        check_range("model.vocab_size", self.vocab_size, 0)
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            check_range(f"model.{name}", getattr(self, name), 1)
        check_range("model.block_size", self.block_size, 0)
        check_range("model.pad_token_id", self.pad_token_id, 0)
        if not self.rope_theta > 0:
            raise ValueError(f"model.rope_theta: must be > 0, got {self.rope_theta}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"model.layer_norm_eps: must be > 0, got {self.layer_norm_eps}")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"model.attention: expected one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"model.backend: expected one of {BACKENDS}, got {self.backend!r}")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"model.hidden_size: {self.hidden_size} must split into {self.num_heads} heads of even width"
            )
        if self.attention == "hierarchical":
            bad = [layer for layer in self.hierarchy.router_layers if layer >= self.num_layers]
            if bad:
                raise ValueError(
                    f"model.hierarchy.router_layers: {bad} >= num_layers={self.num_layers}; a router "
                    "runs before a block, so its layer must be < num_layers"
                )
        if self.attention == "window" and self.edges.local_window < 1:
            raise ValueError("model.edges.local_window: attention 'window' needs a window >= 1")
        for name in ("dropout", "attention_dropout"):
            check_range(f"model.{name}", getattr(self, name), 0.0, 1.0, high_open=True)
        if self.backend == "flex" and self.attention_dropout > 0:
            raise ValueError("model.attention_dropout: FlexAttention has no attention dropout; set it to 0")


@dataclass
class MaskingConfig:
    """BERT masking probabilities (80/10/10)."""

    mask_prob: float = 0.15
    """Fraction of maskable tokens that get a label."""
    replace_with_mask: float = 0.8
    """Of those, fraction replaced by [MASK]."""
    replace_with_random: float = 0.1
    """Of those, fraction replaced by a random token (the rest stay unchanged)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"data.masking.mask_prob: must be in (0, 1), got {self.mask_prob}")
        if self.replace_with_mask < 0 or self.replace_with_random < 0:
            raise ValueError("data.masking.replace_with_mask / replace_with_random: must be >= 0")
        if self.replace_with_mask + self.replace_with_random > 1.0:
            raise ValueError(
                "data.masking: replace_with_mask + replace_with_random must be <= 1, got "
                f"{self.replace_with_mask + self.replace_with_random}"
            )


@dataclass
class SourceConfig:
    """One document source of the pretraining mix."""

    kind: str = "rst"
    """'rst' (folder of reST files), 'plain' (UTF-8 text file) or 'hf' (streamed dataset)."""
    path: str = "pydocs"
    """rst/plain: path; relative paths are looked up under $LATENTLM_DATA."""
    name: str = ""
    """hf: dataset name (e.g. wikimedia/wikipedia) or builder ('json', 'text')."""
    hf_config: str = ""
    """hf: dataset configuration ('' = none)."""
    split: str = "train"
    """hf: split."""
    text_field: str = "text"
    """hf: column holding the document text."""
    probability: float = 1.0
    """Share of draws from this source."""
    paragraphs_per_document: int = 40
    """plain: paragraphs per document."""
    limit: int = 0
    """At most this many documents from the source (0 = all; needed for large hf sets)."""

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"data.sources.kind: expected one of {SOURCE_KINDS}, got {self.kind!r}")
        if self.kind == "hf" and not self.name:
            raise ValueError("data.sources.name: an 'hf' source needs a dataset name")
        check_range("data.sources.probability", self.probability, 0.0)
        check_range("data.sources.paragraphs_per_document", self.paragraphs_per_document, 1)
        check_range("data.sources.limit", self.limit, 0)


def _default_sources() -> list[SourceConfig]:
    return [
        SourceConfig(kind="rst", path="pydocs", probability=0.8),
        SourceConfig(kind="plain", path="tinyshakespeare/input.txt", probability=0.2),
    ]


@dataclass
class DataConfig:
    """Where documents come from and how they become training chunks."""

    sources: list[SourceConfig] = field(default_factory=_default_sources)
    """The interleaved document mix."""
    tokenizer: str = "minilm"
    """WordPiece tokenizer (alias, path or hub id; needs a [MASK] token)."""
    max_length: int = 8192
    """Tokens per chunk (longer documents are cut into several chunks)."""
    min_length: int = 16
    """Chunks shorter than this are dropped."""
    heldout_fraction: float = 0.1
    """Share of documents kept for evaluation (by a stable hash of their name); must leave some."""
    max_documents: int = 0
    """Documents drawn from the mix (0 = until every source is exhausted)."""
    mix_seed: int = 0
    """Seed of the source-choosing draws."""
    cache_dir: str = ".cache/latentlm/lht"
    """Tokenized corpora are cached here."""
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    """BERT 80/10/10 masking."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("data.sources: give at least one source")
        if self.max_length < self.min_length or self.min_length < 1:
            raise ValueError(
                f"data.max_length/min_length: need 1 <= min_length <= max_length, got "
                f"{self.min_length}, {self.max_length}"
            )
        check_range("data.heldout_fraction", self.heldout_fraction, 0.0, 1.0, high_open=True)
        check_range("data.max_documents", self.max_documents, 0)


@dataclass
class EvalConfig:
    """Held-out evaluation settings."""

    max_chunks: int = 64
    """Held-out chunks used for perplexity and boundary scores (0 = all)."""
    batch_size: int = 4
    """Chunks per evaluation batch."""
    mask_seed: int = 1234
    """Seed of the (fixed) evaluation masks."""
    tolerance: int = 2
    """A learned boundary within this many tokens of a gold one is a hit."""
    probe_min_documents: int = 5
    """Categories with fewer reST documents are left out of the probe."""
    probe_folds: int = 5
    """Cross-validation folds of the classification probe (>= 2)."""
    probe_max_documents: int = 200
    """Documents embedded for the probe (0 = all)."""
    sample_tokens: int = 320
    """Tokens of the sample document drawn in the report."""

    def __post_init__(self) -> None:
        for name in ("max_chunks", "tolerance", "probe_min_documents", "probe_max_documents"):
            check_range(f"eval.{name}", getattr(self, name), 0)
        check_range("eval.batch_size", self.batch_size, 1)
        check_range("eval.probe_folds", self.probe_folds, 2)
        check_range("eval.sample_tokens", self.sample_tokens, 1)


@dataclass
class LHTRunConfig:
    """A full LHT pretraining run (`latentlm lht train <this>.yaml`)."""

    run_dir: str = "runs/lht"
    """Run directory (config, metrics, checkpoints, model/, eval/)."""
    batch_size: int = 2
    """Chunks per micro-batch."""
    num_threads: int = 0
    """Torch CPU threads (0 = torch's default; 1 is far faster on an oversubscribed CPU)."""
    model: LHTConfig = field(default_factory=lambda: LHTConfig(vocab_size=0))
    """The encoder (vocab_size 0 = the tokenizer's)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Documents, tokenizer, chunking and masking."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The core engine's settings (steps, optimizer, schedule, precision, checkpoints)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation."""

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, 1)
        check_range("num_threads", self.num_threads, 0)
