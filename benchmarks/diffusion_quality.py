"""Issue 13's quality benchmark: the CPU-hour recipe, Stage I then Stage II, against an AR baseline.

Four phases, each a separate job:

    python3 benchmarks/diffusion_quality.py --phase train --stage1-minutes 7   # data, Stage I, AR
    python3 benchmarks/diffusion_quality.py --phase eval --stage2-minutes 4    # evals, Stage II
    python3 benchmarks/diffusion_quality.py --phase ar                         # AR, best checkpoint kept
    python3 benchmarks/diffusion_quality.py --phase speed                      # RWKV vs attention tokens/s

`train` prepares the pydocs sentences (configs/diffusion/cpu_hour.yaml), trains Stage I for a wall-clock
budget (steps = budget x the step rate measured on 8 calibration steps) and then the same-size
autoregressive baseline for the same wall-clock on the same sentences. `eval` evaluates Stage I
(held-out NELBO, T2L / L2T recall@1 among 64 held-out candidates, by generation and by likelihood
(PMI from the model's bounds, ``eval.likelihood_draws`` draws), joint samples judged by SmolLM2),
trains and evaluates Stage II from it (KL warm-up + free bits), and samples the AR baseline at the
temperature whose unigram entropy matches the joint samples'; every sample set also gets its
memorisation (verbatim training sentences, share of word 4-grams seen in training). `ar` (after
`eval`) trains the AR baseline again with early stopping on held-out NLL and scores its best
checkpoint the same way.
`eval --reuse-stage2` evaluates again with the Stage II model already in --out (after a change of
sampling settings), its training record kept from the results file.
`speed` measures the RWKV and attention denoisers side by side at T in {128, 512, 2048}. Every phase
merges its results into benchmarks/results/diffusion_quality.json (``--name``: another file; plots next
to it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from latentlm.core.bench import RESULTS, save_results
from latentlm.core.config import load_config
from latentlm.core.engine import adamw
from latentlm.core.lifecycle import load_trained_model
from latentlm.core.report import line_plot
from latentlm.core.run import RunDir
from latentlm.diffusion.autoregressive import AutoregressiveLM
from latentlm.diffusion.config import DiffusionConfig
from latentlm.diffusion.evaluate import ar_samples_by_temperature, run_evaluation, text_sample_metrics
from latentlm.diffusion.model import LatentDiffusionLM
from latentlm.diffusion.sampling import decode_samples, sample_joint, sample_text_from_latent
from latentlm.diffusion.task import AutoregressiveTask, DiffusionTask, train_for_seconds
from latentlm.metrics.generation import copied_fraction, generative_perplexity, ngram_overlap

CONFIG = "configs/diffusion/cpu_hour.yaml"
EXTRA: list[str] = []
"""Overrides of every run (``--set``), e.g. a smoke test on the tiny data."""
NAME = "diffusion_quality"


def _load(out: Path, name: str, extra: list[str]) -> DiffusionConfig:
    return load_config(DiffusionConfig, CONFIG, [f"run_dir={out / name}", *EXTRA, *extra])


def phase_train(args, out: Path) -> dict:
    cfg1 = _load(out, "stage1", [])
    task1 = DiffusionTask(cfg1, RunDir(cfg1.run_dir))
    stage1 = train_for_seconds(task1, cfg1, 60 * args.stage1_minutes)
    cfg_ar = _load(out, "ar", [])
    ar_seconds = 60 * args.ar_minutes if args.ar_minutes else stage1["seconds"]
    ar = train_for_seconds(AutoregressiveTask(cfg_ar, RunDir(cfg_ar.run_dir)), cfg_ar, ar_seconds)
    return {
        "stage1_train": stage1,
        "ar_train": ar,
        "data": task1.vocab_report()
        | {"train_sentences": len(task1.train_dataset()), "heldout_sentences": len(task1.val_dataset)},
    }


def _curve(run_dir: Path, key: str) -> list[tuple[int, float]]:
    records = [
        json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]
    return [(r["step"], r[key]) for r in records if key in r]


def _ar_at_matched_entropy(
    model: AutoregressiveLM, target_entropy: float, num: int, judge, seed: int
) -> dict:
    from latentlm.teachers import load_tokenizer

    tokenizer = load_tokenizer(model.config.tokenizer)
    rows = ar_samples_by_temperature(model, num, seed, tokenizer)
    at_one = text_sample_metrics(rows[0]["texts"], tokenizer, judge)
    return _nearest_entropy(rows, target_entropy, tokenizer, judge) | {
        "gen_ppl_temperature_1": at_one["generative_perplexity"]
    }


def _nearest_entropy(rows: list[dict], target_entropy: float, tokenizer, judge) -> dict:
    """The sample set of ``rows`` (one per temperature: its texts and unigram entropy) whose entropy is
    nearest ``target_entropy``, judged, with the entropy of every temperature tried."""
    best = min(rows, key=lambda r: abs(r["unigram_entropy_bits"] - target_entropy))
    judged = text_sample_metrics(best["texts"], tokenizer, judge)
    return {
        "temperature": best["temperature"],
        "unigram_entropy_bits": best["unigram_entropy_bits"],
        "gen_ppl": judged["generative_perplexity"],
        "entropy_by_temperature": {r["temperature"]: r["unigram_entropy_bits"] for r in rows},
        **{k: judged[k] for k in ("mean_words", "distinct_1", "distinct_2")},
        "examples": best["texts"][:5],
        "texts": best["texts"],
    }


JOINT_TEMPERATURES = (1.0, 0.975, 0.95, 0.925, 0.9)
"""Temperatures of the joint samples when their entropy must come down to the AR baseline's."""


def _joint_at_matched_entropy(stage1_dir: Path, cfg: DiffusionConfig, target_entropy: float, judge) -> dict:
    """Joint samples of the Stage I model at the temperature whose sample entropy is nearest
    ``target_entropy`` (the AR baseline's at temperature 1, when the joint samples' is higher: entropy is
    matched by cooling whichever model's samples have more of it, never by heating one above 1). Drawn
    like the evaluation's (its sampling settings and seed) at each of ``JOINT_TEMPERATURES``."""
    from latentlm.teachers import load_tokenizer

    model = load_trained_model(stage1_dir, LatentDiffusionLM).eval()
    tokenizer = load_tokenizer(model.config.tokenizer)
    s = cfg.sampling
    rows = []
    for temperature in JOINT_TEMPERATURES:
        ids, _ = sample_joint(
            model,
            cfg.eval.num_samples,
            prediction=model.config.latent_prediction,
            generator=torch.Generator().manual_seed(cfg.eval.seed),
            order=s.joint_order,
            guidance_scale=s.joint_guidance_scale,
            **(s.text_kwargs() | {"temperature": temperature}),
        )
        texts = model.decode(ids, tokenizer)
        rows.append({"temperature": temperature, "texts": texts, **text_sample_metrics(texts, tokenizer)})
        if rows[-1]["unigram_entropy_bits"] <= target_entropy:
            break
    return _nearest_entropy(rows, target_entropy, tokenizer, judge)


FIRST_WORDS = 12
"""Length-controlled generative perplexity: every sample cut to its first 12 words (the held-out
sentences' mean is 12.6), so that longer or repetitive samples do not buy a lower per-token figure."""


def _first_words_perplexity(sets: dict[str, list[str]], judge) -> dict[str, float]:
    return {
        name: generative_perplexity([" ".join(t.split()[:FIRST_WORDS]) for t in texts], *judge)
        for name, texts in sets.items()
    }


def _training_texts(token_dir: str | Path) -> list[str]:
    """The training sentences decoded the way samples are (for the memorisation measures)."""
    import numpy as np

    from latentlm.teachers import load_tokenizer

    meta = json.loads((Path(token_dir) / "meta.json").read_text())
    ids = torch.from_numpy(np.load(Path(token_dir) / "train.npy").astype(np.int64))  # (N, seq_len)
    return decode_samples(load_tokenizer(meta["tokenizer"]), ids, meta["sep_token_id"], meta["pad_token_id"])


def _memorisation(sets: dict[str, list[str]], training: list[str]) -> dict[str, dict[str, float]]:
    """Per sample set: the fraction that repeats a training sentence verbatim and the share of its word
    4-grams found in the training sentences (an overfit AR model's low judge perplexity comes from here)."""
    return {
        name: {
            "copied_fraction": copied_fraction(texts, training),
            "word_4gram_overlap": ngram_overlap(texts, training, 4),
        }
        for name, texts in sets.items()
    }


def phase_ar(args, out: Path) -> dict:
    """The AR baseline once more for Stage I's wall-clock, evaluated --ar-evals times, keeping the
    checkpoint with the lowest held-out NLL (``best/``) and stopping after --ar-patience evaluations
    without a new best (it overfits these 10k sentences long before the budget ends); its samples are
    scored like the final model's, at the entropy of the saved joint samples."""
    from latentlm.core.checkpoint import read_json
    from latentlm.core.engine import load_model_weights
    from latentlm.teachers import load_causal_lm

    saved = json.loads((RESULTS / f"{args.name}.json").read_text())
    if "stage1" not in saved:
        print(
            f"{RESULTS / f'{args.name}.json'}: no Stage I evaluation yet; run --phase eval first",
            file=sys.stderr,
        )
        raise SystemExit(2)
    overrides = ["train.best_metric=nll_per_token", f"train.early_stop_patience={args.ar_patience}"]
    cfg = _load(out, "ar_best", overrides)
    task = AutoregressiveTask(cfg, RunDir(cfg.run_dir))
    train = train_for_seconds(task, cfg, saved["stage1_train"]["seconds"], evals=args.ar_evals)
    best_dir = out / "ar_best" / "best"
    model = load_model_weights(load_trained_model(out / "ar_best", AutoregressiveLM), best_dir)
    # the joint samples as compared: cooled to the AR's entropy, or (temperature 1) as drawn
    joint = saved["stage1"]["samples"]["joint"] | saved.get("joint_at_matched_entropy", {})
    scored = _ar_at_matched_entropy(
        model,
        joint["unigram_entropy_bits"],
        cfg.eval.num_samples,
        load_causal_lm(cfg.eval.judge_model),
        cfg.eval.seed,
    )
    texts = scored.pop("texts")
    memorisation = _memorisation({"ar": texts}, _training_texts(cfg.data.token_dir))["ar"]
    curve = _curve(out / "ar_best", "eval/nll_per_token")
    return {
        "gen_ppl_ar_best_checkpoint": scored["gen_ppl"],
        "ar_best_checkpoint": {
            "train": train,
            "kept": read_json(best_dir / "state.json"),
            "heldout_nll_per_token": curve,
            "selection": "lowest held-out NLL per token over the evaluations (the held-out sentences, "
            "which include the 64 scored rows: this favours the baseline)",
            "memorisation": memorisation,
            **scored,
        },
    }


def phase_eval(args, out: Path) -> dict:
    from latentlm.core.lifecycle import load_finished_run
    from latentlm.teachers import load_causal_lm

    stage1_dir, stage2_dir = out / "stage1", out / "stage2"
    start = time.perf_counter()
    # --set's evaluation-time settings (a guidance scale chosen on the dev rows, eval.vae_latent_time)
    # apply to the evaluations of both stages (their runs' saved configs hold the training settings).
    evaluation = [o for o in EXTRA if o.startswith(("sampling.", "eval."))]
    cfg1 = load_finished_run(stage1_dir, DiffusionConfig, evaluation)
    m1 = run_evaluation(DiffusionTask(cfg1), stage1_dir)
    seconds = {"stage1_eval": time.perf_counter() - start}
    reused = None
    if args.reuse_stage2:  # its training record stays in the results file from the run that trained it
        previous = json.loads((RESULTS / f"{args.name}.json").read_text())
        stage2, reused = previous["stage2_train"], previous["phases"]["eval"]["command"]
    else:
        cfg2 = _load(
            out,
            "stage2",
            [
                "train.stage_schedule=stage2_variational",
                "data.use_external_latents=false",
                f"model.checkpoint_path={stage1_dir}",
                f"train.unfreeze_after_steps={args.unfreeze_after}",
                f"loss.kl_warmup_steps={args.kl_warmup}",
                "train.lr=0.001",
            ],
        )
        stage2 = train_for_seconds(DiffusionTask(cfg2, RunDir(cfg2.run_dir)), cfg2, 60 * args.stage2_minutes)
    start = time.perf_counter()
    m2 = run_evaluation(DiffusionTask(load_finished_run(stage2_dir, DiffusionConfig, evaluation)), stage2_dir)
    seconds["stage2_eval"] = time.perf_counter() - start
    judge = load_causal_lm(cfg1.eval.judge_model)
    joint = m1["samples"]["joint"]
    ar = _ar_at_matched_entropy(
        load_trained_model(out / "ar", AutoregressiveLM),
        joint["unigram_entropy_bits"],
        cfg1.eval.num_samples,
        judge,
        cfg1.eval.seed,
    )
    ar_texts = ar.pop("texts")
    rows = [json.loads(line) for line in (stage1_dir / "eval" / "samples.jsonl").read_text().splitlines()]
    joint_texts = [r["sample"] for r in rows if r["kind"] == "joint"]
    ar_entropy_at_1 = ar["entropy_by_temperature"][1.0]
    matched = {
        "temperature": 1.0,
        "gen_ppl": joint.get("generative_perplexity"),
        "unigram_entropy_bits": joint["unigram_entropy_bits"],
        "texts": joint_texts,
    }
    if joint["unigram_entropy_bits"] > ar_entropy_at_1:  # the joint samples come down to the AR's entropy
        matched = _joint_at_matched_entropy(stage1_dir, cfg1, ar_entropy_at_1, judge)
    joint_matched_texts = matched.pop("texts")
    sample_sets = {
        "joint": joint_texts,
        "joint_at_matched_entropy": joint_matched_texts,
        "ar": ar_texts,
        "reference": [r["reference"] for r in rows if r["kind"] == "l2t"],
    }
    first_words = _first_words_perplexity(sample_sets, judge)
    memorisation = _memorisation(sample_sets, _training_texts(cfg1.data.token_dir))
    ar_eval = _curve(out / "ar", "eval/nll_per_token")
    kl_curve = _curve(stage2_dir, "eval/kl_per_sentence")
    curves = {
        "stage1_heldout_nelbo_per_token": _curve(stage1_dir, "eval/nelbo_per_token"),
        "stage2_heldout_vae_nelbo_per_token": _curve(stage2_dir, "eval/vae_nelbo_per_token"),
        "stage2_heldout_text_nelbo_per_token": _curve(stage2_dir, "eval/nelbo_per_token"),
        "stage2_kl_per_sentence": kl_curve,
        "ar_heldout_nll_per_token": ar_eval,
    }
    fig = line_plot(
        {k: tuple(zip(*v, strict=True)) for k, v in curves.items() if v and "kl" not in k},
        "step",
        "nats per token",
        "held-out bounds over training (AR: exact NLL)",
    )
    fig.savefig(RESULTS / f"{args.name}_nelbo.png", dpi=120)
    nelbo2 = m2["nelbo"]
    return {
        "l2t_recall_at_1": m1["l2t"]["recall_at_1"],
        "t2l_recall_at_1": m1["t2l"]["recall_at_1"],
        "t2l_recall_at_1_posterior_mean": m1["t2l_posterior_mean"]["recall_at_1"],
        "l2t_recall_at_1_likelihood": m1.get("l2t_likelihood", {}).get("recall_at_1"),
        "t2l_recall_at_1_likelihood": m1.get("t2l_likelihood", {}).get("recall_at_1"),
        "likelihood_retrieval": {
            "method": "PMI from the model's bounds: NELBO(x_j | null latent) - NELBO(x_j | z_i) (L2T), "
            "L(z_j | null text) - L(z_j | x_i) (T2L, latent ELBO term); argmax over the candidates",
            "num_draws": cfg1.eval.likelihood_draws,
        },
        "num_candidates": m1["num_heldout"],
        "gen_ppl_joint": matched["gen_ppl"],
        "gen_ppl_ar": ar["gen_ppl"],
        "gen_ppl_joint_temperature_1": joint.get("generative_perplexity"),
        "gen_ppl_matching": "both sample sets at the lower of the two unigram entropies at temperature 1: "
        "the AR samples cooled to the joint samples' entropy, or the joint samples cooled to the AR's",
        "joint_at_matched_entropy": matched,
        "gen_ppl_reference": m1["samples"]["reference"].get("generative_perplexity"),
        "gen_ppl_prior_stage2": m2["samples"]["prior_l2t"].get("generative_perplexity"),
        "gen_ppl_settings": m1["sampling"]
        | {
            "ar_temperature_at_matched_entropy": ar["temperature"],
            "joint_temperature_at_matched_entropy": matched["temperature"],
        },
        f"gen_ppl_first_{FIRST_WORDS}_words": first_words,
        "memorisation": memorisation,
        "joint_sample_stats": {
            k: joint[k] for k in ("unigram_entropy_bits", "distinct_1", "distinct_2", "mean_words")
        },
        "kl_final": nelbo2["kl_per_sentence"],
        "kl_max_during_training": max((v for _, v in kl_curve), default=None),
        "vae_bound": nelbo2["vae_nelbo_per_token"],
        "text_bound": nelbo2["nelbo_per_token"],
        "bounds_unit": "nats per real token (held-out); ppl = exp(bound)",
        "stage1": {
            k: m1[k]
            for k in (
                "nelbo",
                "t2l",
                "t2l_posterior_mean",
                "l2t",
                "t2l_likelihood",
                "l2t_likelihood",
                "samples",
                "checks_passed",
                "checks_total",
            )
            if k in m1
        },
        "stage2": {k: m2[k] for k in ("nelbo", "reconstruction", "samples", "checks_passed", "checks_total")},
        "ar": ar | {"heldout_nll_per_token": ar_eval[-1][1] if ar_eval else None},
        "stage2_train": stage2,
        "stage2_trained_by": reused or "this evaluation",
        "curves": curves,
        "eval_seconds": seconds,
    }


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _speed_rows(
    lengths: list[int], tokens_per_batch: int, sample_steps: int, repeats: int, compiled: bool = False
) -> list[dict]:
    """Training and sampling tokens/s of the RWKV and the attention denoiser, measured side by side: after
    a warm-up, their steps alternate (so a change of machine load hits both) and each gets the median
    of ``repeats`` timings. ``compiled``: both denoisers through ``torch.compile`` (the warm-up step
    compiles them; the output layer and the loss stay eager)."""
    cfg = load_config(DiffusionConfig, CONFIG, EXTRA)
    base = DiffusionTask(cfg).model_config
    rows = []
    for T in lengths:
        B = max(1, tokens_per_batch // T)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, base.vocab_size, (B, T), generator=g)
        ids[ids == base.mask_token_id] = base.sep_token_id
        latent = torch.randn(B, base.latent_dim, generator=g)
        models, steps = {}, {}
        for name in ("rwkv", "attention"):
            torch.manual_seed(0)
            model = LatentDiffusionLM(dataclasses.replace(base, sequence_mixer=name, seq_len=T))
            if compiled:
                model.rwkv.compile()
            optimizer = adamw(model.parameters(), lr=1e-4)  # the trainer's (fused) AdamW

            def step(i: int, model=model, optimizer=optimizer, ids=ids, latent=latent) -> None:
                model(ids, latent, generator=torch.Generator().manual_seed(i)).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            models[name], steps[name] = model, step
            step(0)
        seconds: dict[str, dict[str, list[float]]] = {"train": {}, "sample": {}}
        for i in range(1, repeats + 1):
            for name, step in steps.items():
                start = time.perf_counter()
                step(i)
                seconds["train"].setdefault(name, []).append(time.perf_counter() - start)
        for model in models.values():
            model.eval()
            sample_text_from_latent(model, latent, num_steps=1)
        for i in range(max(1, repeats // 2)):
            for name, model in models.items():
                start = time.perf_counter()
                sample_text_from_latent(
                    model, latent, num_steps=sample_steps, generator=torch.Generator().manual_seed(i)
                )
                seconds["sample"].setdefault(name, []).append(time.perf_counter() - start)
        params = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
        for mode, by_model in seconds.items():
            rates = {name: ids.numel() / _median(times) for name, times in by_model.items()}
            row = {
                "T": T,
                "mode": mode,
                "compiled": compiled,
                "batch_size": B,
                "rwkv_tokens_per_s": rates["rwkv"],
                "attention_tokens_per_s": rates["attention"],
                "ratio_rwkv_over_attention": rates["rwkv"] / rates["attention"],
                "seconds": by_model,
                "params": params,
            }
            rows.append(row)
            print({k: v for k, v in row.items() if k != "seconds"}, flush=True)
    return rows


def phase_speed(args, out: Path) -> dict:
    lengths = [int(x) for x in args.lengths.split(",")]
    return {
        "speed_rows": _speed_rows(
            lengths, args.tokens_per_batch, args.sample_steps, args.repeats, args.compile
        ),
        "speed_settings": {
            "model": "cpu_hour.yaml model (d_model 128, 3 layers, 4 heads, ffn_mult 3), both mixers, "
            "float32, 1 thread; parameter counts per row (within 0.5 % up to T = 512; attention's learned "
            "positions add T x d_model)",
            "train": f"fused AdamW steps (the trainer's) of the diffusion loss, the two models' steps "
            f"alternating, median of {args.repeats} after a warm-up; B = tokens_per_batch // T",
            "sample": f"L2T with {args.sample_steps} steps (float64 categorical draws), alternating, "
            f"median of {max(1, args.repeats // 2)}",
            "tokens_per_batch": args.tokens_per_batch,
            "torch_compile": "both denoisers (output layer and loss eager)" if args.compile else "no",
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=["train", "eval", "speed", "ar"], required=True)
    parser.add_argument("--out", default="runs/diffusion_quality", help="run folders of the phases")
    parser.add_argument("--stage1-minutes", type=float, default=7.0, help="Stage I (and AR) training budget")
    parser.add_argument(
        "--ar-minutes",
        type=float,
        default=0.0,
        help="train phase: the AR baseline's budget (0: Stage I's wall-clock; less only helps it, since it "
        "overfits these sentences within minutes; the ar phase always gets Stage I's)",
    )
    parser.add_argument("--stage2-minutes", type=float, default=4.0, help="Stage II training budget")
    parser.add_argument(
        "--reuse-stage2", action="store_true", help="eval phase: evaluate the Stage II model in --out again"
    )
    parser.add_argument("--unfreeze-after", type=int, default=50, help="Stage II: denoiser unfreezes here")
    parser.add_argument("--kl-warmup", type=int, default=100, help="Stage II: KL warm-up steps")
    parser.add_argument("--lengths", default="128,512,2048", help="speed phase: sequence lengths")
    parser.add_argument("--tokens-per-batch", type=int, default=4096, help="speed phase: B = this // T")
    parser.add_argument("--sample-steps", type=int, default=8, help="speed phase: L2T denoising steps")
    parser.add_argument("--repeats", type=int, default=5, help="speed phase: timed steps per model")
    parser.add_argument("--compile", action="store_true", help="speed phase: both denoisers torch.compile'd")
    parser.add_argument("--ar-evals", type=int, default=24, help="ar phase: held-out evaluations")
    parser.add_argument("--ar-patience", type=int, default=4, help="ar phase: early-stopping patience")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for every run (smoke tests)")
    parser.add_argument("--name", default=NAME, help="results file name (smoke tests: another name)")
    args = parser.parse_args()
    EXTRA.extend(args.set)
    out = Path(args.out)
    started = time.perf_counter()
    phases = {"train": phase_train, "eval": phase_eval, "speed": phase_speed, "ar": phase_ar}
    result = phases[args.phase](args, out)
    previous = RESULTS / f"{args.name}.json"
    merged = json.loads(previous.read_text()) if previous.is_file() else {}
    merged = {k: v for k, v in merged.items() if k not in ("machine", "command", "commit", "load_average")}
    merged.update(result)
    merged.setdefault("phases", {})[args.phase] = {
        "command": "python3 benchmarks/diffusion_quality.py " + " ".join(sys.argv[1:]),
        "seconds": time.perf_counter() - started,
        "load_average_at_end": list(os.getloadavg()),
    }
    merged["description"] = (
        "CPU-hour recipe (configs/diffusion/cpu_hour.yaml) on pydocs sentences with MiniLM latents; "
        "Stage I and the AR baseline trained for --stage1-minutes of wall-clock each (step counts "
        "calibrated to it; stage1_train / ar_train / stage2_train give steps and seconds), Stage II for "
        "--stage2-minutes; torch threads: machine.torch_threads; --set: settings chosen on dev rows by "
        "benchmarks/diffusion_coupling_probe.py; generative perplexity by SmolLM2-135M"
    )
    save_results(args.name, merged)


if __name__ == "__main__":
    main()
