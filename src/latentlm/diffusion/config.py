"""Typed configuration of the diffusion system (seed 002, "Configuration Fields").

The run config (``DiffusionConfig``, YAML ``configs/diffusion/rwkv_mmdit.yaml``) keeps the seed's field
names: ``model.latent_pred_from``, ``model.latent_encoder_type``, ``model.latent_prior_type``,
``model.checkpoint_path``, ``data.use_external_latents``, ``data.token_dir``, ``data.latent_dir``,
``training.stage_schedule``, ``training.loss_type``, ``training.sequential_schedule``,
``training.unfreeze_after_steps``, ``training.unfreeze_patterns``, ``training.num_epochs``,
``loss.kl_weight``, ``loss.geom_weight``.  ``training`` extends the shared engine's ``TrainConfig``
(``max_steps``, ``lr``, ...), so one section holds every optimisation knob.
``PrecomputeConfig`` configures ``latentlm diffusion precompute-latents``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from latentlm.core.engine import TrainConfig
from latentlm.diffusion.denoiser import LATENT_PRED_FROM, SEQUENCE_MIXERS
from latentlm.diffusion.objectives import LATENT_PREDICTIONS
from latentlm.diffusion.variational import LATENT_PRIOR_TYPES

__all__ = [
    "ModelConfig",
    "DataConfig",
    "ScheduleEntry",
    "TrainingConfig",
    "LossConfig",
    "SamplingConfig",
    "EvalConfig",
    "DiffusionConfig",
    "PrecomputeConfig",
    "STAGES",
    "LOSS_TYPES",
    "STAGE1_MODES",
    "CORPUS_FORMATS",
]

STAGES = ("stage1_coupling", "stage2_variational")
STAGE1_MODES = ("stage1_coupling", "l2t", "t2l")
LOSS_TYPES = (*STAGE1_MODES, "sequential")
CORPUS_FORMATS = ("lines", "pydocs", "shakespeare")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: must be one of {list(choices)}, got {value!r}")


@dataclass
class ModelConfig:
    """Denoiser architecture and the Stage II modules."""

    d_model: int = 256
    """Width of both streams."""
    num_layers: int = 4
    """Number of two-stream blocks."""
    num_heads: int = 4
    """WKV / attention heads (d_model must be divisible by it)."""
    num_latent_tokens: int = 4
    """The sentence latent is projected to this many latent-stream tokens."""
    latent_dim: int = 0
    """Size of the sentence latent; 0: read it from data.latent_dir/meta.json."""
    ffn_mult: int = 4
    """Channel-mix (feed-forward) hidden width as a multiple of d_model."""
    decay_lora_rank: int = 16
    """Rank of RWKV-6's data-dependent decay LoRA."""
    sequence_mixer: str = "rwkv"
    """rwkv (bidirectional WKV time mix) | attention (the MDLM-like peer, for comparisons)."""
    wkv_impl: str = "chunked"
    """chunked (parallel within chunks) | naive (one step per token; reference)."""
    wkv_chunk_size: int = 0
    """Chunk length of the chunked WKV (0: about sqrt of the joint sequence length)."""
    latent_pred_from: str = "text"
    """Extra features of the latent head: text (final text states) | prefix (prefix embeddings) | both."""
    prefix_length: int = 8
    """Tokens pooled for latent_pred_from=prefix|both."""
    latent_prediction: str = "v"
    """Latent diffusion target: v | eps."""
    latent_encoder_type: str = "mlp"
    """Stage II q(z|x): mlp (2-layer GELU MLP on pooled text hidden states)."""
    latent_encoder_hidden: int = 256
    """Hidden width of the Stage II encoder MLP."""
    latent_prior_type: str = "fixed_gaussian"
    """Stage II p(z): fixed_gaussian | learned_gaussian."""
    checkpoint_path: str = ""
    """Start from these weights: a run dir (latest checkpoint), a checkpoint dir or a .safetensors file."""

    def __post_init__(self):
        _check_choice("model.sequence_mixer", self.sequence_mixer, SEQUENCE_MIXERS)
        _check_choice("model.wkv_impl", self.wkv_impl, ("chunked", "naive"))
        _check_choice("model.latent_pred_from", self.latent_pred_from, LATENT_PRED_FROM)
        _check_choice("model.latent_prediction", self.latent_prediction, LATENT_PREDICTIONS)
        _check_choice("model.latent_encoder_type", self.latent_encoder_type, ("mlp",))
        _check_choice("model.latent_prior_type", self.latent_prior_type, LATENT_PRIOR_TYPES)
        if self.d_model % self.num_heads:
            raise ValueError(
                f"model.d_model={self.d_model} must be divisible by model.num_heads={self.num_heads}"
            )


@dataclass
class DataConfig:
    """Where the tokenised sentences and their pre-computed latents live."""

    token_dir: str = "data/diffusion/pydocs/tokens"
    """Folder written by `precompute-latents`: train.npy / val.npy token ids + meta.json."""
    latent_dir: str = "data/diffusion/pydocs/latents"
    """Folder written by `precompute-latents`: train.npy / val.npy sentence latents + meta.json."""
    use_external_latents: bool = True
    """Stage I: read the pre-computed latents; Stage II: false (latents come from q(z|x))."""
    batch_size: int = 32
    """Micro-batch size per process."""
    max_train_examples: int = 0
    """Use only the first N training sentences (0: all)."""


@dataclass
class ScheduleEntry:
    """One phase of `training.loss_type=sequential`."""

    type: str = "stage1_coupling"
    """Loss mode of the phase: stage1_coupling | l2t | t2l."""
    steps: int = 1
    """Optimizer steps in the phase."""

    def __post_init__(self):
        _check_choice("training.sequential_schedule[].type", self.type, STAGE1_MODES)
        if self.steps < 1:
            raise ValueError(f"training.sequential_schedule[].steps: must be >= 1, got {self.steps}")


@dataclass
class TrainingConfig(TrainConfig):
    """The engine's optimisation settings plus the seed's stage / loss-mode / unfreeze fields."""

    stage_schedule: str = "stage1_coupling"
    """stage1_coupling (external latents) | stage2_variational (q(z|x) + p(z) on a Stage I model)."""
    loss_type: str = "stage1_coupling"
    """Diffusion loss mode: stage1_coupling (joint) | l2t | t2l | sequential (see sequential_schedule)."""
    sequential_schedule: list[ScheduleEntry] = field(default_factory=list)
    """Phases for loss_type=sequential; after the last phase its mode continues."""
    num_epochs: int = 0
    """If > 0, overrides max_steps with num_epochs passes over the training set."""
    unfreeze_after_steps: int = 0
    """Stage II from a checkpoint: the Stage I parameters matching unfreeze_patterns train from this step."""
    unfreeze_patterns: list[str] = field(default_factory=lambda: ["rwkv.*time_mix", "rwkv.*channel_mix"])
    """Regexes (re.search on parameter names) unfrozen at unfreeze_after_steps."""
    param_log_every: int = 100
    """Log active/frozen parameter counts every N steps."""
    cond_dropout: float = 0.1
    """Probability of replacing the conditioning modality by its null (fully noised) version, for CFG."""
    clean_cond_prob: float = 0.25
    """stage1_coupling: probability that one modality (chosen at random) is clean, training T2L/L2T too."""

    def __post_init__(self):
        super().__post_init__()
        _check_choice("training.stage_schedule", self.stage_schedule, STAGES)
        _check_choice("training.loss_type", self.loss_type, LOSS_TYPES)
        if self.loss_type == "sequential" and not self.sequential_schedule:
            raise ValueError("training.sequential_schedule: loss_type=sequential needs at least one phase")
        for pattern in self.unfreeze_patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"training.unfreeze_patterns: bad regex {pattern!r}: {err}") from err
        for name in ("cond_dropout", "clean_cond_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"training.{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.num_epochs < 0 or self.unfreeze_after_steps < 0 or self.param_log_every < 1:
            raise ValueError("training.num_epochs / unfreeze_after_steps must be >= 0, param_log_every >= 1")


@dataclass
class LossConfig:
    """Loss weights and noise-schedule constants."""

    text_weight: float = 1.0
    """Weight of the MDLM text NELBO (per token)."""
    latent_weight: float = 1.0
    """Weight of the Gaussian latent loss."""
    kl_weight: float = 0.001
    """Stage II: weight of KL(q(z|x) || p(z)) (per latent, divided by the sequence length)."""
    geom_weight: float = 0.0
    """Stage II: weight of the latent-geometry regulariser."""
    mask_eps: float = 1e-3
    """Log-linear schedule: alpha_1 = mask_eps."""
    low_discrepancy: bool = True
    """Stratified diffusion times within a batch (lower-variance loss)."""


@dataclass
class SamplingConfig:
    """Defaults of `latentlm diffusion sample` and the sampling inside `eval`."""

    num_steps: int = 64
    """Denoising steps."""
    temperature: float = 1.0
    """Softmax temperature of text sampling."""
    top_k: int = 0
    """Keep the k most likely tokens (0: off)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1: off)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance scale (1: plain conditional)."""
    num_samples: int = 8
    """Samples written by `latentlm diffusion sample`."""
    mode: str = "l2t"
    """`sample` command: l2t (text from held-out latents) | t2l (latents from held-out text) | joint."""
    seed: int = 0

    def __post_init__(self):
        _check_choice("sampling.mode", self.mode, ("l2t", "t2l", "joint"))
        if self.num_steps < 1 or self.temperature <= 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError("sampling: need num_steps >= 1, temperature > 0, top_k >= 0, 0 < top_p <= 1")


@dataclass
class EvalConfig:
    """`latentlm diffusion eval` settings."""

    max_examples: int = 256
    """Held-out sentences for NELBO, T2L and L2T metrics."""
    nelbo_samples: int = 4
    """Monte-Carlo (t, mask) draws per sentence for the NELBO bound."""
    num_samples: int = 64
    """Unconditional (joint) samples for generative perplexity, entropy and distinct-n."""
    judge_model: str = "smollm2"
    """Frozen causal LM for generative perplexity (alias, path or hub id; empty: skip)."""
    batch_size: int = 32
    seed: int = 0


@dataclass
class DiffusionConfig:
    """A diffusion run: `latentlm diffusion train|eval|sample`."""

    run_dir: str = "runs/diffusion"
    """Run directory (config, metrics, checkpoints, report)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class PrecomputeConfig:
    """`latentlm diffusion precompute-latents`: sentences -> token ids + sentence-encoder latents."""

    corpus: str = ""
    """Text source (file or folder); required."""
    corpus_format: str = "lines"
    """lines (one sentence a line) | pydocs (a folder of .rst sources) | shakespeare (plays)."""
    out_dir: str = "data/diffusion/corpus"
    """Writes <out_dir>/tokens and <out_dir>/latents."""
    encoder: str = "minilm"
    """Sentence-transformers model (alias, path or hub id) that makes the latents."""
    tokenizer: str = ""
    """Tokenizer for the text stream (alias/path/id; empty: the encoder's, which has [MASK])."""
    seq_len: int = 32
    """Tokens per sentence including the closing [SEP]; longer sentences are truncated."""
    min_words: int = 5
    """Drop sentences with fewer words."""
    max_words: int = 40
    """Drop sentences with more words."""
    max_sentences: int = 20000
    """Keep at most this many sentences after shuffling (0: all)."""
    val_fraction: float = 0.05
    """Held-out share."""
    batch_size: int = 64
    """Encoder batch size."""
    seed: int = 0

    def __post_init__(self):
        _check_choice("corpus_format", self.corpus_format, CORPUS_FORMATS)
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: must be in (0, 1), got {self.val_fraction}")
        if self.seq_len < 4 or self.min_words < 1 or self.max_words < self.min_words:
            raise ValueError("seq_len must be >= 4 and 1 <= min_words <= max_words")
