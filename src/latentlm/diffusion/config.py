"""Every config dataclass of a diffusion run (seed 002, "Configuration Fields"), in the project's dialect.

    run_dir, batch_size                 top level
    model:     ModelConfig              the one model config (saved inside `<run>/model/config.json`)
    data:      DataConfig               prepared token/latent folders, or a corpus to prepare them from
    train:     TrainingConfig           engine TrainConfig + the seed's stage / loss-mode / unfreeze fields
    loss:      LossConfig               loss weights, Stage II KL warm-up and free bits
    sampling:  SamplingConfig           `sample` command and the sampling inside `eval`
    eval:      EvalConfig               `eval` command (and the end-of-training evaluation)

The model fields `vocab_size`, `seq_len`, `latent_dim`, `mask_token_id`, `pad_token_id`, `sep_token_id`,
`tokenizer` and `encoder` are read from the data folders at start-up when left at 0 / -1 / ""; the saved
model carries them filled in, so it loads without the data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from latentlm.core.config import check_choice, check_range
from latentlm.core.engine import TrainConfig
from latentlm.diffusion.schedules import REMASKING, RemaskingSchedule

__all__ = [
    "ModelConfig",
    "PrepareConfig",
    "DataConfig",
    "ScheduleEntry",
    "TrainingConfig",
    "LossConfig",
    "SamplingConfig",
    "EvalConfig",
    "DiffusionConfig",
    "STAGES",
    "LOSS_TYPES",
    "STAGE1_MODES",
    "CORPUS_FORMATS",
    "SEQUENCE_MIXERS",
    "LATENT_PRED_FROM",
    "LATENT_PREDICTIONS",
    "LATENT_PRIOR_TYPES",
]

STAGES = ("stage1_coupling", "stage2_variational")
STAGE1_MODES = ("stage1_coupling", "l2t", "t2l")
LOSS_TYPES = (*STAGE1_MODES, "sequential")
CORPUS_FORMATS = ("lines", "pydocs", "shakespeare")
SEQUENCE_MIXERS = ("rwkv", "attention")
LATENT_PRED_FROM = ("text", "prefix", "both")
LATENT_PREDICTIONS = ("v", "eps")
LATENT_PRIOR_TYPES = ("fixed_gaussian", "learned_gaussian")
JOINT_ORDERS = ("together", "latent_first")
UNMASK_ORDERS = ("random", "confidence")
WKV_IMPLS = ("chunked", "naive", "fla")


@dataclass
class ModelConfig:
    """The two-stream denoiser and the Stage II modules: everything `LatentDiffusionLM(config)` needs."""

    d_model: int = 256
    """Width of both streams."""
    num_layers: int = 4
    """Number of two-stream blocks."""
    num_heads: int = 4
    """WKV / attention heads (d_model must be divisible by it)."""
    num_latent_tokens: int = 4
    """The sentence latent is projected to this many latent-stream tokens."""
    ffn_mult: int = 4
    """Channel-mix (feed-forward) hidden width as a multiple of d_model."""
    decay_lora_rank: int = 16
    """Rank of RWKV-6's data-dependent decay LoRA."""
    gate_lora_rank: int = 32
    """Rank of the time mix's output-gate LoRA (RWKV-7: ``g = sigmoid(x_g G1) G2``)."""
    sequence_mixer: str = "rwkv"
    """rwkv (bidirectional WKV time mix) | attention (the MDLM-like peer, for comparisons)."""
    wkv_impl: str = "chunked"
    """chunked (matmul chunk form) | naive (one step per token; reference) | fla (flash-linear-attention
    kernels on CUDA when installed, else chunked)."""
    wkv_chunk_size: int = 0
    """Longest chunk of the chunked WKV: the joint sequence is cut into equal chunks of at most this many
    tokens (0: 32)."""
    latent_modulation: bool = False
    """Also add a linear map of the (noisy) latent to every block's adaLN conditioning vector (global,
    DiT-style conditioning), besides the latent tokens the scan mixes in."""
    latent_placement: str = "start"
    """Where the latent tokens sit in the RWKV scan: start ([latent; text]: the text reads them through
    the forward scan only) | both_ends ([latent; text; latent]: through both scans). Attention: no effect."""
    latent_pred_from: str = "text"
    """Extra features of the latent head: text (final text states) | prefix (prefix embeddings) | both."""
    prefix_length: int = 8
    """Tokens pooled for latent_pred_from=prefix|both."""
    latent_prediction: str = "v"
    """Latent diffusion target: v | eps."""
    mask_eps: float = 1e-3
    """Log-linear masking schedule: alpha_1 = mask_eps (defines the text NELBO)."""
    variational: bool = False
    """Stage II modules q(z|x) and p(z); set from train.stage_schedule at start-up."""
    latent_encoder_type: str = "mlp"
    """Stage II q(z|x): mlp (2-layer GELU MLP on pooled text hidden states)."""
    latent_encoder_hidden: int = 256
    """Hidden width of the Stage II encoder MLP."""
    latent_prior_type: str = "fixed_gaussian"
    """Stage II p(z): fixed_gaussian | learned_gaussian."""
    checkpoint_path: str = ""
    """Start from these weights: a run dir (its model/ or latest checkpoint), a model or checkpoint folder,
    or a .safetensors file."""
    vocab_size: int = 0
    """Text vocabulary size (0: from the data; the compact vocabulary when data.compact_vocab)."""
    seq_len: int = 0
    """Tokens per sentence (0: from the data)."""
    latent_dim: int = 0
    """Size of the sentence latent (0: from the data's latents/meta.json)."""
    mask_token_id: int = -1
    """[MASK] id in the model's vocabulary (-1: from the data)."""
    pad_token_id: int = -1
    """[PAD] id in the model's vocabulary (-1: from the data)."""
    sep_token_id: int = -1
    """[SEP] id in the model's vocabulary (-1: from the data)."""
    unk_token_id: int = -1
    """[UNK] id in the model's vocabulary (-1: from the data; unseen tokens of a compact vocabulary)."""
    tokenizer: str = ""
    """Tokenizer of the text stream (alias, path or hub id; "": from the data)."""
    encoder: str = ""
    """Sentence encoder whose space the latents live in ("": from the data)."""

    def __post_init__(self):
        check_choice("model.sequence_mixer", self.sequence_mixer, SEQUENCE_MIXERS)
        check_choice("model.wkv_impl", self.wkv_impl, WKV_IMPLS)
        check_choice("model.latent_pred_from", self.latent_pred_from, LATENT_PRED_FROM)
        check_choice("model.latent_placement", self.latent_placement, ("start", "both_ends"))
        check_choice("model.latent_prediction", self.latent_prediction, LATENT_PREDICTIONS)
        check_choice("model.latent_encoder_type", self.latent_encoder_type, ("mlp",))
        check_choice("model.latent_prior_type", self.latent_prior_type, LATENT_PRIOR_TYPES)
        at_least = {
            1: (
                "d_model",
                "num_layers",
                "num_heads",
                "num_latent_tokens",
                "ffn_mult",
                "decay_lora_rank",
                "gate_lora_rank",
                "prefix_length",
                "latent_encoder_hidden",
            ),
            0: ("wkv_chunk_size", "vocab_size", "seq_len", "latent_dim"),
            -1: ("mask_token_id", "pad_token_id", "sep_token_id", "unk_token_id"),
        }
        for minimum, names in at_least.items():
            for name in names:
                check_range(f"model.{name}", getattr(self, name), minimum)
        check_range("model.mask_eps", self.mask_eps, 0, 1, low_open=True, high_open=True)
        if self.d_model % self.num_heads:
            raise ValueError(
                f"model.d_model={self.d_model} must be divisible by model.num_heads={self.num_heads}"
            )
        if self.vocab_size and not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(
                f"model.mask_token_id: {self.mask_token_id} outside the vocabulary of {self.vocab_size}"
            )

    @property
    def complete(self) -> bool:
        """True when every data-derived field is filled in (a model can be built)."""
        return bool(self.vocab_size and self.seq_len and self.latent_dim and self.mask_token_id >= 0)


@dataclass
class PrepareConfig:
    """How `precompute-latents` (and `train`, when the folders do not exist yet) prepares the data."""

    corpus: str = ""
    """Text source (file or folder; a relative path not found here is looked up in the data folder)."""
    corpus_format: str = "lines"
    """lines (one sentence a line) | pydocs (a folder of .rst sources) | shakespeare (plays)."""
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
    """Shuffling seed."""

    def __post_init__(self):
        check_choice("data.prepare.corpus_format", self.corpus_format, CORPUS_FORMATS)
        check_range("data.prepare.val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True)
        check_range("data.prepare.seq_len", self.seq_len, 4)
        for name in ("min_words", "batch_size"):
            check_range(f"data.prepare.{name}", getattr(self, name), 1)
        check_range("data.prepare.max_sentences", self.max_sentences, 0)
        if self.max_words < self.min_words:
            raise ValueError(
                f"data.prepare.max_words: must be >= min_words ({self.min_words}), got {self.max_words}"
            )


@dataclass
class DataConfig:
    """Where the tokenised sentences and their pre-computed latents live."""

    token_dir: str = "runs/diffusion_data/pydocs/tokens"
    """Folder of train.npy / val.npy token ids + meta.json (made by `precompute-latents`)."""
    latent_dir: str = "runs/diffusion_data/pydocs/latents"
    """Folder of train.npy / val.npy sentence latents + meta.json (made by `precompute-latents`)."""
    use_external_latents: bool = True
    """Stage I: read the pre-computed latents; Stage II: false (latents come from q(z|x))."""
    max_train_examples: int = 0
    """Use only the first N training sentences (0: all)."""
    compact_vocab: bool = False
    """Keep only the WordPiece tokens seen in the training sentences (+ specials); others become [UNK]."""
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    """Used when token_dir has no meta.json yet and prepare.corpus is set."""

    def __post_init__(self):
        check_range("data.max_train_examples", self.max_train_examples, 0)


@dataclass
class ScheduleEntry:
    """One phase of `train.loss_type=sequential`."""

    type: str = "stage1_coupling"
    """Loss mode of the phase: stage1_coupling | l2t | t2l."""
    steps: int = 1
    """Optimizer steps in the phase."""

    def __post_init__(self):
        check_choice("train.sequential_schedule[].type", self.type, STAGE1_MODES)
        check_range("train.sequential_schedule[].steps", self.steps, 1)


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
        check_choice("train.stage_schedule", self.stage_schedule, STAGES)
        check_choice("train.loss_type", self.loss_type, LOSS_TYPES)
        if self.loss_type == "sequential" and not self.sequential_schedule:
            raise ValueError("train.sequential_schedule: loss_type=sequential needs at least one phase")
        for pattern in self.unfreeze_patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"train.unfreeze_patterns: bad regex {pattern!r}: {err}") from err
        for name in ("cond_dropout", "clean_cond_prob"):
            check_range(f"train.{name}", getattr(self, name), 0, 1)
        for name in ("num_epochs", "unfreeze_after_steps"):
            check_range(f"train.{name}", getattr(self, name), 0)
        check_range("train.param_log_every", self.param_log_every, 1)


@dataclass
class LossConfig:
    """Loss weights and the Stage II KL schedule."""

    text_weight: float = 1.0
    """Weight of the MDLM text NELBO (per token)."""
    latent_weight: float = 1.0
    """Weight of the Gaussian latent loss."""
    kl_weight: float = 0.001
    """Stage II: final weight of KL(q(z|x) || p(z)) (per sentence, divided by the sequence length)."""
    kl_warmup_steps: int = 0
    """Stage II: the KL weight rises linearly from 0 to kl_weight over this many steps (0: no warm-up)."""
    free_bits: float = 0.0
    """Stage II: nats per latent dimension below which the KL is not penalised (batch-mean per dimension,
    Kingma et al. 2016); 0: off."""
    geom_weight: float = 0.0
    """Stage II: weight of the latent-geometry regulariser."""
    low_discrepancy: bool = True
    """Stratified diffusion times within a batch (lower-variance loss)."""

    def __post_init__(self):
        for name in (
            "text_weight",
            "latent_weight",
            "kl_weight",
            "kl_warmup_steps",
            "free_bits",
            "geom_weight",
        ):
            check_range(f"loss.{name}", getattr(self, name), 0)


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
    latent_guidance_scale: float = 0.0
    """CFG scale of T2L sampling (latent from text; 0: ``guidance_scale``), since the best scale of each
    direction differs."""
    float64: bool = True
    """Compute the token logits, softmax and Gumbel noise in float64 (float32 biases rare tokens)."""
    num_samples: int = 8
    """Samples written by `latentlm diffusion sample`."""
    mode: str = "l2t"
    """`sample` command: l2t (text from held-out latents) | t2l (latents from held-out text) | joint."""
    joint_order: str = "together"
    """Unconditional joint samples (``eval``, ``sample`` mode joint): together (text and latent denoised
    at the same time) | latent_first (the latent alone, then the text given it; UniDiffuser-style)."""
    joint_guidance_scale: float = 1.0
    """CFG scale of the text stage of latent_first joint samples (1: none, a plain sample of the joint)."""
    unmask_order: str = "random"
    """Which masked positions a text step reveals: random (MDLM's ancestral sampler) | confidence (as
    many as the schedule reveals, those whose drawn token is most probable; MaskGIT / LLaDA)."""
    remasking: str = "none"
    """Text steps that mask revealed tokens again (ReMDM, Wang et al. 2025): none (MDLM) | cap (each
    revealed token with probability min(remask_eta, the schedule's ceiling)) | loop (hold the clean
    fraction at loop_alpha_on over (loop_t_off, loop_t_on] and remask remask_eta of it every step)."""
    remask_eta: float = 0.02
    """Remasking probability of a revealed token per step (cap: its ceiling)."""
    loop_t_on: float = 0.55
    """Loop: the time the loop starts (counting down from 1)."""
    loop_t_off: float = 0.05
    """Loop: the time the loop ends."""
    loop_alpha_on: float = 0.9
    """Loop: the fraction of clean tokens held during the loop."""
    seed: int = 0
    """Sampling seed."""

    def __post_init__(self):
        check_choice("sampling.mode", self.mode, ("l2t", "t2l", "joint"))
        check_choice("sampling.remasking", self.remasking, REMASKING)
        try:
            self.remasking_schedule()
        except ValueError as err:
            raise ValueError(f"sampling.{err}") from None
        check_choice("sampling.unmask_order", self.unmask_order, UNMASK_ORDERS)
        check_choice("sampling.joint_order", self.joint_order, JOINT_ORDERS)
        check_range("sampling.joint_guidance_scale", self.joint_guidance_scale, 0)
        if self.joint_order == "together" and self.joint_guidance_scale != 1.0:
            raise ValueError("sampling.joint_guidance_scale: applies to joint_order=latent_first only")
        for name in ("num_steps", "num_samples"):
            check_range(f"sampling.{name}", getattr(self, name), 1)
        check_range("sampling.top_k", self.top_k, 0)
        check_range("sampling.latent_guidance_scale", self.latent_guidance_scale, 0)
        check_range("sampling.temperature", self.temperature, 0, low_open=True)
        check_range("sampling.top_p", self.top_p, 0, 1, low_open=True)

    @property
    def t2l_guidance(self) -> float:
        """The CFG scale of T2L sampling."""
        return self.latent_guidance_scale or self.guidance_scale

    def text_kwargs(self) -> dict:
        """Keyword arguments of the text samplers (`sample_text_from_latent`, `sample_joint`)."""
        return {
            "num_steps": self.num_steps,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "float64": self.float64,
            "unmask_order": self.unmask_order,
            "remasking": self.remasking_schedule(),
        }

    def remasking_schedule(self) -> RemaskingSchedule:
        """The reverse text process of these settings."""
        return RemaskingSchedule(
            self.remasking, self.remask_eta, self.loop_t_on, self.loop_t_off, self.loop_alpha_on
        )


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
    """Sentences per evaluation forward pass."""
    seed: int = 0
    """Evaluation seed."""
    vae_latent_time: float = 0.0
    """Stage II VAE bound: the latent time tau at which the denoiser reads the posterior sample (``z_tau =
    alpha z + sigma eps``; the KL between q and the prior both pushed to tau; 0: a clean latent). Each tau
    bounds its own latent-variable model; choose it on dev rows (``diffusion_coupling_probe.py``)."""
    likelihood_draws: int = 4
    """Likelihood-based retrieval (``l2t_likelihood`` / ``t2l_likelihood``): Monte-Carlo draws per
    candidate, shared by all queries (common random numbers); each costs ``2 (N^2 + N)`` forward rows for
    N = ``max_examples`` candidates.  0 skips it."""

    def __post_init__(self):
        for name in ("max_examples", "nelbo_samples", "num_samples", "batch_size"):
            check_range(f"eval.{name}", getattr(self, name), 1)
        check_range("eval.likelihood_draws", self.likelihood_draws, 0)
        check_range("eval.vae_latent_time", self.vae_latent_time, 0, 1, high_open=True)


@dataclass
class DiffusionConfig:
    """A diffusion run: `latentlm diffusion precompute-latents|train|eval|sample`."""

    run_dir: str = "runs/diffusion"
    """Run directory (config, metrics, checkpoints, model/, eval/)."""
    batch_size: int = 32
    """Sentences per micro-batch and process."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainingConfig = field(default_factory=TrainingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        check_range("batch_size", self.batch_size, 1)
