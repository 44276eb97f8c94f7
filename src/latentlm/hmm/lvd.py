"""Latent Variable Distillation (LVD), steps 1–3: teacher embeddings → FAISS k-means → stored states.

:func:`prepare_latent_states` runs the pipeline for a tokenised corpus and returns one cluster id per
training token, in the corpus' flat order (sequence ``i`` owns ``states[offsets[i]:offsets[i + 1]]``).
Both the embeddings (float16) and the assignments (int32) are cached on disk under content hashes,
memory-mapped on reuse, so a second run, a resumed run or the other half of ``latentlm hmm compare``
reuses them instead of recomputing. :func:`closed_form_estimate` is the ``closed_form`` LVD phase
(step 4 in one pass); the training phases (steps 4–6) live in :mod:`latentlm.hmm.task`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentlm.data.cache import cached_arrays, check_ids, content_hash
from latentlm.hmm.config import KMeansConfig, LVDConfig
from latentlm.hmm.data import Corpus
from latentlm.hmm.teacher import embed_sequences, load_teacher
from latentlm.teachers import model_fingerprint


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
        cfg: iterations, seed, optional PCA, subsampling, spherical (cosine) clustering.

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
    if cfg.spherical:
        points = np.ascontiguousarray(points)
        faiss.normalize_L2(points)  # in place; unit rows, so the nearest centre is the most cosine-similar
    kmeans = faiss.Kmeans(
        dim,
        num_clusters,
        niter=cfg.iterations,
        seed=cfg.seed,
        max_points_per_centroid=cfg.max_points_per_centroid,
        spherical=cfg.spherical,
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
        fingerprint,
        model_fingerprint(teacher.name),
        teacher.kind,
        teacher.layer,
        teacher.max_length,
        teacher.position,
        teacher.dtype,
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
    check_ids(states, num_states, cache / states_key / "states.npy")
    return LatentStates(states, corpus.train.offsets, embeddings_key, states_key)


def closed_form_counts(corpus: Corpus, states: LatentStates, num_states: int, chunk_sequences: int = 4096):
    """Counts of first states ``(K,)``, transitions ``(K, K)`` and emissions ``(K, V)`` (float64) in the
    stored teacher paths of the training split: the sufficient statistics of ``log P(O, S)``.

    One streaming pass over the stored states (chunks of ``chunk_sequences`` sequences); under several
    processes each counts its share of the sequences and the counts are all-reduced, so every process
    ends with the same counts.
    """
    import torch
    import torch.distributed as dist

    from latentlm.hmm.data import pad_batch
    from latentlm.hmm.estimate import state_counts

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    vocab_size = len(corpus.vocab)
    totals = None
    indices = list(range(rank, len(corpus.train), world))
    for start in range(0, len(indices), chunk_sequences):
        batch = pad_batch(
            [
                {"index": i, "obs": corpus.train.sequence(i), "states": states.sequence(i)}
                for i in indices[start : start + chunk_sequences]
            ]
        )
        counts = state_counts(batch["obs"], batch["states"], batch["mask"], num_states, vocab_size)
        totals = list(counts) if totals is None else [t + c for t, c in zip(totals, counts, strict=True)]
    if totals is None:
        totals = [
            torch.zeros(num_states, dtype=torch.float64),
            torch.zeros(num_states, num_states, dtype=torch.float64),
            torch.zeros(num_states, vocab_size, dtype=torch.float64),
        ]
    if distributed:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        for tensor in totals:
            moved = tensor.to(device)
            dist.all_reduce(moved)
            tensor.copy_(moved.cpu())
    return tuple(totals)


def closed_form_estimate(
    corpus: Corpus,
    states: LatentStates,
    num_states: int,
    pseudocount: float,
    chunk_sequences: int = 4096,
    emission_prior: str = "uniform",
    counts: tuple | None = None,
    emission_pseudocount: float | None = None,
):
    """The ``closed_form`` LVD phase: the exact maximiser of ``Σ log P(O, S) + α Σ log θ``, i.e. the
    :func:`closed_form_counts` (or the given ``counts``) plus the pseudocount (the emission rows':
    ``emission_pseudocount``, ``None`` for the same), normalised.

    Returns:
        Normalised :class:`~latentlm.hmm.model.HMMParameters` (float32 log-probabilities).
    """
    from latentlm.hmm.estimate import normalise_counts, unigram_prior

    if counts is None:
        counts = closed_form_counts(corpus, states, num_states, chunk_sequences)
    prior = unigram_prior(corpus.train.ids, len(corpus.vocab)) if emission_prior == "unigram" else None
    params = normalise_counts(*counts, pseudocount, prior, emission_pseudocount)
    return type(params)(*(p.float() for p in params))
