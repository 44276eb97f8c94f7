"""Typed configuration of a LatentWire run (issue 3; seed 004's knobs, named for what they do).

`WireRunConfig` nests: the frozen decoders and their prompting (`prompt`), the encoder, the latent
shape, the adapters, the loss weights, the training phases (Stage A / Stage B), the data, the
evaluation, and the engine's `train` settings. `WireModelConfig` is the part saved next to the
trainable weights, so a checkpoint rebuilds the encoder and every adapter on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from latentlm.core.engine import TrainConfig

ENCODER_KINDS = ("byte", "stquery", "anchor", "interlingua", "span", "anchor_span")
ADAPTER_KINDS = ("linear", "mlp", "select")
SCHEDULES = ("constant", "cosine", "taper")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: must be one of {', '.join(choices)}, got {value!r}")


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass
class PromptConfig:
    """How every frozen LLM is prompted (shared by training and evaluation)."""

    style: str = "auto"
    """plain | chat | auto (chat when the tokenizer has a chat template)."""
    anchor_text: str = "Answer: "
    """Literal placed right before the answer, in text and latent prompts alike."""
    add_bos: str = "auto"
    """auto | yes | no: BOS at the very start of the sequence."""
    bos_after_prefix: bool = False
    """Insert BOS between the latent/content segment and the anchor (seed 004 found 'no' better)."""

    def __post_init__(self):
        _check_choice("prompt.style", self.style, ("plain", "chat", "auto"))
        _check_choice("prompt.add_bos", self.add_bos, ("auto", "yes", "no"))


@dataclass
class EncoderConfig:
    """The learned encoder text -> Z in R^{M x d_z}."""

    kind: str = "stquery"
    """byte | stquery | anchor (anchor-guided: LLM token embeddings + sentence-encoder anchor) |
    interlingua (per-token codes in LLM-native space, M of them kept) | span (context scope: one code
    per span of `latent.ratio` context tokens) | anchor_span (context scope: position k starts as every
    model's embedding of its k-th `anchor_budget` token, concatenated, plus a span code that starts at 0;
    needs `adapter.kind: select` and `latent.d_z` = the sum of the model widths)."""
    width: int = 256
    """Hidden width of the encoder transformer and pooler."""
    layers: int = 2
    """Transformer layers before pooling (0 allowed for stquery)."""
    heads: int = 4
    """Attention heads (must divide `width`)."""
    dropout: float = 0.0
    """Dropout inside the encoder."""
    max_bytes: int = 1024
    """ByteEncoder: UTF-8 bytes kept per prompt (the rest is cut)."""
    sentence_encoder: str = "minilm"
    """Frozen sentence encoder for stquery / the anchor (alias, HF id or path)."""
    max_tokens: int = 256
    """Token limit for the sentence encoder and the LLM-embedding inputs."""
    frozen: bool = False
    """Keep the encoder at its random initialisation (seed-001 stage 2: fixed random encoder)."""
    question_prior: float = 4.0
    """interlingua: score bonus of question tokens (keeps the question first)."""
    relevance_prior: float = 2.0
    """interlingua: score per unit of cosine between a token's sentence and the question."""

    def __post_init__(self):
        _check_choice("encoder.kind", self.kind, ENCODER_KINDS)
        if self.width % self.heads:
            raise ValueError(f"encoder.heads: {self.heads} does not divide encoder.width {self.width}")
        _check_positive("encoder.layers", self.layers, allow_zero=True)
        _check_positive("encoder.max_bytes", self.max_bytes)
        _check_positive("encoder.max_tokens", self.max_tokens)


@dataclass
class LatentConfig:
    """Shape of the latent: M soft tokens per model = shared + private slots, each d_z wide."""

    scope: str = "context"
    """context: the soft tokens carry the context paragraph and the question follows them as text,
    `[prefix][M soft tokens][question][suffix][anchor]`; prompt: they carry context + question
    (seed 004's layout, `[prefix][M soft tokens][suffix][anchor]`)."""
    ratio: int = 4
    """Span encoder: context tokens per soft token; a paragraph of n encoder tokens gets
    M = ceil(n / ratio) soft tokens (capped at `length`)."""
    length: int = 32
    """M, the soft tokens each frozen LLM receives (span encoder: the most it may receive)."""
    private_length: int = 0
    """Slots of M private to each model (the rest are shared by all models)."""
    d_z: int = 256
    """Latent width."""

    def __post_init__(self):
        _check_choice("latent.scope", self.scope, ("context", "prompt"))
        _check_positive("latent.ratio", self.ratio)
        _check_positive("latent.length", self.length)
        _check_positive("latent.d_z", self.d_z)
        if not 0 <= self.private_length < self.length:
            raise ValueError(f"latent.private_length: must be in [0, length), got {self.private_length}")

    @property
    def shared_length(self) -> int:
        return self.length - self.private_length


@dataclass
class AdapterConfig:
    """Per-model adapter Z -> soft-token embeddings of that model."""

    kind: str = "mlp"
    """linear | mlp (linear projection followed by a residual 2-layer GELU MLP) | select (this model's
    slice of an `anchor_span` latent plus a low-rank GELU correction whose output starts at 0)."""
    rank: int = 64
    """select: hidden width of the low-rank correction."""
    hidden_mult: int = 2
    """MLP hidden width as a multiple of the model width."""
    dropout: float = 0.0
    """Dropout inside the MLP."""
    calibration: str = "embed_rms"
    """embed_rms (each soft token rescaled to the model's embedding RMS) | none."""
    affine: bool = True
    """Learnable per-channel scale and bias after calibration."""
    film: bool = False
    """FiLM: per-slot scale and shift predicted from the latent slot."""
    affine_l2: float = 1e-4
    """L2 pull of the affine (gamma - 1, beta) and calibration scale toward identity."""

    def __post_init__(self):
        _check_choice("adapter.kind", self.kind, ADAPTER_KINDS)
        _check_choice("adapter.calibration", self.calibration, ("embed_rms", "none"))
        _check_positive("adapter.hidden_mult", self.hidden_mult)
        _check_positive("adapter.rank", self.rank)


@dataclass
class LossConfig:
    """Loss weights (0 turns a term off) and their knobs."""

    answer_ce: float = 1.0
    """Teacher-forced CE over all answer tokens (PAD masked)."""
    first_token: float = 1.0
    """Base weight of the CE of the first answer token."""
    first_token_peak: float = 2.0
    """Weight the schedule reaches (cosine: peak mid-phase; taper: start at peak, decay to base)."""
    first_token_schedule: str = "constant"
    """constant | cosine | taper, over the phase's steps."""
    k_token: float = 0.5
    """CE averaged over the first `k` answer tokens."""
    k: int = 4
    """Early steps for the K-token CE and KD."""
    kd: float = 0.5
    """KD of the first K steps from the same frozen model prompted with the text."""
    kd_tau: float = 1.0
    """KD temperature."""
    kd_top_k: int = 64
    """Teacher distribution kept as its top-k log-probabilities (renormalised) in the cache."""
    entropy: float = 0.0
    """First-token entropy bonus (subtracted: higher entropy, lower loss) against collapse."""
    align: float = 0.0
    """Pull latent slot 0 (model space) toward the embedding of the gold first answer token (1 - cos)."""
    recon: float = 0.0
    """Reconstruct the prompt embeddings from the latent: soft tokens vs M-segment mean-pooled content."""
    autoencode: float = 0.0
    """Context scope: weight of the autoencoding CE (each frozen model regenerates the context from
    the soft tokens, ICAE's pretraining task)."""
    autoencode_tokens: int = 128
    """Context tokens (of each model's tokenizer) the autoencoding loss regenerates."""
    autoencode_only_steps: int = 0
    """Context scope: first steps with the autoencoding loss only (no answer pass)."""
    recon_warmup_steps: int = 0
    """Steps of reconstruction only before the generation losses anneal in."""
    gen_anneal_steps: int = 0
    """Linear ramp of the generation weights after the warm-up (0: switch on at once)."""
    recon_cos_threshold: float = 0.0
    """Back off generation weights while reconstruction cosine (EMA) is below this (0: off)."""
    backoff_factor: float = 0.5
    """Multiplier applied to the generation weights while backed off."""

    def __post_init__(self):
        _check_choice("loss.first_token_schedule", self.first_token_schedule, SCHEDULES)
        _check_positive("loss.autoencode_tokens", self.autoencode_tokens)
        _check_positive("loss.autoencode_only_steps", self.autoencode_only_steps, allow_zero=True)
        for name in ("answer_ce", "first_token", "k_token", "kd", "entropy", "align", "recon", "autoencode"):
            _check_positive(f"loss.{name}", getattr(self, name), allow_zero=True)
        _check_positive("loss.k", self.k)
        _check_positive("loss.kd_tau", self.kd_tau)
        _check_positive("loss.kd_top_k", self.kd_top_k)
        if not 0 < self.backoff_factor <= 1:
            raise ValueError(f"loss.backoff_factor: must be in (0, 1], got {self.backoff_factor}")


@dataclass
class PhaseConfig:
    """One training stage. Phases run in order; their `steps` must add up to `train.max_steps`."""

    name: str = "stage_a"
    """Name logged with every step (stage_a, stage_b, ...)."""
    steps: int = 100
    """Optimizer steps in this phase."""
    text_warmup_steps: int = 0
    """Alternate text and latent batches for this many first steps of the phase (Stage B)."""
    text_tail_prob: float = 0.0
    """After the warm-up, probability that a batch is a text batch (Stage B tail)."""
    model_schedule: str = "joint"
    """joint (every model in each step) | alternate (one model per step, round robin)."""
    first_token_scale: float = 1.0
    """Multiplier on the first-token weight in this phase (Stage B raises it)."""

    def __post_init__(self):
        _check_positive("phases[].steps", self.steps)
        _check_choice("phases[].model_schedule", self.model_schedule, ("joint", "alternate"))
        if not 0 <= self.text_tail_prob <= 1:
            raise ValueError(f"phases[].text_tail_prob: must be in [0, 1], got {self.text_tail_prob}")


@dataclass
class DataConfig:
    """Where questions come from."""

    train: str = "squad/train-v1.1-subset.json"
    """SQuAD JSON (relative paths resolve under $LATENTLM_DATA), 'squad' (Hugging Face) or 'synthetic'."""
    dev: str = "squad/dev-v1.1-subset.json"
    """Evaluation questions, same forms as `train`."""
    train_limit: int = 512
    """Train questions used (0: all)."""
    dev_limit: int = 200
    """Dev questions evaluated (0: all)."""
    max_context_chars: int = 1200
    """Contexts longer than this are skipped (keeps CPU prompts short); 0 keeps all."""
    max_answer_tokens: int = 12
    """Answer tokens supervised per example."""
    cache_dir: str = ".cache/latentlm/wire"
    """Cache of frozen-model features (teacher top-k logits, sentence-encoder states)."""

    def __post_init__(self):
        _check_positive("data.train_limit", self.train_limit, allow_zero=True)
        _check_positive("data.dev_limit", self.dev_limit, allow_zero=True)
        _check_positive("data.max_answer_tokens", self.max_answer_tokens)


@dataclass
class EvalConfig:
    """`latentlm wire eval` and the in-training evaluation."""

    batch_size: int = 8
    """Generation batch size."""
    max_new_tokens: int = 12
    """Decoding budget."""
    min_new_tokens: int = 1
    """Stop tokens banned until this many tokens were generated."""
    eos_ban_steps: int = 0
    """Stop tokens also banned for this many first steps."""
    prefix_gain: float = 1.0
    """Soft-token gain at evaluation (seed 004: 1.0-1.25)."""
    baselines: list[str] = field(
        default_factory=lambda: ["text", "token_budget", "pca", "mean_pool", "replay", "replay_no_anchor"]
    )
    """Baselines evaluated next to the latent."""
    context_baselines: list[str] = field(
        default_factory=lambda: ["no_context", "token_budget", "anchor_budget", "external", "text"]
    )
    """Context scope: text baselines at the latent's positions, evaluated next to it (`text` is the
    whole context, the ceiling)."""
    external_scorer: str = "smollm2"
    """Context scope: the frozen LM whose self-information drives the external (Selective Context)
    baseline; one of `models` is reused, another name is loaded."""
    pca_fit_examples: int = 64
    """Train prompts whose token embeddings fit the PCA baseline."""
    in_training_examples: int = 16
    """Dev questions scored (first-token accuracy, gold NLL) at each in-training evaluation."""
    latency_repeats: int = 3
    """Repeats of the prefill timing (median reported)."""

    def __post_init__(self):
        allowed = (
            "text",
            "token_budget",
            "anchor_budget",
            "pca",
            "mean_pool",
            "replay",
            "replay_no_anchor",
            "latent_nearest",
        )
        for name in self.baselines:
            _check_choice("eval.baselines[]", name, allowed)
        for name in self.context_baselines:
            _check_choice(
                "eval.context_baselines[]",
                name,
                ("no_context", "token_budget", "anchor_budget", "external", "text"),
            )
        _check_positive("eval.batch_size", self.batch_size)
        _check_positive("eval.prefix_gain", self.prefix_gain)


@dataclass
class WireModelConfig:
    """What the trainable `WireModel` needs; saved in every checkpoint's `config.json`."""

    model_names: list[str] = field(default_factory=lambda: ["smollm2"])
    """Frozen LLMs served by the latent, in order (one adapter each)."""
    model_dims: list[int] = field(default_factory=lambda: [576])
    """Input-embedding width of each model."""
    embed_rms: list[float] = field(default_factory=lambda: [1.0])
    """Input-embedding RMS of each model (calibration target)."""
    st_dim: int = 384
    """Width of the sentence encoder's token states (stquery / anchor)."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    """How the frozen models were prompted in training (the saved model prompts them the same way)."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)

    def __post_init__(self):
        if not self.model_names:
            raise ValueError("model_names: at least one frozen model is needed")
        if not len(self.model_names) == len(self.model_dims) == len(self.embed_rms):
            raise ValueError("model_names, model_dims and embed_rms must have the same length")


@dataclass
class WireRunConfig:
    """A whole LatentWire run (`latentlm wire train configs/wire/squad.yaml ...`)."""

    run_dir: str = "runs/wire"
    """Run directory (config, metrics.jsonl, diagnostics.jsonl, checkpoints, report)."""
    models: list[str] = field(default_factory=lambda: ["smollm2", "qwen2.5-coder-0.5b"])
    """Frozen LLMs (latentlm alias, HF id or local path); one latent serves all of them."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    phases: list[PhaseConfig] = field(
        default_factory=lambda: [
            PhaseConfig(name="stage_a", steps=60),
            PhaseConfig(
                name="stage_b", steps=40, text_warmup_steps=8, text_tail_prob=0.05, first_token_scale=2.0
            ),
        ]
    )
    """Training stages in order (Stage A: encoder + adapters; Stage B: text/latent warm-up, tail)."""
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    batch_size: int = 4
    """Questions per micro-batch."""
    encoder_lr_scale: float = 0.5
    """Encoder LR = train.lr x this (seed 001: encoder slower than adapters)."""
    diagnostics_every: int = 10
    """Write first-token diagnostics to diagnostics.jsonl every N steps (0: off)."""
    grad_diag_every: int = 20
    """Add per-loss gradient norms to the diagnostics every N steps (0: off); each costs one extra
    backward pass through the frozen LLMs per loss term."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(max_steps=100, lr=1e-3, log_every=5, best_metric="gold_nll_mean")
    )
    """Engine settings; `best/` keeps the weights with the lowest in-training gold NLL."""

    def __post_init__(self):
        if not self.models:
            raise ValueError("models: at least one frozen model is needed")
        if not self.phases:
            raise ValueError("phases: at least one phase is needed")
        total = sum(p.steps for p in self.phases)
        if total != self.train.max_steps:
            raise ValueError(f"phases: steps add up to {total} but train.max_steps is {self.train.max_steps}")
        _check_positive("batch_size", self.batch_size)
        _check_positive("encoder_lr_scale", self.encoder_lr_scale)
        if self.encoder.kind in ("span", "anchor_span") and self.latent.scope != "context":
            raise ValueError(
                f"encoder.kind: {self.encoder.kind} compresses the context; it needs latent.scope: context"
            )
        if (self.encoder.kind == "anchor_span") != (self.adapter.kind == "select"):
            raise ValueError("adapter.kind: select reads an anchor_span latent; use the two together")
        if self.encoder.kind in ("span", "anchor_span") and self.latent.private_length:
            raise ValueError("latent.private_length: the span encoder's codes are all shared; set it to 0")
        if self.encoder.kind == "interlingua" and self.latent.private_length:
            raise ValueError(
                "latent.private_length: the interlingua encoder keeps shared token codes only; set it to 0"
            )
