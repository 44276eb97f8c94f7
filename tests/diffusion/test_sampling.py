"""The three diffusion samplers (token draws: tests/core/test_sampling.py)."""

import math

import pytest
import torch

from latentlm.core.sampling import filter_logits, sample_categorical
from latentlm.diffusion.config import ModelConfig
from latentlm.diffusion.model import LatentDiffusionLM
from latentlm.diffusion.sampling import (
    _step_positions,
    sample_joint,
    sample_latent_from_text,
    sample_text_from_latent,
)
from latentlm.diffusion.schedules import LogLinearMaskingSchedule, RemaskingSchedule


def _tiny_model():
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=13,
        mask_token_id=12,
        latent_dim=5,
        seq_len=7,
        d_model=16,
        num_layers=1,
        num_heads=2,
        wkv_chunk_size=4,
    )
    model = LatentDiffusionLM(cfg).eval()
    with torch.no_grad():  # leave adaLN-Zero's identity start so that outputs depend on inputs
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_samplers_shapes_no_mask_and_reproducible():
    model = _tiny_model()
    latent = torch.randn(3, 5)
    ids = sample_text_from_latent(
        model, latent, num_steps=6, top_k=4, generator=torch.Generator().manual_seed(0)
    )
    assert ids.shape == (3, 7) and not (ids == 12).any()
    again = sample_text_from_latent(
        model, latent, num_steps=6, top_k=4, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(ids, again)
    guided = sample_text_from_latent(
        model, latent, num_steps=6, guidance_scale=2.0, generator=torch.Generator().manual_seed(0)
    )
    assert guided.shape == (3, 7) and not (guided == 12).any()
    z = sample_latent_from_text(
        model, ids, latent_dim=5, num_steps=5, guidance_scale=1.5, generator=torch.Generator().manual_seed(0)
    )
    assert z.shape == (3, 5) and torch.isfinite(z).all()
    text, z_joint = sample_joint(model, 2, num_steps=4, generator=torch.Generator().manual_seed(0))
    assert text.shape == (2, 7) and z_joint.shape == (2, 5) and not (text == 12).any()
    with pytest.raises(ValueError, match="latent_dim"):
        sample_latent_from_text(model, ids, latent_dim=9)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_latent_first_joint_sample_is_the_latent_marginal_then_l2t(guidance):
    """``order="latent_first"`` == the unconditional latent (T2L at guidance 0: the null-text branch
    alone, from the same noise) followed by L2T of that latent (with the same guidance) with the
    generator continuing."""
    model = _tiny_model()
    ids, z = sample_joint(
        model,
        3,
        num_steps=5,
        generator=torch.Generator().manual_seed(4),
        order="latent_first",
        guidance_scale=guidance,
    )
    g = torch.Generator().manual_seed(4)
    any_text = torch.zeros(3, 7, dtype=torch.long)
    z_marginal = sample_latent_from_text(model, any_text, num_steps=5, guidance_scale=0.0, generator=g)
    torch.testing.assert_close(z, z_marginal, rtol=0, atol=1e-6)
    expected = sample_text_from_latent(model, z_marginal, num_steps=5, guidance_scale=guidance, generator=g)
    assert torch.equal(ids, expected)
    with pytest.raises(ValueError, match="order"):
        sample_joint(model, 1, order="text_first")
    with pytest.raises(ValueError, match="latent_first' only"):
        sample_joint(model, 1, guidance_scale=2.0)


def test_single_step_text_sampling_is_a_full_draw():
    """With one step every position is drawn from p(x0 | all masked): check token frequencies."""
    model = _tiny_model()
    latent = torch.zeros(1, 5)
    n = 4000
    ids = sample_text_from_latent(
        model, latent.expand(n, -1), num_steps=1, top_p=0.8, generator=torch.Generator().manual_seed(1)
    )
    den = model.rwkv
    x = torch.full((1, 7), 12)
    logits = den.text_logits(
        den(x, latent * math.cos(0.5 * math.pi * 1e-4), torch.ones(1), torch.zeros(1)).text_hidden
    )
    logits = logits.double()
    logits[..., 12] = float("-inf")
    allowed = torch.isfinite(filter_logits(logits[0], top_p=0.8))
    for pos in range(7):
        assert allowed[pos, ids[:, pos]].all()


class _LogitsAreHidden(torch.nn.Module):
    """A stand-in denoiser head whose hidden states are already vocabulary logits."""

    def __init__(self, mask_id):
        super().__init__()
        self.config = type("Config", (), {"mask_token_id": mask_id})()

    def text_logits(self, hidden, float64=True):
        return hidden.double() if float64 else hidden.float()


def test_confidence_order_reveals_the_most_probable_draws():
    """``unmask_order="confidence"``: per row, as many positions as ``chosen`` holds are revealed,
    the masked ones whose drawn token has the highest (tempered, top-k) probability; brute force."""
    from latentlm.diffusion.sampling import _fill_positions

    mask_id, V = 5, 6
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 6, V, generator=gen) * 3  # (B, T, V) logits
    x_t = torch.tensor([[mask_id, 1, mask_id, mask_id, mask_id, 2], [mask_id] * 6])
    chosen = torch.tensor(
        [[True, False, False, False, False, False], [True, True, False, True, False, False]]
    )
    head = _LogitsAreHidden(mask_id)
    out = _fill_positions(
        head,
        x_t,
        chosen,
        hidden,
        None,
        1.0,
        torch.Generator().manual_seed(9),
        temperature=0.7,
        top_k=3,
        unmask_order="confidence",
    )
    masked = x_t == mask_id
    logits = hidden[masked].double()
    logits[:, mask_id] = float("-inf")
    draws = sample_categorical(logits, 0.7, 3, 1.0, torch.Generator().manual_seed(9))
    flat = iter(zip(draws.tolist(), filter_logits(logits / 0.7, 3).softmax(-1).tolist(), strict=True))
    for b in range(2):
        scored = [(probs[tok], pos, tok) for pos in range(6) if masked[b, pos] for tok, probs in [next(flat)]]
        keep = sorted(scored, reverse=True)[: int(chosen[b].sum())]
        expected = x_t[b].clone()
        for _, pos, tok in keep:
            expected[pos] = tok
        assert torch.equal(out[b], expected)
    assert (out != mask_id).sum(1).tolist() == [3, 3]  # row 0 had 2 revealed already, + 1


def test_confidence_order_samples_whole_sequences():
    model = _tiny_model()
    ids = sample_text_from_latent(
        model,
        torch.randn(3, 5),
        num_steps=4,
        generator=torch.Generator().manual_seed(0),
        unmask_order="confidence",
    )
    assert ids.shape == (3, 7) and not (ids == 12).any()
    text, _ = sample_joint(
        model, 2, num_steps=3, generator=torch.Generator().manual_seed(0), unmask_order="confidence"
    )
    assert not (text == 12).any()
    with pytest.raises(ValueError, match="unmask_order"):
        sample_text_from_latent(model, torch.randn(1, 5), num_steps=2, unmask_order="left_to_right")


REMASKERS = [
    RemaskingSchedule(),
    RemaskingSchedule("cap", eta=0.05),
    RemaskingSchedule("cap", eta=1.0),
    RemaskingSchedule("loop", eta=0.1, t_on=0.6, t_off=0.1, alpha_on=0.8),
]


@pytest.mark.parametrize("schedule", REMASKERS, ids=["none", "cap", "cap_1", "loop"])
def test_remasking_keeps_the_forward_marginals(schedule):
    """Closed form: with P(masked at t) = 1 - alpha_t, one step gives
    P(masked at s) = (1 - alpha_t)(1 - reveal) + alpha_t sigma = 1 - alpha_s on every step of the grid,
    every probability lies in [0, 1], and nothing is masked at the end."""
    grid = torch.linspace(1.0, 0.0, 41).tolist()
    masked = 1.0 - schedule.alpha(grid[0])
    for t, s in zip(grid[:-1], grid[1:], strict=True):
        time, reveal, sigma = schedule.step(t, s)
        assert 0.0 <= reveal <= 1.0 and 0.0 <= sigma <= 1.0 and 0.0 <= time <= 1.0
        masked = masked * (1.0 - reveal) + (1.0 - masked) * sigma
        assert masked == pytest.approx(1.0 - schedule.alpha(s), abs=1e-6)
    assert masked == pytest.approx(0.0, abs=1e-12)
    if schedule.strategy == "none":  # MDLM's step and time
        alpha = LogLinearMaskingSchedule().alpha
        t, s = 0.5, 0.45
        assert schedule.step(t, s) == (
            t,
            (float(alpha(torch.tensor(s))) - float(alpha(torch.tensor(t))))
            / (1.0 - float(alpha(torch.tensor(t)))),
            0.0,
        )
    if schedule.strategy == "loop":  # during the loop the denoiser sees the mask rate 1 - alpha_on
        time, reveal, sigma = schedule.step(0.4, 0.38)
        assert sigma == 0.1 and time == pytest.approx(0.2 / (1 - 1e-3))
        assert reveal == pytest.approx(0.1 * 0.8 / 0.2)


def test_remasking_steps_match_the_schedule_by_monte_carlo():
    """``_step_positions`` over 20,000 positions: the masked fraction follows 1 - alpha(s) (loop),
    and revealed tokens are masked again only during the loop."""
    schedule = RemaskingSchedule("loop", eta=0.1, t_on=0.6, t_off=0.1, alpha_on=0.8)
    gen = torch.Generator().manual_seed(0)
    x = torch.full((2000, 10), 9)
    grid = torch.linspace(1.0, 0.0, 21).tolist()
    for t, s in zip(grid[:-1], grid[1:], strict=True):
        _, reveal, remask = _step_positions(x, 9, t, s, schedule, gen)
        assert not (reveal & remask).any()
        if not schedule.t_off < t <= schedule.t_on:
            assert not remask.any()
        x = x.masked_fill(reveal, 0).masked_fill(remask, 9)
        assert (x == 9).float().mean().item() == pytest.approx(1.0 - schedule.alpha(s), abs=0.012)
    assert not (x == 9).any()


def test_samplers_with_remasking_end_unmasked_and_none_is_mdlm():
    model = _tiny_model()
    latent = torch.randn(3, 5)
    default = sample_text_from_latent(model, latent, num_steps=6, generator=torch.Generator().manual_seed(0))
    none = sample_text_from_latent(
        model, latent, num_steps=6, generator=torch.Generator().manual_seed(0), remasking=RemaskingSchedule()
    )
    assert torch.equal(default, none)
    for schedule in REMASKERS[1:]:
        ids = sample_text_from_latent(
            model, latent, num_steps=12, generator=torch.Generator().manual_seed(0), remasking=schedule
        )
        text, z = sample_joint(
            model, 3, num_steps=12, generator=torch.Generator().manual_seed(0), remasking=schedule
        )
        assert not (ids == 12).any() and not (text == 12).any() and torch.isfinite(z).all()
