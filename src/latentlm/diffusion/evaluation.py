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

Results go to ``<run_dir>/eval_metrics.json``, ``<run_dir>/samples.jsonl`` and ``report.md`` with plots.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latentlm.core.checkpoint import atomic_write_text
from latentlm.core.engine import load_model_weights
from latentlm.core.report import Report, line_plot
from latentlm.core.run import RunDir
from latentlm.diffusion.data import DirectFileDataset, collate_batch, denormalize_latent
from latentlm.diffusion.objectives import apply_masking, gaussian_latent_loss, masked_nelbo, noise_latent
from latentlm.diffusion.sampling import (
    decode_samples,
    sample_joint,
    sample_latent_from_text,
    sample_text_from_latent,
)
from latentlm.diffusion.schedules import sample_diffusion_times
from latentlm.diffusion.training import MODE_FROZEN_STREAM, DiffusionTask, stream_of
from latentlm.diffusion.variational import kl_divergence, reparameterize
from latentlm.metrics.generation import distinct_n, generative_perplexity, unigram_entropy
from latentlm.metrics.perplexity import perplexity

__all__ = [
    "heldout_nelbo",
    "stage1_checklist",
    "stage2_checklist",
    "latent_retrieval_metrics",
    "text_sample_metrics",
    "run_evaluation",
]


def _batches(dataset: DirectFileDataset, batch_size: int, latent_dim: int, device):
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        yield {k: v.to(device) for k, v in collate_batch(items, latent_dim).items()}


@torch.no_grad()
def heldout_nelbo(
    model: nn.Module,
    dataset: DirectFileDataset,
    task: DiffusionTask,
    num_draws: int = 1,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, float]:
    """Monte-Carlo NELBO bounds on held-out sentences.

    Args:
        model: the ``LatentDiffusionLM`` (eval mode).
        dataset: held-out ``DirectFileDataset``.
        task: the run's task (schedules, ids, stage).
        num_draws: (t, mask) draws per sentence.
        seed: seed of the draws.
        batch_size: sentences per forward pass.

    Returns:
        ``nelbo_per_token`` / ``ppl_bound`` (null latent), ``nelbo_given_latent_per_token`` /
        ``ppl_bound_given_latent``, ``latent_mse`` (T2L denoising loss), and for Stage II
        ``kl_per_sentence`` and ``ppl_bound_vae`` (reconstruction NELBO + KL).
    """
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    meta, denoiser = task.token_meta, model.rwkv
    latent_dim = denoiser.config.latent_dim
    sums = {"uncond": 0.0, "cond": 0.0, "kl": 0.0, "mse": 0.0}
    tokens = sentences = mse_rows = 0
    for batch in _batches(dataset, batch_size, latent_dim, device):
        x0 = batch["input_ids"]
        B = x0.shape[0]
        keep = x0 != meta.pad_token_id
        tokens += int(keep.sum())
        sentences += B
        ones, zeros = torch.ones(B, device=device), torch.zeros(B, device=device)
        if task.variational:
            mu, logvar, _ = model.encode_text(x0, keep)
            sums["kl"] += float(kl_divergence(mu, logvar, *model.latent_prior(B)).sum())
        elif not bool(batch["has_latent"].all()):
            raise ValueError("held-out Stage I evaluation needs the external latents (data.latent_dir)")
        for _ in range(num_draws):
            z0 = reparameterize(mu, logvar, g) if task.variational else batch["latent"]
            t = sample_diffusion_times(B, g, device=device)
            x_t, masked = apply_masking(x0, t, task.text_schedule, meta.mask_token_id, g)
            z_null = torch.randn(B, latent_dim, generator=g).to(device)
            for key, z, t_latent in (("uncond", z_null, ones), ("cond", z0, zeros)):
                hidden = denoiser(x_t, z, t, t_latent).text_hidden
                logits = denoiser.text_logits(hidden[masked])
                nelbo = masked_nelbo(logits, x0, masked, t, task.text_schedule, meta.mask_token_id)
                sums[key] += float(nelbo.sum()) / num_draws
            t_latent = sample_diffusion_times(B, g, device=device)
            z_t, eps = noise_latent(z0, t_latent, task.latent_schedule, g)
            out = denoiser(x0, z_t, zeros, t_latent).latent_output
            mse = gaussian_latent_loss(
                out, z0, eps, t_latent, task.latent_schedule, task.cfg.model.latent_prediction
            )
            sums["mse"] += float(mse.sum()) / num_draws
            mse_rows += B / num_draws
    result = {
        "nelbo_per_token": sums["uncond"] / tokens,
        "ppl_bound": perplexity(sums["uncond"], tokens),
        "nelbo_given_latent_per_token": sums["cond"] / tokens,
        "ppl_bound_given_latent": perplexity(sums["cond"], tokens),
        "latent_mse": sums["mse"] / max(mse_rows, 1),
    }
    if task.variational:
        result["kl_per_sentence"] = sums["kl"] / sentences
        result["ppl_bound_vae"] = perplexity(sums["cond"] + sums["kl"], tokens)
    return result


def _check(name: str, passed: bool, detail: str) -> dict:
    return {"check": name, "passed": bool(passed), "detail": detail}


def stage1_checklist(model: nn.Module, task: DiffusionTask, batch: dict) -> list[dict]:
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
            losses = task.compute_losses(model, batch, mode)
            losses["loss"].backward()
        finite = all(bool(torch.isfinite(v).all()) for v in losses.values())
        detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
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


def stage2_checklist(model: nn.Module, task: DiffusionTask, batch: dict) -> list[dict]:
    """KL collapse watch, valid mu/logvar and stochastic reparameterisation."""
    x0 = batch["input_ids"]
    keep = x0 != task.token_meta.pad_token_id
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


def run_evaluation(task: DiffusionTask, run: RunDir, checkpoint: Path | None = None) -> dict:
    """Evaluate the latest (or given) checkpoint of a run; writes metrics, samples and report.md.

    Args:
        task: the run's ``DiffusionTask`` (its config is the run's config plus any overrides).
        run: the run directory.
        checkpoint: a checkpoint folder (default: the latest in the run).

    Returns:
        the metrics dict (also in ``eval_metrics.json``).
    """
    from latentlm.diffusion.data import load_sentence_encoder
    from latentlm.teachers import load_causal_lm, load_tokenizer

    cfg = task.cfg
    start = time.perf_counter()

    def say(phase: str) -> None:
        print(f"[diffusion eval {time.perf_counter() - start:7.1f}s] {phase}", flush=True)

    checkpoint = checkpoint or run.latest_checkpoint()
    if checkpoint is None:
        raise FileNotFoundError(f"{run.path}: no checkpoint to evaluate (train first)")
    torch.manual_seed(cfg.eval.seed)
    model = load_model_weights(task.build_model(), checkpoint).eval()
    meta, latent_dim = task.token_meta, model.config.latent_dim
    have_latents = task.latent_meta is not None
    val = DirectFileDataset(
        cfg.data.token_dir, cfg.data.latent_dir, "val", have_latents, cfg.eval.max_examples
    )
    texts_ref = val.texts()
    s = cfg.sampling
    g = torch.Generator().manual_seed(cfg.eval.seed)

    metrics: dict = {
        "checkpoint": str(checkpoint),
        "stage": cfg.training.stage_schedule,
        "num_heldout": len(val),
    }
    say("held-out NELBO bounds")
    metrics["nelbo"] = heldout_nelbo(
        model, val, task, cfg.eval.nelbo_samples, cfg.eval.seed, cfg.eval.batch_size
    )
    first = next(_batches(val, min(16, len(val)), latent_dim, "cpu"))
    checks = []
    if have_latents:
        checks += stage1_checklist(model, task, first)
    if task.variational:
        checks += stage2_checklist(model, task, first)

    say("loading tokenizer, sentence encoder and judge")
    tokenizer = load_tokenizer(meta.tokenizer)
    encoder = load_sentence_encoder(task.latent_meta.encoder) if have_latents else None
    judge = load_causal_lm(cfg.eval.judge_model) if cfg.eval.judge_model else None
    samples: list[dict] = []

    def encode(texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(encoder.encode(texts, convert_to_numpy=True, show_progress_bar=False))

    all_ids = torch.stack([val[i]["input_ids"] for i in range(len(val))])
    sampled_texts: dict[str, list[str]] = {}
    if have_latents:
        true_norm = torch.stack([val[i]["latent"] for i in range(len(val))])
        true_raw = denormalize_latent(true_norm, task.latent_meta)
        say("T2L sampling")
        z_hat = torch.cat(
            [
                sample_latent_from_text(
                    model,
                    all_ids[i : i + cfg.eval.batch_size],
                    num_steps=s.num_steps,
                    guidance_scale=s.guidance_scale,
                    prediction=cfg.model.latent_prediction,
                    generator=g,
                )
                for i in range(0, len(val), cfg.eval.batch_size)
            ]
        )
        t2l = latent_retrieval_metrics(denormalize_latent(z_hat, task.latent_meta), true_raw, cfg.eval.seed)
        norm_ratio = float(
            (denormalize_latent(z_hat, task.latent_meta).norm(dim=-1) / true_raw.norm(dim=-1)).mean()
        )
        checks.append(
            _check("latent norm retention (T2L)", 0.5 < norm_ratio < 2.0, f"|z_hat| / |z| = {norm_ratio:.4g}")
        )
        metrics["t2l"] = {k: v for k, v in t2l.items() if not isinstance(v, list)} | {
            "norm_ratio": norm_ratio
        }
        say("L2T sampling")
        l2t_ids = torch.cat(
            [
                sample_text_from_latent(
                    model,
                    true_norm[i : i + cfg.eval.batch_size],
                    num_steps=s.num_steps,
                    temperature=s.temperature,
                    top_k=s.top_k,
                    top_p=s.top_p,
                    guidance_scale=s.guidance_scale,
                    generator=g,
                )
                for i in range(0, len(val), cfg.eval.batch_size)
            ]
        )
        l2t_texts = decode_samples(tokenizer, l2t_ids, meta.sep_token_id, meta.pad_token_id)
        l2t = latent_retrieval_metrics(encode(l2t_texts), true_raw, cfg.eval.seed)
        metrics["l2t"] = {k: v for k, v in l2t.items() if not isinstance(v, list)}
        sampled_texts["l2t"] = l2t_texts
        samples += [
            {"kind": "l2t", "reference": r, "sample": t} for r, t in zip(texts_ref, l2t_texts, strict=True)
        ]
    if task.variational:
        keep = all_ids != meta.pad_token_id
        with torch.no_grad():
            mu, _, _ = model.encode_text(all_ids, keep)
        recon_ids = sample_text_from_latent(
            model,
            mu,
            num_steps=s.num_steps,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            generator=g,
        )
        recon_texts = decode_samples(tokenizer, recon_ids, meta.sep_token_id, meta.pad_token_id)
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
                else token_acc > 1 / meta.vocab_size,
                detail,
            )
        )
        metrics["reconstruction"] = recon
        samples += [
            {"kind": "reconstruction", "reference": r, "sample": t}
            for r, t in zip(texts_ref, recon_texts, strict=True)
        ]
        prior_z = model.latent_prior.sample(cfg.eval.num_samples, g)
        uncond_ids = sample_text_from_latent(
            model,
            prior_z,
            num_steps=s.num_steps,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            generator=g,
        )
        kind = "prior_l2t"
    else:
        say("joint sampling")
        uncond_ids, _ = sample_joint(
            model,
            cfg.eval.num_samples,
            num_steps=s.num_steps,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            prediction=cfg.model.latent_prediction,
            generator=g,
        )
        kind = "joint"
    sampled_texts[kind] = decode_samples(tokenizer, uncond_ids, meta.sep_token_id, meta.pad_token_id)
    samples += [{"kind": kind, "sample": t} for t in sampled_texts[kind]]
    say("judging samples")
    metrics["samples"] = {
        name: text_sample_metrics(texts, tokenizer, judge) for name, texts in sampled_texts.items()
    }
    metrics["samples"]["reference"] = text_sample_metrics(texts_ref, tokenizer, judge)
    metrics["checklist"] = checks
    metrics["checks_passed"] = sum(c["passed"] for c in checks)
    metrics["checks_total"] = len(checks)

    run.write_json("eval_metrics.json", metrics)
    atomic_write_text(run.path / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in samples))
    report = Report(f"Diffusion evaluation: {run.path.name} ({cfg.training.stage_schedule})")
    report.text(
        f"Checkpoint `{checkpoint}`; {len(val)} held-out sentences; sampling with {s.num_steps} steps, "
        f"temperature {s.temperature}, top-k {s.top_k}, top-p {s.top_p}, CFG scale {s.guidance_scale}."
    )
    report.heading("Checklist")
    report.table(checks)
    report.heading("Held-out NELBO bounds")
    report.table([metrics["nelbo"]])
    for key, title in (
        ("t2l", "Text -> latent"),
        ("l2t", "Latent -> text (re-encoded)"),
        ("reconstruction", "Stage II reconstruction"),
    ):
        if key in metrics:
            report.heading(title)
            report.table([metrics[key]])
    if have_latents:
        report.figure(
            _cosine_figure("T2L: sampled vs true latent", t2l),
            "t2l_cosine",
            "T2L cosine, paired vs random pairs",
        )
        report.figure(
            _cosine_figure("L2T: re-encoded text vs conditioning latent", l2t),
            "l2t_cosine",
            "L2T cosine, paired vs random pairs",
        )
    report.heading("Sample statistics")
    report.table([{"samples": name, **vals} for name, vals in metrics["samples"].items()])
    report.heading("Examples")
    report.table(
        [{k: v for k, v in r.items()} for r in samples[:6]]
        + [r for r in samples if r["kind"] in ("joint", "prior_l2t")][:6]
    )
    _training_curves(report, run)
    report.save(run.path)
    if not all(math.isfinite(v) for v in metrics["nelbo"].values()):
        raise FloatingPointError(f"non-finite held-out NELBO: {metrics['nelbo']}")
    return metrics
