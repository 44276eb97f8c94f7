"""Likelihood-based retrieval: PMI score matrices against a pair-by-pair computation, ranks on a hand-made
matrix, the ELBO weight of the latent term, and an oracle denoiser that must retrieve every pair."""

import math

import pytest
import torch
from torch import nn

from latentlm.diffusion.config import ModelConfig
from latentlm.diffusion.evaluate import (
    l2t_pmi_scores,
    likelihood_retrieval,
    ranks_from_scores,
    retrieval_draws,
    t2l_pmi_scores,
)
from latentlm.diffusion.model import DenoiserOutput, LatentDiffusionLM
from latentlm.diffusion.objectives import latent_elbo_term, predicted_clean_latent, subs_target_log_probs
from latentlm.diffusion.schedules import CosineGaussianSchedule

V, MASK, T, D_LATENT, N = 11, 10, 6, 5, 4


def _random_model() -> LatentDiffusionLM:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=V,
        mask_token_id=MASK,
        latent_dim=D_LATENT,
        seq_len=T,
        d_model=16,
        num_layers=1,
        num_heads=2,
        num_latent_tokens=2,
        decay_lora_rank=4,
        wkv_chunk_size=4,
        pad_token_id=0,
        sep_token_id=1,
    )
    model = LatentDiffusionLM(cfg).double().eval()
    with torch.no_grad():  # leave adaLN-Zero's identity start so that both outputs depend on both inputs
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _pairs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, MASK, (N, T), generator=g)
    ids[0, 4:] = 0  # padding, which the NELBO covers too
    return ids, torch.randn(N, D_LATENT, generator=g, dtype=torch.float64)


def _text_nelbo_by_hand(model, x0, masked, t, z, t_latent) -> float:
    """One sentence: ``(1/t) * sum over masked positions of -log p(x0 | x_t)`` from the full logits."""
    x_t = x0.masked_fill(masked, MASK)
    hidden = model.rwkv(x_t[None], z[None], t.view(1), t_latent.view(1)).text_hidden[0]  # (T, D)
    logits = model.rwkv.text_logits(hidden)  # (T, V)
    logits[:, MASK] = -math.inf
    nll = -logits.log_softmax(-1).gather(-1, x0[:, None])[:, 0]
    return float(nll[masked].sum()) / float(t)


def _latent_term_by_hand(model, x, t_text, z0, t, eps) -> float:
    """One latent: ``0.5 * (-d log SNR/dt) * alpha^2 * ||v - v_hat||^2`` (v-prediction)."""
    alpha, sigma = model.latent_schedule.alpha_sigma(t)
    z_t = alpha * z0 + sigma * eps
    v_hat = model.rwkv(x[None], z_t[None], t_text.view(1), t.view(1)).latent_output[0]
    v = alpha * eps - sigma * z0
    weight = model.latent_schedule.neg_log_snr_derivative(t) * alpha**2
    return float(0.5 * weight * (v - v_hat).pow(2).sum())


def test_score_matrices_equal_the_pair_by_pair_computation_with_the_same_draws():
    model = _random_model()
    ids, latents = _pairs()
    K = 3
    draws = retrieval_draws(model, ids, K, seed=5)
    # batch_size 5 does not divide N or N^2: chunks straddle draws and queries
    l2t = l2t_pmi_scores(model, ids, latents, draws, batch_size=5)
    t2l = t2l_pmi_scores(model, ids, latents, draws, batch_size=5)
    one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    null_text = torch.full((T,), MASK)
    expected_l2t = torch.zeros(N, N, dtype=torch.float64)
    expected_t2l = torch.zeros(N, N, dtype=torch.float64)
    with torch.no_grad():
        for k in range(K):
            for j in range(N):
                mask, tt = draws.masked[k, j], draws.text_times[k, j].double()
                null_z = draws.null_latents[k, j].double()
                text_null = _text_nelbo_by_hand(model, ids[j], mask, tt, null_z, one)
                tl, eps = draws.latent_times[k, j].double(), draws.latent_noise[k, j].double()
                latent_null = _latent_term_by_hand(model, null_text, one, latents[j], tl, eps)
                for i in range(N):
                    text_cond = _text_nelbo_by_hand(model, ids[j], mask, tt, latents[i], zero)
                    latent_cond = _latent_term_by_hand(model, ids[i], zero, latents[j], tl, eps)
                    expected_l2t[i, j] += (text_null - text_cond) / K
                    expected_t2l[i, j] += (latent_null - latent_cond) / K
    assert draws.masked.any() and not draws.masked.all()
    assert expected_l2t.abs().min() > 1e-3 and expected_t2l.abs().min() > 1e-6  # the condition matters
    torch.testing.assert_close(l2t, expected_l2t, rtol=0, atol=1e-5)
    torch.testing.assert_close(t2l, expected_t2l, rtol=0, atol=1e-5)


def test_draws_are_stratified_per_candidate_and_reproducible():
    model = _random_model()
    ids, _ = _pairs()
    a, b = retrieval_draws(model, ids, 4, seed=3), retrieval_draws(model, ids, 4, seed=3)
    assert torch.equal(a.masked, b.masked) and torch.equal(a.latent_noise, b.latent_noise)
    for times in (a.text_times, a.latent_times):  # (K, N): one time per quarter of [0, 1] per candidate
        quarters = (times * 4).floor().clamp(max=3).sort(0).values
        assert torch.equal(quarters, torch.arange(4.0).unsqueeze(1).expand(4, N))


def test_ranks_from_a_hand_made_matrix():
    scores = torch.tensor([[5.0, 1.0, 2.0], [3.0, 3.0, 0.0], [0.0, 9.0, 1.0]])
    # row 0: true pair best (rank 1); row 1: a tie counts against it (rank 2); row 2: beaten once (rank 2)
    assert ranks_from_scores(scores) == {
        "recall_at_1": pytest.approx(1 / 3),
        "mean_rank": pytest.approx(5 / 3),
        "median_rank": 2.0,
        "num_candidates": 3,
    }
    with_nan = torch.tensor([[math.nan, 0.0], [1.0, 2.0]])  # a NaN true score ranks last
    assert ranks_from_scores(with_nan)["mean_rank"] == pytest.approx(1.5)


def test_latent_elbo_term_is_vdm_weight_on_the_clean_latent_error():
    schedule = CosineGaussianSchedule()
    t = torch.tensor([0.01, 0.2, 0.5, 0.9, 0.999], dtype=torch.float64, requires_grad=True)
    alpha, sigma = schedule.alpha_sigma(t)
    log_snr = 2 * (alpha / sigma).log()
    (grad,) = torch.autograd.grad(log_snr.sum(), t)
    t = t.detach()
    torch.testing.assert_close(schedule.neg_log_snr_derivative(t), -grad)
    g = torch.Generator().manual_seed(0)
    z0, eps, out = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    alpha, sigma = schedule.alpha_sigma(t)
    z_t = alpha[:, None] * z0 + sigma[:, None] * eps
    neg_snr_derivative = -grad * (alpha / sigma) ** 2  # -d SNR/dt = -d log SNR/dt * SNR
    for prediction in ("v", "eps"):
        z0_hat, _ = predicted_clean_latent(out, z_t, t, schedule, prediction)
        expected = 0.5 * neg_snr_derivative * (z0 - z0_hat).pow(2).sum(-1)
        torch.testing.assert_close(latent_elbo_term(out, z0, eps, t, schedule, prediction), expected)


class _OracleDenoiser(nn.Module):
    """Knows the pairing: sentence j is token j + 2 repeated and its latent is 3 e_j.  Text: with a clean
    latent, logits 3 on the latent's token (uniform with the null latent); latent: with clean text, the
    exact v of the text's latent (the v of latent 0 with the null text)."""

    def __init__(self, schedule: CosineGaussianSchedule) -> None:
        super().__init__()
        self.schedule = schedule
        self.embedding = nn.Parameter(torch.zeros(V, N))
        with torch.no_grad():
            self.embedding[2 : 2 + N] = torch.eye(N)

    def forward(self, x_t, z_t, t_text, t_latent):
        clean_latent = (t_latent == 0).to(z_t.dtype)[:, None, None]
        text_hidden = clean_latent * z_t[:, None, :].expand(-1, x_t.shape[1], -1)  # (B, T, N)
        clean_text = (t_text == 0).to(z_t.dtype)[:, None]
        first = x_t[:, 0].clamp(2, 1 + N) - 2
        z0_hat = clean_text * 3.0 * torch.eye(N, dtype=z_t.dtype)[first]  # (B, N)
        alpha, sigma = (s[:, None] for s in self.schedule.alpha_sigma(t_latent))
        return DenoiserOutput(text_hidden, (alpha * z_t - z0_hat) / sigma)

    def text_logits(self, text_hidden, float64=False):
        return text_hidden @ self.embedding.T

    def masked_token_nll(self, text_hidden, targets):
        return -subs_target_log_probs(self.text_logits(text_hidden), targets, MASK)


def test_an_oracle_of_the_pairing_retrieves_every_pair():
    cfg = ModelConfig(vocab_size=V, mask_token_id=MASK, latent_dim=N, seq_len=T, d_model=8, num_layers=1)
    model = LatentDiffusionLM(cfg).eval()
    model.rwkv = _OracleDenoiser(model.latent_schedule)
    ids = (torch.arange(N) + 2)[:, None].expand(N, T).contiguous()
    latents = 3.0 * torch.eye(N)
    result = likelihood_retrieval(model, ids, latents, num_draws=4, seed=0, batch_size=7)
    for name in ("l2t", "t2l"):
        assert result[name]["recall_at_1"] == 1.0 and result[name]["mean_rank"] == 1.0
        scores = result[name]["scores"]
        assert (scores.diagonal() > 0).all()  # PMI > 0 on the true pairs, < 0 elsewhere
        assert (scores.masked_fill(torch.eye(N, dtype=torch.bool), -1.0) < 0).all()
