"""Sampling from the joint denoiser (seed 002, "Sampling Functions").

* ``sample_text_from_latent`` (L2T): MDLM ancestral sampling with SUBS — start fully masked, and at
  each step ``t -> s`` unmask every still-masked position with probability
  ``(alpha_s - alpha_t) / (1 - alpha_t)``, drawing its token from p_theta(x_0 | x_t) with temperature,
  top-k and top-p; unmasked tokens never change.  The coins are flipped first, so vocabulary logits
  and draws are computed only where a token is revealed in that step.  Categorical draws use the
  Gumbel-max trick; with ``float64=True`` (the default, and what ``eval`` uses) the logits, the softmax
  of top-p and the Gumbel noise are float64 (float32 noise biases low-probability tokens);
  ``float64=False`` samples in float32, as most diffusion LM code does, for comparisons.
  ``unmask_order="confidence"`` reveals as many positions per step, but those whose drawn token is
  most probable (MaskGIT / LLaDA's low-confidence remasking) instead of random ones.
  ``remasking`` (a ``RemaskingSchedule``, ReMDM's cap or loop) also masks revealed tokens again so
  that later steps redraw them with more context; the per-step mask rate keeps the forward marginals.
* ``sample_latent_from_text`` (T2L): deterministic DDIM on the cosine schedule with classifier-free
  guidance ``pred = uncond + s * (cond - uncond)``, the null condition being fully masked text.
* ``sample_joint``: both modalities from noise, on one time grid (``order="together"``) or the latent
  first and then the text given it (``"latent_first"``).

All samplers take the ``LatentDiffusionLM`` (or its ``rwkv`` denoiser) and return latents in the
model's (standardised) latent space.
"""

from __future__ import annotations

import torch
from torch import nn

from latentlm.core.sampling import filter_logits, sample_categorical
from latentlm.diffusion.config import JOINT_ORDERS, UNMASK_ORDERS
from latentlm.diffusion.objectives import predicted_clean_latent
from latentlm.diffusion.schedules import CosineGaussianSchedule, RemaskingSchedule

__all__ = [
    "sample_text_from_latent",
    "sample_latent_from_text",
    "sample_joint",
    "decode_samples",
]


def _denoiser(model: nn.Module) -> nn.Module:
    return model.rwkv if hasattr(model, "rwkv") else model


def _time_grid(num_steps: int, device) -> torch.Tensor:
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return torch.linspace(1.0, 0.0, num_steps + 1, device=device)


def _step_positions(
    x_t: torch.Tensor, mask_id: int, t: float, s: float, schedule: RemaskingSchedule, generator
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """``(denoiser time, positions to reveal, positions to mask again)`` of the step t -> s: one coin
    per position (the two sets are disjoint), so ``remasking="none"`` draws what MDLM's sampler draws."""
    time, reveal_prob, remask_prob = schedule.step(t, s)
    coin = torch.rand(x_t.shape, generator=generator, dtype=torch.float64).to(x_t.device)  # (B, T)
    masked = x_t == mask_id
    return time, masked & (coin < reveal_prob), ~masked & (coin < remask_prob)


def _fill_positions(
    denoiser: nn.Module,
    x_t: torch.Tensor,
    chosen: torch.Tensor,
    hidden: torch.Tensor,
    uncond_hidden: torch.Tensor | None,
    guidance_scale: float,
    generator: torch.Generator | None,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    float64: bool = True,
    unmask_order: str = "random",
) -> torch.Tensor:
    """Reveal tokens drawn from SUBS p(x_0 | x_t) (mask never drawn; CFG on the logits).

    ``unmask_order="random"``: the ``chosen`` positions are revealed, and only they get vocabulary
    logits, which keeps sampling cheap for large vocabularies.  ``"confidence"``: a token is drawn at
    every masked position, and in each row as many as ``chosen`` holds are revealed, those whose drawn
    token has the highest probability under the sampling distribution (MaskGIT / LLaDA's
    low-confidence remasking; the count per step keeps the schedule's distribution).
    """
    if unmask_order not in UNMASK_ORDERS:
        raise ValueError(f"unmask_order: must be one of {UNMASK_ORDERS}, got {unmask_order!r}")
    if not chosen.any():
        return x_t
    mask_id = denoiser.config.mask_token_id
    candidates = chosen if unmask_order == "random" else x_t == mask_id
    logits = denoiser.text_logits(hidden[candidates], float64=float64)  # (N, V)
    if uncond_hidden is not None:
        logits = _guided(
            logits, denoiser.text_logits(uncond_hidden[candidates], float64=float64), guidance_scale
        )
    logits[:, mask_id] = float("-inf")
    draws = sample_categorical(logits, temperature, top_k, top_p, generator, float64)  # (N,)
    x_t = x_t.clone()
    if unmask_order == "random":
        x_t[chosen] = draws
        return x_t
    dtype = torch.float64 if float64 else torch.float32
    log_probs = filter_logits(logits.to(dtype) / temperature, top_k, top_p).log_softmax(-1)
    confidence = torch.full(x_t.shape, float("-inf"), dtype=dtype, device=x_t.device)
    confidence[candidates] = log_probs.gather(-1, draws.unsqueeze(-1)).squeeze(-1)
    rank = confidence.argsort(dim=1, descending=True).argsort(dim=1)  # (B, T) 0 = most confident
    reveal = rank < chosen.sum(dim=1, keepdim=True)
    proposal = x_t.clone()
    proposal[candidates] = draws
    x_t[reveal] = proposal[reveal]
    return x_t


def _draw_settings(temperature: float, top_k: int, top_p: float, float64: bool, unmask_order: str) -> dict:
    """The token-draw keywords the text samplers pass on to ``_fill_positions`` unchanged."""
    return {
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "float64": float64,
        "unmask_order": unmask_order,
    }


def _ddim_step(
    output: torch.Tensor,
    z_t: torch.Tensor,
    t: float,
    s: float,
    schedule: CosineGaussianSchedule,
    prediction: str,
) -> torch.Tensor:
    """Deterministic DDIM update z_t -> z_s from a v/eps prediction."""
    B = z_t.shape[0]
    t_vec = torch.full((B,), t, device=z_t.device)
    z0_hat, eps_hat = predicted_clean_latent(output, z_t, t_vec, schedule, prediction)
    alpha_s, sigma_s = schedule.alpha_sigma(torch.full((B, 1), s, device=z_t.device))
    if s == 0.0:
        return z0_hat
    return alpha_s * z0_hat + sigma_s * eps_hat


def _guided(cond: torch.Tensor, uncond: torch.Tensor | None, scale: float) -> torch.Tensor:
    return cond if uncond is None else uncond + scale * (cond - uncond)


@torch.no_grad()
def sample_text_from_latent(
    model: nn.Module,
    latent: torch.Tensor,
    seq_len: int | None = None,
    num_steps: int = 64,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    float64: bool = True,
    unmask_order: str = "random",
    remasking: RemaskingSchedule | None = None,
) -> torch.Tensor:
    """L2T: text ids conditioned on clean latents.

    Args:
        model: ``LatentDiffusionLM`` or ``TwoStreamDenoiser``.
        latent: (B, d) standardised latents (a (B, 1, d) tensor is accepted too).
        seq_len: tokens to generate (default: the model's ``seq_len``).
        num_steps: denoising steps.
        temperature, top_k, top_p: token sampling controls.
        float64: logits and categorical draws in float64 (see the module docstring).
        unmask_order: random | confidence: which masked positions each step reveals (``_fill_positions``).
        remasking: the reverse process step by step (default: MDLM's, no remasking).
        guidance_scale: CFG scale on the logits (1: conditional only; the null condition is a
            fully noised latent).
        generator: torch generator for reproducible samples.

    Returns:
        (B, seq_len) token ids without [MASK].
    """
    denoiser = _denoiser(model)
    cfg = denoiser.config
    latent = latent.reshape(latent.shape[0], -1)
    if latent.shape[1] != cfg.latent_dim:
        raise ValueError(f"latent has size {latent.shape[1]}, the model expects {cfg.latent_dim}")
    B, device = latent.shape[0], latent.device
    seq_len = seq_len or cfg.seq_len
    remasking = remasking or RemaskingSchedule()
    latent_schedule = CosineGaussianSchedule()
    x_t = torch.full((B, seq_len), cfg.mask_token_id, dtype=torch.long, device=device)
    zeros, ones = torch.zeros(B, device=device), torch.ones(B, device=device)
    null_latent = torch.randn(latent.shape, generator=generator).to(device) if guidance_scale != 1.0 else None
    draw = _draw_settings(temperature, top_k, top_p, float64, unmask_order)
    z_clean = latent_schedule.alpha_sigma(zeros)[0].unsqueeze(-1) * latent
    grid = _time_grid(num_steps, device)
    for t, s in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        time, chosen, remask = _step_positions(x_t, cfg.mask_token_id, t, s, remasking, generator)
        if chosen.any():
            t_vec = torch.full((B,), time, device=device)
            hidden = denoiser(x_t, z_clean, t_vec, zeros).text_hidden
            uncond = denoiser(x_t, null_latent, t_vec, ones).text_hidden if null_latent is not None else None
            x_t = _fill_positions(denoiser, x_t, chosen, hidden, uncond, guidance_scale, generator, **draw)
        x_t = x_t.masked_fill(remask, cfg.mask_token_id)
    return x_t


@torch.no_grad()
def sample_latent_from_text(
    model: nn.Module,
    input_ids: torch.Tensor,
    latent_dim: int | None = None,
    num_steps: int = 64,
    guidance_scale: float = 1.0,
    prediction: str = "v",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """T2L: latents conditioned on clean text, by DDIM with classifier-free guidance.

    Args:
        model: ``LatentDiffusionLM`` or ``TwoStreamDenoiser``.
        input_ids: (B, T) clean ids (a 1-D tensor is treated as one example).
        latent_dim: optional check against the model's latent size.
        num_steps: DDIM steps.
        guidance_scale: CFG scale (1: conditional only; the null condition is fully masked text).
        prediction: the model's latent target, ``v`` or ``eps``.
        generator: torch generator.

    Returns:
        (B, d) standardised latents.
    """
    denoiser = _denoiser(model)
    cfg = denoiser.config
    if latent_dim is not None and latent_dim != cfg.latent_dim:
        raise ValueError(f"latent_dim={latent_dim} but the model's latent size is {cfg.latent_dim}")
    input_ids = input_ids.view(1, -1) if input_ids.dim() == 1 else input_ids
    B, device = input_ids.shape[0], input_ids.device
    schedule = CosineGaussianSchedule()
    z_t = torch.randn(B, cfg.latent_dim, generator=generator).to(device)
    zeros, ones = torch.zeros(B, device=device), torch.ones(B, device=device)
    null_text = torch.full_like(input_ids, cfg.mask_token_id)
    grid = _time_grid(num_steps, device)
    for t, s in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        t_vec = torch.full((B,), t, device=device)
        cond = denoiser(input_ids, z_t, zeros, t_vec).latent_output
        uncond = denoiser(null_text, z_t, ones, t_vec).latent_output if guidance_scale != 1.0 else None
        z_t = _ddim_step(_guided(cond, uncond, guidance_scale), z_t, t, s, schedule, prediction)
    return z_t


@torch.no_grad()
def sample_joint(
    model: nn.Module,
    batch_size: int,
    seq_len: int | None = None,
    latent_dim: int | None = None,
    num_steps: int = 64,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    prediction: str = "v",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    float64: bool = True,
    order: str = "together",
    guidance_scale: float = 1.0,
    unmask_order: str = "random",
    remasking: RemaskingSchedule | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unconditional joint generation from pure noise.

    ``order="together"``: text and latent are denoised at the same time t.  ``"latent_first"``: ancestral
    sampling through the other corner of the joint model's (t_text, t_latent) square, as UniDiffuser
    does: the latent is denoised alone with the text fully masked (t_text = 1, the model's latent
    marginal, which condition dropout trains), then the text is sampled given that clean latent
    (``sample_text_from_latent``, with ``guidance_scale``; 1 = none, a plain sample of the joint).  Both
    draw from the same joint model; they differ in how early the text is committed while the latent is
    still noisy.

    Returns:
        (ids (B, seq_len), latents (B, d)).
    """
    if order not in JOINT_ORDERS:
        raise ValueError(f"sample_joint: order must be one of {JOINT_ORDERS}, got {order!r}")
    if order == "together" and guidance_scale != 1.0:
        raise ValueError("sample_joint: guidance applies to order='latent_first' only")
    denoiser = _denoiser(model)
    cfg = denoiser.config
    if latent_dim is not None and latent_dim != cfg.latent_dim:
        raise ValueError(f"latent_dim={latent_dim} but the model's latent size is {cfg.latent_dim}")
    seq_len = seq_len or cfg.seq_len
    remasking = remasking or RemaskingSchedule()
    latent_schedule = CosineGaussianSchedule()
    x_t = torch.full((batch_size, seq_len), cfg.mask_token_id, dtype=torch.long, device=device)
    z_t = torch.randn(batch_size, cfg.latent_dim, generator=generator).to(device)
    grid = _time_grid(num_steps, device)
    draw = _draw_settings(temperature, top_k, top_p, float64, unmask_order)
    if order == "latent_first":
        ones = torch.ones(batch_size, device=device)
        for t, s in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
            out = denoiser(x_t, z_t, ones, torch.full((batch_size,), t, device=device))
            z_t = _ddim_step(out.latent_output, z_t, t, s, latent_schedule, prediction)
        ids = sample_text_from_latent(
            model,
            z_t,
            seq_len,
            num_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            remasking=remasking,
            **draw,
        )
        return ids, z_t
    for t, s in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        time, chosen, remask = _step_positions(x_t, cfg.mask_token_id, t, s, remasking, generator)
        t_vec = torch.full((batch_size,), t, device=device)
        out = denoiser(x_t, z_t, torch.full_like(t_vec, time), t_vec)
        x_t = _fill_positions(denoiser, x_t, chosen, out.text_hidden, None, 1.0, generator, **draw)
        x_t = x_t.masked_fill(remask, cfg.mask_token_id)
        z_t = _ddim_step(out.latent_output, z_t, t, s, latent_schedule, prediction)
    return x_t, z_t


def decode_samples(tokenizer, ids: torch.Tensor, sep_token_id: int, pad_token_id: int) -> list[str]:
    """Texts of sampled id rows, cut at the first [SEP] or [PAD]."""
    texts = []
    for row in ids.tolist():
        end = next((i for i, tok in enumerate(row) if tok in (sep_token_id, pad_token_id)), len(row))
        texts.append(tokenizer.decode(row[:end], skip_special_tokens=True).strip())
    return texts
