"""Latent Variable Distillation (LVD), steps 1–3: teacher embeddings → FAISS k-means → stored states.

:func:`prepare_latent_states` runs the pipeline for a tokenised corpus and returns one cluster id per
training token, in the corpus' flat order (sequence ``i`` owns ``states[offsets[i]:offsets[i + 1]]``).
Both the embeddings (float16) and the assignments (int32) are cached on disk under content hashes,
memory-mapped on reuse, so a second run, a resumed run or the other half of ``latentlm hmm compare``
reuses them instead of recomputing. The training phases (steps 4–6) live in :mod:`latentlm.hmm.task`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latentlm.data.cache import cached_arrays, content_hash
from latentlm.hmm.corpus import Corpus
from latentlm.hmm.teacher import TeacherConfig, embed_sequences, load_teacher


@dataclass
class KMeansConfig:
    """FAISS k-means over the teacher embeddings (K = ``model.num_states`` clusters).

    Attributes:
        iterations: Lloyd iterations.
        seed: seed of FAISS's initialisation and subsampling.
        pca_dim: project to this many principal components first (0: no PCA).
        max_points_per_centroid: FAISS subsamples the training points to K times this.
    """

    iterations: int = 20
    seed: int = 0
    pca_dim: int = 0
    max_points_per_centroid: int = 256

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"lvd.kmeans.iterations: must be >= 1, got {self.iterations}")
        if self.pca_dim < 0 or self.max_points_per_centroid < 1:
            raise ValueError("lvd.kmeans.pca_dim must be >= 0 and lvd.kmeans.max_points_per_centroid >= 1")


@dataclass
class LVDConfig:
    """Latent Variable Distillation settings.

    Attributes:
        enabled: train with LVD (False: plain −log P(O) from the random initialisation).
        pretrain_tokens: tokens trained on −log P(O, S) with the stored states before the switch.
        teacher: the teacher model.
        kmeans: the clustering.
        cache_dir: where embeddings and assignments are cached ("" = ``$LATENTLM_CACHE/hmm`` or
            ``~/.cache/latentlm/hmm``).
    """

    enabled: bool = True
    pretrain_tokens: int = 5_000_000
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    cache_dir: str = ""

    def __post_init__(self) -> None:
        if self.pretrain_tokens < 0:
            raise ValueError(f"lvd.pretrain_tokens: must be >= 0, got {self.pretrain_tokens}")


def default_cache_dir(cfg: LVDConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    root = os.environ.get("LATENTLM_CACHE", str(Path.home() / ".cache" / "latentlm"))
    return Path(root) / "hmm"


def corpus_fingerprint(corpus: Corpus) -> str:
    """Content hash of the tokenised training sequences (ids, boundaries and teacher pieces)."""
    pieces = [[p if p is None or isinstance(p, str) else int(p) for p in seq] for seq in corpus.train.pieces]
    return content_hash(corpus.train.ids.tobytes().hex(), corpus.train.offsets.tolist(), pieces)


def kmeans_assignments(embeddings: np.ndarray, num_clusters: int, cfg: KMeansConfig) -> np.ndarray:
    """Nearest-centre cluster id of every embedding after FAISS k-means.

    Args:
        embeddings: ``(N, d)`` float array (float16 is converted to float32).
        num_clusters: K.
        cfg: iterations, seed, optional PCA, subsampling.

    Returns:
        ``(N,)`` int32 cluster ids in ``[0, K)``.

    Raises:
        ValueError: K larger than the number of embeddings, or PCA wider than the embeddings.
    """
    import faiss

    points = np.ascontiguousarray(embeddings, dtype=np.float32)
    count, dim = points.shape
    if num_clusters > count:
        raise ValueError(
            f"model.num_states={num_clusters} is larger than the number of teacher embeddings ({count}); "
            "use fewer states or a larger corpus"
        )
    if cfg.pca_dim:
        if cfg.pca_dim > dim:
            raise ValueError(f"lvd.kmeans.pca_dim={cfg.pca_dim} exceeds the embedding width {dim}")
        pca = faiss.PCAMatrix(dim, cfg.pca_dim)
        rng = np.random.default_rng(cfg.seed)
        sample = points[rng.choice(count, size=min(count, 200_000), replace=False)]
        pca.train(sample)
        points = pca.apply(points)
        dim = cfg.pca_dim
    kmeans = faiss.Kmeans(
        dim,
        num_clusters,
        niter=cfg.iterations,
        seed=cfg.seed,
        max_points_per_centroid=cfg.max_points_per_centroid,
        verbose=False,
    )
    kmeans.train(points)
    _, labels = kmeans.index.search(points, 1)
    return labels[:, 0].astype(np.int32)


@dataclass
class LatentStates:
    """Stored LVD states: ``states[offsets[i]:offsets[i + 1]]`` are sequence ``i``'s cluster ids."""

    states: np.ndarray
    offsets: np.ndarray
    embeddings_key: str
    states_key: str

    def sequence(self, index: int) -> np.ndarray:
        return self.states[self.offsets[index] : self.offsets[index + 1]]


def prepare_latent_states(corpus: Corpus, num_states: int, cfg: LVDConfig) -> LatentStates:
    """Steps 1–3 of LVD for ``corpus.train``, cached by content hash.

    Returns:
        :class:`LatentStates` aligned with ``corpus.train``.
    """
    if num_states > corpus.train.num_tokens:
        raise ValueError(
            f"model.num_states={num_states} is larger than the number of training tokens "
            f"({corpus.train.num_tokens}), so there are fewer embeddings than clusters"
        )
    cache = default_cache_dir(cfg)
    fingerprint = corpus_fingerprint(corpus)
    teacher = cfg.teacher
    embeddings_key = "emb-" + content_hash(
        fingerprint, teacher.name, teacher.kind, teacher.layer, teacher.max_length
    )

    def compute_embeddings() -> dict[str, np.ndarray]:
        model, tokenizer, kind = load_teacher(teacher)
        return {"embeddings": embed_sequences(model, tokenizer, kind, corpus.train, teacher)}

    states_key = "states-" + content_hash(embeddings_key, num_states, vars(cfg.kmeans))

    def compute_states() -> dict[str, np.ndarray]:
        embeddings = cached_arrays(cache, embeddings_key, compute_embeddings)["embeddings"]
        return {"states": kmeans_assignments(embeddings, num_states, cfg.kmeans)}

    states = cached_arrays(cache, states_key, compute_states)["states"]
    if states.shape != (corpus.train.num_tokens,):
        raise ValueError(f"{cache / states_key}: cached states do not match the corpus; delete the entry")
    return LatentStates(states, corpus.train.offsets, embeddings_key, states_key)
