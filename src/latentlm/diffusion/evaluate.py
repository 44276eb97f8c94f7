"""``latentlm diffusion eval``: the seed's evaluation checklist, automated, plus generation metrics.

Seed 002, "Evaluation" (Stage I checks: forward shapes, finite losses in every mode, latent norm
retention, freezing; Stage II checks: KL / collapse watch, valid mu and logvar, stochastic
reparameterisation, reconstruction) and issue 4's metrics:

* NELBO perplexity bounds on held-out sentences: text alone (null latent), text given its latent
  (Stage I: the external latent; Stage II: ``z ~ q(z|x)``, plus ``KL`` for the full VAE bound).  The
  NELBO covers every position, padding included (the model also generates the length), and is divided
  by the number of real tokens (words + [SEP]).
* Samples (joint for Stage I, prior + L2T for Stage II): generative perplexity under a frozen judge LM,
  unigram entropy, distinct-1/2; the same for held-out reference sentences as a yardstick.
* T2L: cosine between sampled and true latents (in the encoder's space) against a random-pair
  baseline, and retrieval recall@1 over the held-out set.
* L2T: cosine between the re-encoded generated text and the conditioning latent, its random-pair
  baseline and recall@1.
* Likelihood retrieval (``likelihood_retrieval``, the diffusion-classifier way): recall@1 and mean rank
  of the true pair among the held-out candidates scored by the model's own bounds, as pointwise mutual
  information (conditional minus null-condition bound), in both directions: ``l2t_likelihood``,
  ``t2l_likelihood``.

Generative perplexity states its judge, the sampling precision (float64 or float32) and the number of
denoising steps.  A perplexity too large for a float is recorded as ``inf`` with ``*_overflow: true``
instead of stopping the evaluation.

Results go to ``<run_dir>/eval/metrics.json``, ``eval/samples.jsonl`` and ``eval/report.md`` with plots
(through ``latentlm.core.lifecycle.write_eval``).  This module does not import the task: ``run_evaluation``
takes the run's ``DiffusionTask`` as an argument.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latentlm.core.checkpoint import atomic_write_text
from latentlm.core.lifecycle import write_eval
from latentlm.core.report import Report, line_plot
from latentlm.core.run import RunDir
from latentlm.diffusion.data import DirectFileDataset, collate_batch
from latentlm.diffusion.model import MODE_FROZEN_STREAM, LatentDiffusionLM, stream_of
from latentlm.diffusion.objectives import (
    apply_masking,
    gaussian_latent_loss,
    latent_elbo_term,
    masked_nelbo,
    noise_latent,
)
from latentlm.diffusion.sampling import sample_joint, sample_latent_from_text, sample_text_from_latent
from latentlm.diffusion.schedules import sample_diffusion_times
from latentlm.diffusion.variational import diffused_gaussian, kl_divergence, reparameterize
from latentlm.metrics.generation import distinct_n, generative_perplexity, unigram_entropy
from latentlm.metrics.perplexity import perplexity

__all__ = [
    "heldout_nelbo",
    "stage1_checklist",
    "stage2_checklist",
    "latent_retrieval_metrics",
    "RetrievalDraws",
    "retrieval_draws",
    "l2t_pmi_scores",
    "t2l_pmi_scores",
    "ranks_from_scores",
    "likelihood_retrieval",
    "text_sample_metrics",
    "run_evaluation",
    "safe_perplexity",
]


def safe_perplexity(total_nll: float, total_tokens: int) -> float:
    """``perplexity`` that returns ``inf`` instead of raising OverflowError (a vacuous bound is a result)."""
    try:
        return perplexity(total_nll, total_tokens)
    except OverflowError:
        return math.inf


def _batches(dataset: DirectFileDataset, batch_size: int, latent_dim: int, device):
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        yield {k: v.to(device) for k, v in collate_batch(items, latent_dim).items()}


@torch.no_grad()
def heldout_nelbo(
    model: nn.Module,
    dataset: DirectFileDataset,
    num_draws: int = 1,
    seed: int = 0,
    batch_size: int = 32,
    vae_latent_time: float = 0.0,
) -> dict[str, float]:
    """Monte-Carlo NELBO bounds on held-out sentences.

    The Stage II VAE bound reads the posterior sample at latent time ``vae_latent_time`` (tau): the
    decoder gets ``z_tau = alpha z + sigma eps`` with ``z ~ q(z | x)`` at ``t_latent = tau``, and the KL is
    taken between q and the prior both pushed through the forward process to tau
    (``diffused_gaussian``).  Every tau bounds the likelihood of its own latent-variable model (z_tau
    from the pushed-forward prior, the text from the denoiser given z_tau at tau); tau = 0 reads the
    sample as a clean latent, which a nearly collapsed encoder cannot back up.

    Args:
        model: the ``LatentDiffusionLM`` (eval mode; its schedules, ids and stage are used).
        dataset: held-out ``DirectFileDataset``.
        num_draws: (t, mask) draws per sentence.
        seed: seed of the draws.
        batch_size: sentences per forward pass.

    Returns:
        ``nelbo_per_token`` / ``ppl_bound`` (null latent), ``nelbo_given_latent_per_token`` /
        ``ppl_bound_given_latent``, ``latent_mse`` (T2L denoising loss), and for Stage II
        ``kl_per_sentence`` and ``ppl_bound_vae`` (reconstruction NELBO + KL) with ``vae_latent_time``.
    """
    if not 0.0 <= vae_latent_time < 1.0:
        raise ValueError(f"heldout_nelbo: vae_latent_time must be in [0, 1), got {vae_latent_time}")
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    cfg, denoiser = model.config, model.rwkv
    variational = model.latent_encoder is not None
    text_schedule, latent_schedule = model.text_schedule, model.latent_schedule
    latent_dim = cfg.latent_dim
    sums = {"uncond": 0.0, "cond": 0.0, "kl": 0.0, "mse": 0.0}
    tokens = sentences = mse_rows = 0
    for batch in _batches(dataset, batch_size, latent_dim, device):
        x0 = batch["input_ids"]
        B = x0.shape[0]
        keep = x0 != cfg.pad_token_id
        tokens += int(keep.sum())
        sentences += B
        ones, zeros = torch.ones(B, device=device), torch.zeros(B, device=device)
        tau = torch.full((B,), vae_latent_time, device=device) if variational else zeros
        if variational:
            mu, logvar, _ = model.encode_text(x0, keep)
            posterior, prior = (mu, logvar), model.latent_prior(B)
            if vae_latent_time:
                alpha, sigma = (x.unsqueeze(-1) for x in latent_schedule.alpha_sigma(tau))  # (B, 1) each
                posterior, prior = (diffused_gaussian(*q, alpha, sigma) for q in (posterior, prior))
            sums["kl"] += float(kl_divergence(*posterior, *prior).sum())
        elif not bool(batch["has_latent"].all()):
            raise ValueError("held-out Stage I evaluation needs the external latents (data.latent_dir)")
        for _ in range(num_draws):
            z0 = reparameterize(mu, logvar, g) if variational else batch["latent"]
            t = sample_diffusion_times(B, g, device=device)
            x_t, masked = apply_masking(x0, t, text_schedule, cfg.mask_token_id, g)
            z_null = torch.randn(B, latent_dim, generator=g).to(device)
            # What the decoder reads: z_tau = alpha z + sigma eps at tau > 0.
            z_read = noise_latent(z0, tau, latent_schedule, g)[0] if vae_latent_time else z0
            for key, z, t_latent in (("uncond", z_null, ones), ("cond", z_read, tau)):
                hidden = denoiser(x_t, z, t, t_latent).text_hidden
                nelbo = masked_nelbo(
                    denoiser.masked_token_nll(hidden[masked], x0[masked]), masked, t, text_schedule
                )
                sums[key] += float(nelbo.sum()) / num_draws
            t_latent = sample_diffusion_times(B, g, device=device)
            z_t, eps = noise_latent(z0, t_latent, latent_schedule, g)
            out = denoiser(x0, z_t, zeros, t_latent).latent_output
            mse = gaussian_latent_loss(out, z0, eps, t_latent, latent_schedule, cfg.latent_prediction)
            sums["mse"] += float(mse.sum()) / num_draws
            mse_rows += B / num_draws
    result = {
        "nelbo_per_token": sums["uncond"] / tokens,
        "ppl_bound": safe_perplexity(sums["uncond"], tokens),
        "nelbo_given_latent_per_token": sums["cond"] / tokens,
        "ppl_bound_given_latent": safe_perplexity(sums["cond"], tokens),
        "latent_mse": sums["mse"] / max(mse_rows, 1),
    }
    if variational:
        result["kl_per_sentence"] = sums["kl"] / sentences
        result["vae_nelbo_per_token"] = (sums["cond"] + sums["kl"]) / tokens
        result["ppl_bound_vae"] = safe_perplexity(sums["cond"] + sums["kl"], tokens)
    for key in [k for k in result if k.startswith("ppl_bound")]:
        result[f"{key}_overflow"] = float(math.isinf(result[key]))
    return result


def _check(name: str, passed: bool, detail: str) -> dict:
    return {"check": name, "passed": bool(passed), "detail": detail}


def stage1_checklist(model: nn.Module, batch: dict) -> list[dict]:
    """Forward shapes, finite losses in every mode and freezing per mode (restores requires_grad)."""
    checks = []
    cfg = model.config
    x0, z0 = batch["input_ids"], batch["latent"]
    B, L = x0.shape
    with torch.no_grad():
        out = model.rwkv(x0, z0, torch.zeros(B), torch.zeros(B))
    ok = tuple(out.text_hidden.shape) == (B, L, cfg.d_model) and tuple(out.latent_output.shape) == (
        B,
        cfg.latent_dim,
    )
    checks.append(
        _check(
            "forward shapes",
            ok,
            f"text {tuple(out.text_hidden.shape)}, latent {tuple(out.latent_output.shape)}",
        )
    )
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    for mode in ("stage1_coupling", "l2t", "t2l"):
        frozen_stream = MODE_FROZEN_STREAM[mode]
        for name, p in model.named_parameters():
            p.requires_grad_(frozen_stream is None or stream_of(name) != frozen_stream)
            p.grad = None
        with torch.enable_grad():
            out = model(x0, z0, mode=mode, generator=torch.Generator().manual_seed(0))
            out.loss.backward()
        losses = {"loss": out.loss, "text_nelbo": out.text_nelbo, "latent_mse": out.latent_mse}
        losses = {k: v.detach() for k, v in losses.items() if v is not None}
        finite = all(bool(torch.isfinite(v).all()) for v in losses.values())
        detail = ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
        checks.append(_check(f"finite losses ({mode})", finite, detail))
        if frozen_stream is not None:
            leaked = [
                n for n, p in model.named_parameters() if stream_of(n) == frozen_stream and p.grad is not None
            ]
            trained = [
                n
                for n, p in model.named_parameters()
                if stream_of(n) not in (None, frozen_stream) and p.grad is not None and p.grad.abs().sum() > 0
            ]
            checks.append(
                _check(
                    f"freezing ({mode}: {frozen_stream} stream frozen)",
                    not leaked and bool(trained),
                    f"{len(leaked)} frozen tensors got gradients, {len(trained)} trainable tensors did",
                )
            )
    for name, p in model.named_parameters():
        p.requires_grad_(saved[name])
        p.grad = None
    return checks


def stage2_checklist(model: nn.Module, batch: dict) -> list[dict]:
    """KL collapse watch, valid mu/logvar and stochastic reparameterisation."""
    x0 = batch["input_ids"]
    keep = x0 != model.config.pad_token_id
    with torch.no_grad():
        mu, logvar, _ = model.encode_text(x0, keep)
        kl = kl_divergence(mu, logvar, *model.latent_prior(x0.shape[0]))
        z1, z2 = reparameterize(mu, logvar), reparameterize(mu, logvar)
    kl_per_dim = float(kl.mean()) / mu.shape[1]
    active_units = int((mu.var(0) > 0.01).sum()) if mu.shape[0] > 1 else 0
    return [
        _check(
            "KL not collapsed",
            kl_per_dim > 0.01,
            f"KL {float(kl.mean()):.4g} nats/sentence ({kl_per_dim:.4g}/dim), "
            f"active units {active_units}/{mu.shape[1]}",
        ),
        _check(
            "valid mu/logvar",
            bool(torch.isfinite(mu).all() and torch.isfinite(logvar).all()),
            f"|mu| {float(mu.norm(dim=-1).mean()):.4g}, "
            f"logvar in [{float(logvar.min()):.3g}, {float(logvar.max()):.3g}]",
        ),
        _check(
            "stochastic reparameterisation",
            not torch.equal(z1, z2),
            f"mean |z1 - z2| = {float((z1 - z2).abs().mean()):.4g}",
        ),
    ]


def latent_retrieval_metrics(
    predicted: torch.Tensor, target: torch.Tensor, seed: int = 0
) -> dict[str, float]:
    """Cosine of paired vectors, the random-pair baseline and recall@1 of retrieving the pair.

    Args:
        predicted: (N, d) generated latents (or re-encoded generations).
        target: (N, d) their true / conditioning latents.
        seed: seed of the random pairing (a derangement-free shuffle; self-pairs are rotated away).

    Returns:
        ``cosine``, ``cosine_random_pairs``, ``recall_at_1`` and per-example cosines (as lists) under
        ``cosines`` / ``cosines_random``.
    """
    n = predicted.shape[0]
    sims = F.normalize(predicted.float(), dim=-1) @ F.normalize(target.float(), dim=-1).T  # (N, N)
    paired = sims.diagonal()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    perm = torch.where(perm == torch.arange(n), (perm + 1) % n, perm)
    random_pairs = sims[torch.arange(n), perm]
    recall = (sims.argmax(1) == torch.arange(n)).float().mean()
    return {
        "cosine": float(paired.mean()),
        "cosine_random_pairs": float(random_pairs.mean()),
        "recall_at_1": float(recall),
        "cosines": paired.tolist(),
        "cosines_random": random_pairs.tolist(),
    }


@dataclass
class RetrievalDraws:
    """The random numbers of the likelihood retrieval: one set per draw k and candidate j, shared by every
    query (common random numbers, so that the scores of one candidate are paired across queries)."""

    text_times: torch.Tensor
    """(K, N) masking times of candidate text j."""
    masked: torch.Tensor
    """(K, N, T) bool: its masked positions."""
    null_latents: torch.Tensor
    """(K, N, d) the null latent's draw (N(0, I) at t_latent = 1, as in training and ``heldout_nelbo``)."""
    latent_times: torch.Tensor
    """(K, N) noising times of candidate latent j."""
    latent_noise: torch.Tensor
    """(K, N, d) its Gaussian noise."""


def retrieval_draws(model: nn.Module, ids: torch.Tensor, num_draws: int, seed: int = 0) -> RetrievalDraws:
    """Draw the times, masks and noise of ``likelihood_retrieval`` for N candidates ``ids`` (N, T).

    Each candidate's K times are stratified (``(u_j + k / K) mod 1``, MDLM's low-discrepancy sampler)."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    N, K = ids.shape[0], num_draws
    # (K, N): t[k, j] = (u + k / K + j / (N K)) mod 1, so each candidate's K times are stratified
    text_times = sample_diffusion_times(N * K, g).view(K, N)
    masked = torch.stack(
        [apply_masking(ids.cpu(), t, model.text_schedule, cfg.mask_token_id, g)[1] for t in text_times]
    )  # (K, N, T)
    null_latents = torch.randn(K, N, cfg.latent_dim, generator=g)
    latent_times = sample_diffusion_times(N * K, g).view(K, N)  # stratified per candidate as above
    latent_noise = torch.randn(K, N, cfg.latent_dim, generator=g)
    return RetrievalDraws(text_times, masked, null_latents, latent_times, latent_noise)


def _text_nelbo(model, x0, masked, t, z, t_latent) -> torch.Tensor:
    """(B,) text NELBO of clean ``x0`` (B, T) masked at ``masked`` (B, T) at times ``t`` (B,), given
    latents ``z`` (B, d) at latent times ``t_latent`` (B,)."""
    cfg, denoiser = model.config, model.rwkv
    hidden = denoiser(x0.masked_fill(masked, cfg.mask_token_id), z, t, t_latent).text_hidden
    return masked_nelbo(denoiser.masked_token_nll(hidden[masked], x0[masked]), masked, t, model.text_schedule)


def _latent_nelbo(model, x, t_text, z0, t, eps) -> torch.Tensor:
    """(B,) latent NELBO term of ``z0`` (B, d) noised with ``eps`` (B, d) at ``t`` (B,), given text ``x``
    (B, T) at text times ``t_text`` (B,)."""
    alpha, sigma = model.latent_schedule.alpha_sigma(t)
    z_t = alpha.unsqueeze(-1) * z0 + sigma.unsqueeze(-1) * eps
    output = model.rwkv(x, z_t, t_text, t).latent_output
    return latent_elbo_term(output, z0, eps, t, model.latent_schedule, model.config.latent_prediction)


def _over_rows(fn, num_rows: int, batch_size: int) -> torch.Tensor:
    """``fn(rows)`` on chunks of ``arange(num_rows)``, concatenated."""
    rows = torch.arange(num_rows)
    return torch.cat([fn(rows[s : s + batch_size]) for s in range(0, num_rows, batch_size)])


@torch.no_grad()
def l2t_pmi_scores(
    model: nn.Module, ids: torch.Tensor, latents: torch.Tensor, draws: RetrievalDraws, batch_size: int = 64
) -> torch.Tensor:
    """``S[i, j] = mean_k NELBO_k(x_j | null latent) - NELBO_k(x_j | z_i)``: latent i scores text j.

    Args:
        model: the ``LatentDiffusionLM``.
        ids: (N, T) candidate texts.
        latents: (N, d) standardised latents (clean, t_latent = 0).
        draws: ``retrieval_draws`` for these N.
        batch_size: sequences per forward pass.

    Returns:
        (N, N) float32 PMI estimates in nats.
    """
    K, N = draws.text_times.shape
    dev = next(model.parameters()).device
    ids, latents = ids.to(dev), latents.to(dev)
    times, null = draws.text_times.to(latents), draws.null_latents.to(latents)  # latents' device and dtype
    masked = draws.masked.to(dev)

    def uncond(rows):  # rows over (k, j)
        k, j = rows // N, rows % N
        return _text_nelbo(model, ids[j], masked[k, j], times[k, j], null[k, j], times.new_ones(len(rows)))

    def cond(rows):  # rows over (k, i, j)
        k, i, j = rows // (N * N), rows // N % N, rows % N
        return _text_nelbo(model, ids[j], masked[k, j], times[k, j], latents[i], times.new_zeros(len(rows)))

    null_nelbo = _over_rows(uncond, K * N, batch_size).view(K, 1, N)
    cond_nelbo = _over_rows(cond, K * N * N, batch_size).view(K, N, N)  # (k, latent i, text j)
    return (null_nelbo - cond_nelbo).mean(0).cpu()


@torch.no_grad()
def t2l_pmi_scores(
    model: nn.Module, ids: torch.Tensor, latents: torch.Tensor, draws: RetrievalDraws, batch_size: int = 64
) -> torch.Tensor:
    """``S[i, j] = mean_k L_k(z_j | null text) - L_k(z_j | x_i)``: text i scores latent j.

    ``L`` is the latent NELBO term (``latent_elbo_term``) with clean text (t_text = 0); the null text is
    fully masked at t_text = 1 (the condition-dropout input of training, as in T2L guidance).

    Args and returns as ``l2t_pmi_scores`` (rows: texts, columns: latents).
    """
    K, N = draws.latent_times.shape
    dev = next(model.parameters()).device
    ids, latents = ids.to(dev), latents.to(dev)
    times, noise = draws.latent_times.to(latents), draws.latent_noise.to(latents)
    null_text = torch.full_like(ids[:1], model.config.mask_token_id)

    def uncond(rows):  # rows over (k, j)
        k, j = rows // N, rows % N
        x = null_text.expand(len(rows), -1)
        return _latent_nelbo(model, x, times.new_ones(len(rows)), latents[j], times[k, j], noise[k, j])

    def cond(rows):  # rows over (k, i, j)
        k, i, j = rows // (N * N), rows // N % N, rows % N
        return _latent_nelbo(model, ids[i], times.new_zeros(len(rows)), latents[j], times[k, j], noise[k, j])

    null_loss = _over_rows(uncond, K * N, batch_size).view(K, 1, N)
    cond_loss = _over_rows(cond, K * N * N, batch_size).view(K, N, N)  # (k, text i, latent j)
    return (null_loss - cond_loss).mean(0).cpu()


def ranks_from_scores(scores: torch.Tensor) -> dict[str, float]:
    """Retrieval of the true pair from an (N queries, N candidates) score matrix, true pairs on the diagonal.

    The rank of query i is ``1 + #{j != i : S[i, j] >= S[i, i]}`` (ties count against the true pair; a
    NaN score counts as -inf); recall@1 is the fraction of rank 1.

    Returns:
        ``recall_at_1``, ``mean_rank``, ``median_rank``, ``num_candidates``.
    """
    scores = torch.nan_to_num(scores.double(), nan=-math.inf)
    n = scores.shape[0]
    true = scores.diagonal().unsqueeze(1)  # (N, 1)
    ranks = (scores >= true).sum(1)  # the diagonal counts itself: rank = 1 + others >= it
    return {
        "recall_at_1": float((ranks == 1).double().mean()),
        "mean_rank": float(ranks.double().mean()),
        "median_rank": float(ranks.double().median()),
        "num_candidates": n,
    }


def likelihood_retrieval(
    model: nn.Module,
    ids: torch.Tensor,
    latents: torch.Tensor,
    num_draws: int = 4,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, dict]:
    """Retrieval recall@1 from the model's own bounds (the diffusion-classifier way), both directions.

    L2T: latent i scores text j by the PMI estimate ``NELBO(x_j | null) - NELBO(x_j | z_i)``; T2L: text i
    scores latent j by ``L(z_j | null text) - L(z_j | x_i)``.  By Bayes, among candidates of which one is
    the true pair, ``P(j | query) ~ p(candidate_j | query) / p(candidate_j)``: the raw conditional bound
    would favour candidates that are likely under any condition.

    Args:
        model: the ``LatentDiffusionLM`` (eval mode).
        ids: (N, T) held-out texts.
        latents: (N, d) their standardised latents.
        num_draws: Monte-Carlo draws per candidate, shared by all queries.
        seed: seed of the draws.
        batch_size: sequences per forward pass.

    Returns:
        ``{"l2t": ..., "t2l": ...}``, each ``ranks_from_scores``' fields, ``num_draws`` and ``scores``
        (the (N, N) matrix; rows: queries).
    """
    draws = retrieval_draws(model, ids, num_draws, seed)
    result = {}
    for name, scorer in (("l2t", l2t_pmi_scores), ("t2l", t2l_pmi_scores)):
        scores = scorer(model, ids, latents, draws, batch_size)
        result[name] = ranks_from_scores(scores) | {"num_draws": num_draws, "scores": scores}
    return result


def text_sample_metrics(texts: list[str], tokenizer, judge=None) -> dict[str, float]:
    """Judge perplexity (if a judge ``(model, tokenizer)`` is given), unigram entropy and distinct-n."""
    pieces = [tokenizer.tokenize(t) for t in texts]
    result = {
        "unigram_entropy_bits": unigram_entropy(pieces),
        "distinct_1": distinct_n(pieces, 1),
        "distinct_2": distinct_n(pieces, 2),
        "mean_words": float(np.mean([len(t.split()) for t in texts])) if texts else 0.0,
    }
    if judge is not None and any(t.strip() for t in texts):
        result["generative_perplexity"] = generative_perplexity(texts, *judge)
    return result


AR_TEMPERATURES = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
"""Temperatures at which the AR baseline is sampled to match another sample set's unigram entropy."""


def ar_samples_by_temperature(model, num: int, seed: int, tokenizer, judge=None) -> list[dict]:
    """An ``AutoregressiveLM``'s samples at each of ``AR_TEMPERATURES``, all drawn with one seed: the
    temperature, the texts and their ``text_sample_metrics`` (judged when a judge is given)."""
    rows = []
    for temperature in AR_TEMPERATURES:
        ids = model.sample_ids(num, temperature=temperature, generator=torch.Generator().manual_seed(seed))
        texts = model.decode(ids, tokenizer)
        rows.append(
            {"temperature": temperature, "texts": texts, **text_sample_metrics(texts, tokenizer, judge)}
        )
    return rows


def _training_curves(report: Report, run: RunDir) -> None:
    records = run.read_metrics()
    series = {}
    for key in ("train/loss", "train/text_nelbo_per_token", "train/latent_mse", "train/kl"):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            series[key] = tuple(zip(*points, strict=True))
    if series:
        report.figure(
            line_plot(series, "step", "value", "training losses", logy=True),
            "training_losses",
            "Training loss terms (log scale)",
        )
    evals = [(r["step"], r["eval/ppl_bound"]) for r in records if "eval/ppl_bound" in r]
    if evals:
        report.figure(
            line_plot(
                {"held-out ppl bound": tuple(zip(*evals, strict=True))}, "step", "perplexity bound", logy=True
            ),
            "eval_ppl_bound",
            "Held-out NELBO perplexity bound during training",
        )


def _cosine_figure(name: str, metrics: dict):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.hist(metrics["cosines"], bins=30, alpha=0.7, label="paired")
    ax.hist(metrics["cosines_random"], bins=30, alpha=0.7, label="random pairs")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("count")
    ax.set_title(name)
    ax.legend()
    return fig


def _batched(fn, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)])


def judge_description(cfg) -> dict:
    """What a generative perplexity was measured with: judge, sampling precision and steps."""
    s = cfg.sampling
    remasking = {} if s.remasking == "none" else {"remask_eta": s.remask_eta}
    if s.remasking == "loop":
        remasking |= {"loop_t_on": s.loop_t_on, "loop_t_off": s.loop_t_off, "loop_alpha_on": s.loop_alpha_on}
    return {
        "judge": cfg.eval.judge_model or "none",
        "sampling_precision": "float64" if s.float64 else "float32",
        "sampling_steps": s.num_steps,
        "joint_order": s.joint_order,
        "joint_guidance_scale": s.joint_guidance_scale,
        "unmask_order": s.unmask_order,
        "remasking": s.remasking,
        **remasking,
        "temperature": s.temperature,
        "top_k": s.top_k,
        "top_p": s.top_p,
    }


def run_evaluation(task, run_dir: str | Path, model: LatentDiffusionLM | None = None) -> dict:
    """Evaluate a finished run's saved model; writes ``eval/metrics.json``, ``eval/samples.jsonl`` and
    ``eval/report.md`` (through ``write_eval``).

    Args:
        task: the run's ``DiffusionTask`` (config = the run's config plus any overrides; its data).
        run_dir: the run directory.
        model: the model to evaluate (default: ``<run_dir>/model/`` via ``from_pretrained``).

    Returns:
        the metrics dict.
    """
    from latentlm.core.lifecycle import load_trained_model
    from latentlm.diffusion.data import load_sentence_encoder
    from latentlm.teachers import load_causal_lm, load_tokenizer

    cfg = task.cfg
    run = RunDir(run_dir, tensorboard=False)
    start = time.perf_counter()

    def say(phase: str) -> None:
        print(f"[diffusion eval {time.perf_counter() - start:7.1f}s] {phase}", flush=True)

    torch.manual_seed(cfg.eval.seed)
    model = model if model is not None else load_trained_model(run_dir, LatentDiffusionLM)
    model.eval()
    mcfg = model.config
    val = task.val_dataset
    have_latents = val.latents is not None
    texts_ref = val.texts()
    s = cfg.sampling
    g = torch.Generator().manual_seed(cfg.eval.seed)
    bs = cfg.eval.batch_size
    metrics: dict = {
        "stage": cfg.train.stage_schedule,
        "num_heldout": len(val),
        "sampling": judge_description(cfg),
        **task.vocab_report(),
    }
    say("held-out NELBO bounds")
    metrics["nelbo"] = heldout_nelbo(
        model, val, cfg.eval.nelbo_samples, cfg.eval.seed, bs, vae_latent_time=cfg.eval.vae_latent_time
    )
    first = next(_batches(val, min(16, len(val)), mcfg.latent_dim, "cpu"))
    checks = []
    if have_latents:
        checks += stage1_checklist(model, first)
    if model.latent_encoder is not None:
        checks += stage2_checklist(model, first)

    say("loading tokenizer, sentence encoder and judge")
    tokenizer = load_tokenizer(mcfg.tokenizer)
    encoder = load_sentence_encoder(mcfg.encoder) if have_latents else None
    judge = load_causal_lm(cfg.eval.judge_model) if cfg.eval.judge_model else None
    samples: list[dict] = []

    def encode(texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(encoder.encode(texts, convert_to_numpy=True, show_progress_bar=False))

    all_ids = torch.stack([val[i]["input_ids"] for i in range(len(val))])
    sampled_texts: dict[str, list[str]] = {}
    t2l = l2t = None
    if have_latents:
        true_norm = torch.stack([val[i]["latent"] for i in range(len(val))])
        true_raw = model.denormalize_latent(true_norm)
        say("T2L sampling")
        z_hat = _batched(
            lambda ids: sample_latent_from_text(
                model,
                ids,
                num_steps=s.num_steps,
                guidance_scale=s.t2l_guidance,
                prediction=mcfg.latent_prediction,
                generator=g,
            ),
            all_ids,
            bs,
        )
        z_raw = model.denormalize_latent(z_hat)
        t2l = latent_retrieval_metrics(z_raw, true_raw, cfg.eval.seed)
        norm_ratio = float((z_raw.norm(dim=-1) / true_raw.norm(dim=-1)).mean())
        checks.append(
            _check("latent norm retention (T2L)", 0.5 < norm_ratio < 2.0, f"|z_hat| / |z| = {norm_ratio:.4g}")
        )
        metrics["t2l"] = {k: v for k, v in t2l.items() if not isinstance(v, list)} | {
            "norm_ratio": norm_ratio,
            "guidance_scale": s.t2l_guidance,
        }
        # One DDIM step from t = 1: the model's estimate of E[z | text] (no sampling noise).
        z_mean = _batched(
            lambda ids: sample_latent_from_text(
                model,
                ids,
                num_steps=1,
                guidance_scale=s.t2l_guidance,
                prediction=mcfg.latent_prediction,
                generator=g,
            ),
            all_ids,
            bs,
        )
        t2l_mean = latent_retrieval_metrics(model.denormalize_latent(z_mean), true_raw, cfg.eval.seed)
        metrics["t2l_posterior_mean"] = {k: v for k, v in t2l_mean.items() if not isinstance(v, list)}
        say("L2T sampling")
        l2t_ids = _batched(
            lambda z: sample_text_from_latent(
                model, z, guidance_scale=s.guidance_scale, generator=g, **s.text_kwargs()
            ),
            true_norm,
            bs,
        )
        l2t_texts = model.decode(l2t_ids, tokenizer)
        l2t = latent_retrieval_metrics(encode(l2t_texts), true_raw, cfg.eval.seed)
        metrics["l2t"] = {k: v for k, v in l2t.items() if not isinstance(v, list)} | {
            "guidance_scale": s.guidance_scale
        }
        sampled_texts["l2t"] = l2t_texts
        if cfg.eval.likelihood_draws:
            say("likelihood retrieval (PMI from the bounds)")
            likelihood = likelihood_retrieval(
                model, all_ids, true_norm, cfg.eval.likelihood_draws, cfg.eval.seed, bs
            )
            for name, result in likelihood.items():
                metrics[f"{name}_likelihood"] = {k: v for k, v in result.items() if k != "scores"}
        samples += [
            {"kind": "l2t", "reference": r, "sample": t} for r, t in zip(texts_ref, l2t_texts, strict=True)
        ]
    if model.latent_encoder is not None:
        keep = all_ids != mcfg.pad_token_id
        with torch.no_grad():
            mu, _, _ = model.encode_text(all_ids, keep)
        recon_ids = sample_text_from_latent(model, mu, generator=g, **s.text_kwargs())
        recon_texts = model.decode(recon_ids, tokenizer)
        token_acc = float(((recon_ids == all_ids) & keep).sum() / keep.sum())
        detail = f"token accuracy {token_acc:.3g}"
        recon = {"token_accuracy": token_acc}
        if encoder is not None:
            rec = latent_retrieval_metrics(encode(recon_texts), encode(texts_ref), cfg.eval.seed)
            recon |= {k: v for k, v in rec.items() if not isinstance(v, list)}
            detail += (
                f", re-encoded cosine {rec['cosine']:.3g} vs random pairs {rec['cosine_random_pairs']:.3g}"
            )
        checks.append(
            _check(
                "reconstruction",
                # Better than chance: re-encoded reconstructions closer to their sources than random pairs.
                recon["cosine"] > recon["cosine_random_pairs"]
                if "cosine" in recon
                else token_acc > 1 / mcfg.vocab_size,
                detail,
            )
        )
        metrics["reconstruction"] = recon
        samples += [
            {"kind": "reconstruction", "reference": r, "sample": t}
            for r, t in zip(texts_ref, recon_texts, strict=True)
        ]
        say("prior sampling")
        prior_z = model.latent_prior.sample(cfg.eval.num_samples, g)
        uncond_ids = sample_text_from_latent(model, prior_z, generator=g, **s.text_kwargs())
        kind = "prior_l2t"
    else:
        say("joint sampling")
        uncond_ids, _ = sample_joint(
            model,
            cfg.eval.num_samples,
            prediction=mcfg.latent_prediction,
            generator=g,
            order=s.joint_order,
            guidance_scale=s.joint_guidance_scale,
            **s.text_kwargs(),
        )
        kind = "joint"
    sampled_texts[kind] = model.decode(uncond_ids, tokenizer)
    samples += [{"kind": kind, "sample": t} for t in sampled_texts[kind]]
    say("judging samples")
    metrics["samples"] = {
        name: text_sample_metrics(texts, tokenizer, judge) for name, texts in sampled_texts.items()
    }
    metrics["samples"]["reference"] = text_sample_metrics(texts_ref, tokenizer, judge)
    metrics["checklist"] = checks
    metrics["checks_passed"] = sum(c["passed"] for c in checks)
    metrics["checks_total"] = len(checks)
    metrics["nelbo_finite"] = all(math.isfinite(v) for v in metrics["nelbo"].values())

    report = Report(f"Diffusion evaluation: {run.path.name} ({cfg.train.stage_schedule})")
    report.text(
        f"{len(val)} held-out sentences; sampling with {s.num_steps} steps in "
        f"{metrics['sampling']['sampling_precision']}, temperature {s.temperature}, top-k {s.top_k}, "
        f"top-p {s.top_p}, CFG scale {s.guidance_scale} (T2L {s.t2l_guidance}); generative perplexity "
        f"judged by {metrics['sampling']['judge']}."
    )
    if "compact_vocab_size" in metrics:
        report.text(
            f"Compact vocabulary: {metrics['compact_vocab_size']} of the tokenizer's "
            f"{metrics['tokenizer_vocab_size']} ids; {metrics['heldout_tokens_mapped_to_unk']} of the "
            f"{metrics['heldout_tokens']} held-out tokens mapped to [UNK]."
        )
    if not metrics["nelbo_finite"]:
        report.text("**The held-out NELBO bound overflowed** (recorded as inf): the bound is vacuous.")
    report.heading("Checklist")
    report.table(checks)
    report.heading("Held-out NELBO bounds")
    report.table([metrics["nelbo"]])
    for key, title in (
        ("t2l", "Text -> latent"),
        ("l2t", "Latent -> text (re-encoded)"),
        ("t2l_likelihood", "Text -> latent, likelihood retrieval (PMI)"),
        ("l2t_likelihood", "Latent -> text, likelihood retrieval (PMI)"),
        ("reconstruction", "Stage II reconstruction"),
    ):
        if key in metrics:
            report.heading(title)
            report.table([metrics[key]])
    if t2l is not None:
        report.figure(
            _cosine_figure("T2L: sampled vs true latent", t2l), "t2l_cosine", "T2L cosine, paired vs random"
        )
        report.figure(
            _cosine_figure("L2T: re-encoded text vs conditioning latent", l2t),
            "l2t_cosine",
            "L2T cosine, paired vs random pairs",
        )
    report.heading("Sample statistics")
    report.table([{"samples": name, **vals} for name, vals in metrics["samples"].items()])
    report.heading("Examples")
    report.table(samples[:6] + [r for r in samples if r["kind"] in ("joint", "prior_l2t")][:6])
    _training_curves(report, run)
    folder = write_eval(run_dir, metrics, report)
    atomic_write_text(folder / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in samples))
    return metrics
