"""`latentlm wire eval`: SQuAD EM/F1 of the latent against text and compression baselines.

For each frozen model and each mode (text, token budget, PCA, mean pool, embedding replay with and
without the anchor, latent) it generates answers greedily and scores them with the official
normalisation; for text and latent it also scores the gold answer teacher-forced (first-token
top-1/top-5, NLL per token). It adds joint rescoring of the models' latent candidates, the
compression in bytes and the prefill latency of latent vs text prompts. Outputs: metrics.json,
predictions.jsonl and report.md (with plots) in the evaluation directory.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from latentlm.core.checkpoint import atomic_write_text, write_json
from latentlm.core.report import Report, line_plot
from latentlm.core.run import progress
from latentlm.data.squad import SquadExample
from latentlm.metrics.squad import best_over_golds, exact_match, f1_score, squad_scores
from latentlm.wire.config import WireRunConfig
from latentlm.wire.features import (
    FeatureBuilder,
    SentenceStates,
    anchor_budget_contents,
    latent_prompt,
    soft_content_prompts,
    text_prompts,
)
from latentlm.wire.frozen import FrozenLM, format_content
from latentlm.wire.losses import segment_mean_pool
from latentlm.wire.model import WireModel


@torch.no_grad()
def score_gold_batch(
    lm: FrozenLM, prompt: torch.Tensor, mask: torch.Tensor, golds: Sequence[str], max_answer: int
):
    """Teacher-forced scores of the gold answers: per example (top1 hit, top5 hit, NLL sum, tokens)."""
    answers = [lm.answer_ids(g)[:max_answer] for g in golds]
    answer_ids = lm.pad_answers(answers).to(prompt.device)
    answer_mask = lm.answer_mask(answers, answer_ids.shape[1]).to(prompt.device)
    logits = lm.teacher_forced_logits(prompt, mask, answer_ids, answer_mask).float()  # (B, A, V)
    logp = torch.log_softmax(logits, -1)
    nll = -(logp.gather(-1, answer_ids.unsqueeze(-1)).squeeze(-1) * answer_mask)  # (B, A)
    top5 = logits[:, 0].topk(min(5, logits.shape[-1]), -1).indices  # (B, 5)
    hit1 = (top5[:, 0] == answer_ids[:, 0]).tolist()
    hit5 = (top5 == answer_ids[:, :1]).any(-1).tolist()
    return hit1, hit5, nll.sum(-1).tolist(), answer_mask.sum(-1).tolist()


def score_gold(lm: FrozenLM, prompt: torch.Tensor, mask: torch.Tensor, golds: Sequence[str], max_answer: int):
    """Aggregated gold scores: first-token top-1/top-5 accuracy and NLL per gold token."""
    hit1, hit5, nll, count = score_gold_batch(lm, prompt, mask, golds, max_answer)
    return {
        "first_top1": float(np.mean(hit1)),
        "first_top5": float(np.mean(hit5)),
        "gold_nll": float(np.sum(nll) / max(np.sum(count), 1)),
    }


class PCABasis:
    """Rank-r PCA of a model's token embeddings (fit on train prompts): each token embedding is
    replaced by its projection on the top r components (dimension compression, length kept)."""

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, explained: float) -> None:
        self.mean, self.components, self.explained = mean, components, explained  # (d,), (d, r)

    @classmethod
    def fit(cls, lm: FrozenLM, texts: Sequence[str], rank: int) -> PCABasis:
        with torch.no_grad():
            rows = torch.cat([lm.embed(lm.encode(t)).double() for t in texts], dim=0)  # (N, d)
        mean = rows.mean(0)
        centered = rows - mean
        _, singular, vh = torch.linalg.svd(centered, full_matrices=False)
        rank = min(rank, vh.shape[0])
        explained = float((singular[:rank] ** 2).sum() / (singular**2).sum())
        return cls(mean.float(), vh[:rank].T.float(), explained)

    def reconstruct(self, embeds: torch.Tensor) -> torch.Tensor:
        """(L, d) -> (L, d) projected on the rank-r subspace around the mean."""
        centered = embeds.float() - self.mean
        return centered @ self.components @ self.components.T + self.mean


GOLD_SCORED_MODES = ("text", "latent", "latent_nearest")
"""Modes whose prompts also score the gold answer teacher-forced (first-token top-1/5, NLL)."""


def _chunks(seq: Sequence, size: int):
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def mode_prompts(
    mode: str,
    lm: FrozenLM,
    contents: Sequence[str],
    latent_length: int,
    pca: PCABasis | None,
    soft: torch.Tensor | None,
    sentence: SentenceStates | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt embeddings (B, P, d) and mask for one evaluation mode."""
    if mode == "text":
        return text_prompts(lm, contents)
    if mode == "token_budget":
        return text_prompts(lm, contents, max_content_tokens=latent_length)
    if mode == "anchor_budget":
        if sentence is None:
            raise ValueError("eval mode 'anchor_budget' needs the sentence encoder (MiniLM)")
        return text_prompts(lm, anchor_budget_contents(sentence, contents), max_content_tokens=latent_length)
    if mode == "latent":
        return latent_prompt(lm, soft)
    if mode == "latent_nearest":
        if soft is None:
            raise ValueError("eval mode 'latent_nearest' needs a trained wire")
        return latent_prompt(lm, lm.embed(lm.nearest_tokens(soft)).to(soft.dtype))
    with torch.no_grad():
        embeds = [lm.embed(lm.encode(c)) for c in contents]
    if mode == "replay":
        return soft_content_prompts(lm, embeds)
    if mode == "replay_no_anchor":
        return soft_content_prompts(lm, embeds, with_anchor=False)
    if mode == "pca":
        return soft_content_prompts(lm, [pca.reconstruct(e) for e in embeds])
    if mode == "mean_pool":
        pooled = [
            segment_mean_pool(e[None], torch.ones(1, e.shape[0], dtype=torch.long), latent_length)[0]
            for e in embeds
        ]
        return soft_content_prompts(lm, pooled)
    raise ValueError(f"unknown evaluation mode {mode!r}")


@torch.no_grad()
def prefill_latency(lm: FrozenLM, prompt: torch.Tensor, mask: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward pass over the prompt (the prefill)."""
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        lm.forward_embeds(prompt, mask, keep_last=1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def evaluate_wire(
    cfg: WireRunConfig,
    wire: WireModel | None,
    lms: list[FrozenLM],
    features: FeatureBuilder | None,
    examples: list[SquadExample],
    pca_texts: Sequence[str] = (),
    modes: Sequence[str] | None = None,
) -> tuple[dict, list[dict]]:
    """Evaluate every mode for every model on `examples`.

    Args:
        cfg: run config (latent length, eval settings).
        wire: the trained encoder + adapters (None: baselines only).
        lms: the frozen models, in the order the wire was trained with.
        features: encoder feature builder (may be None when `wire` is None and no mode reads the
            sentence encoder).
        examples: dev questions.
        pca_texts: train prompts to fit the PCA baseline on.
        modes: exactly the modes to run (default: `cfg.eval.baselines` + latent when a wire is given).

    Returns:
        (metrics, predictions): nested metrics and one prediction record per (question, model, mode).
    """
    ecfg, M = cfg.eval, cfg.latent.length
    if modes is None:
        modes = list(ecfg.baselines) + (["latent"] if wire is not None else [])
    if wire is not None:
        wire.eval()
        names = list(wire.config.model_names)
        if names != [lm.name for lm in lms]:
            raise ValueError(f"the checkpoint was trained for models {names}, got {[lm.name for lm in lms]}")
    pcas = {lm.name: PCABasis.fit(lm, pca_texts, M) for lm in lms} if "pca" in modes else {}
    preds: dict[tuple[str, str], list[str]] = defaultdict(list)
    gold_scores: dict[tuple[str, str], list[list]] = defaultdict(lambda: [[], [], [], []])
    joint_preds: list[str] = []
    records: list[dict] = []
    encode_seconds = 0.0
    sentence = features.sentence if features is not None else None
    for batch in progress(list(_chunks(examples, ecfg.batch_size)), desc="eval"):
        contents = [format_content(e.context, e.question) for e in batch]
        golds = [e.answers[0] for e in batch]
        z = None
        if wire is not None:
            start = time.perf_counter()
            z = wire.encode(features(contents, wire.required_features))
            encode_seconds += time.perf_counter() - start
        latent_candidates: list[list[str]] = [[] for _ in batch]
        latent_prompts = {}
        for index, lm in enumerate(lms):
            soft = wire.soft_tokens(z, index, gain=ecfg.prefix_gain) if z is not None else None
            for mode in modes:
                prompt, mask = mode_prompts(mode, lm, contents, M, pcas.get(lm.name), soft, sentence)
                generated = lm.generate_from_embeds(
                    prompt, mask, ecfg.max_new_tokens, ecfg.min_new_tokens, ecfg.eos_ban_steps
                )
                texts = [lm.decode(g) for g in generated]
                preds[(lm.name, mode)].extend(texts)
                if mode in GOLD_SCORED_MODES:
                    scored = score_gold_batch(lm, prompt, mask, golds, cfg.data.max_answer_tokens)
                    for slot, values in zip(gold_scores[(lm.name, mode)], scored, strict=True):
                        slot.extend(values)
                if mode == "latent":
                    latent_prompts[index] = (prompt, mask)
                    for row, text in enumerate(texts):
                        latent_candidates[row].append(text)
                for example, text in zip(batch, texts, strict=True):
                    records.append(
                        {
                            "id": example.id,
                            "model": lm.name,
                            "mode": mode,
                            "prediction": text,
                            "gold": list(example.answers),
                            "f1": 100 * best_over_golds(f1_score, text, example.answers),
                            "em": 100 * best_over_golds(exact_match, text, example.answers),
                        }
                    )
        if latent_prompts and len(lms) > 1:
            joint_preds.extend(
                _joint_rescore(lms, latent_prompts, latent_candidates, cfg.data.max_answer_tokens)
            )
    metrics = _summarise(cfg, lms, examples, modes, preds, gold_scores, joint_preds, wire, encode_seconds)
    return metrics, records


def _joint_rescore(lms, latent_prompts, candidates, max_answer) -> list[str]:
    """Per question, the candidate with the lowest mean NLL/token summed over the models' latent prompts."""
    choices = []
    n_cand = len(candidates[0])
    totals = np.zeros((len(candidates), n_cand))
    for index, lm in enumerate(lms):
        prompt, mask = latent_prompts[index]
        for c in range(n_cand):
            texts = [cands[c] or " " for cands in candidates]
            _, _, nll, count = score_gold_batch(lm, prompt, mask, texts, max_answer)
            per_token = np.array(nll) / np.maximum(np.array(count), 1)
            # An empty candidate has no tokens to score; it must not win by default.
            totals[:, c] += np.where(np.array(count) > 0, per_token, np.inf)
    for row, cands in enumerate(candidates):
        choices.append(cands[int(np.argmin(totals[row]))])
    return choices


def _summarise(cfg, lms, examples, modes, preds, gold_scores, joint_preds, wire, encode_seconds) -> dict:
    golds = [list(e.answers) for e in examples]
    M, d_z = cfg.latent.length, cfg.latent.d_z
    contents = [format_content(e.context, e.question) for e in examples]
    utf8_bytes = float(np.mean([len(c.encode("utf-8")) for c in contents]))
    out: dict = {"num_examples": len(examples), "latent_length": M, "models": {}}
    for lm in lms:
        per_mode = {}
        for mode in modes:
            texts = preds[(lm.name, mode)]
            scores = squad_scores(texts, golds)
            entry = {
                "em": scores["em"],
                "f1": scores["f1"],
                "empty_rate": float(np.mean([not t for t in texts])),
            }
            if (lm.name, mode) in gold_scores:
                hit1, hit5, nll, count = gold_scores[(lm.name, mode)]
                entry.update(
                    first_top1=float(np.mean(hit1)),
                    first_top5=float(np.mean(hit5)),
                    gold_nll=float(np.sum(nll) / max(np.sum(count), 1)),
                )
            per_mode[mode] = entry
        prompt_tokens = float(np.mean([len(lm.encode(c)) for c in contents]))
        per_mode["prompt_tokens_mean"] = prompt_tokens
        per_mode["token_compression_ratio"] = prompt_tokens / M
        out["models"][lm.name] = per_mode
    if joint_preds:
        out["joint_rescoring"] = squad_scores(joint_preds, golds)
    if wire is not None:
        slots = wire.config.latent.shared_length + len(lms) * wire.config.latent.private_length
        latent_values = slots * d_z
        out["compression"] = {
            "prompt_utf8_bytes_mean": utf8_bytes,
            "latent_bytes": {"fp16": latent_values * 2, "int8": latent_values, "int4": latent_values / 2},
            "ratio_utf8_over_latent": {
                "fp16": utf8_bytes / (latent_values * 2),
                "int8": utf8_bytes / latent_values,
                "int4": utf8_bytes / (latent_values / 2),
            },
        }
        out["encoder_seconds_per_question"] = encode_seconds / max(len(examples), 1)
        out["prefill"] = _prefill(cfg, wire, lms, examples[: max(1, min(4, len(examples)))])
    return out


def _prefill(cfg, wire, lms, examples) -> dict:
    """Median prefill seconds of text vs latent prompts, batch 1, averaged over a few questions."""
    result = {}
    contents = [format_content(e.context, e.question) for e in examples]
    for lm in lms:
        text_t, latent_t = [], []
        for content in contents:
            prompt, mask = text_prompts(lm, [content])
            text_t.append(prefill_latency(lm, prompt, mask, cfg.eval.latency_repeats))
            # Prefill cost does not depend on the soft tokens' values, only on their number.
            soft = torch.zeros(1, cfg.latent.length, lm.d_model)
            prompt, mask = latent_prompt(lm, soft)
            latent_t.append(prefill_latency(lm, prompt, mask, cfg.eval.latency_repeats))
        text_s, latent_s = float(np.mean(text_t)), float(np.mean(latent_t))
        result[lm.name] = {"text_seconds": text_s, "latent_seconds": latent_s, "speedup": text_s / latent_s}
    return result


def write_outputs(
    out_dir: str | Path, metrics: dict, records: list[dict], run_dir: str | Path | None = None
) -> Path:
    """metrics.json, predictions.jsonl and report.md (with plots) under `out_dir` (any folder)."""
    out_dir = Path(out_dir)
    write_json(out_dir / "metrics.json", metrics)
    atomic_write_text(out_dir / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    build_report(metrics, run_dir).save(out_dir)
    return out_dir


def build_report(metrics: dict, run_dir: str | Path | None = None) -> Report:
    """The evaluation report (tables, F1 per mode, training curves of the run)."""
    report = Report("LatentWire evaluation")
    report.text(f"{metrics['num_examples']} questions, M = {metrics['latent_length']} soft tokens.")
    rows = []
    for model, per_mode in metrics["models"].items():
        for mode, entry in per_mode.items():
            if isinstance(entry, dict):
                rows.append({"model": model, "mode": mode, **entry})
    report.heading("EM / F1 per model and mode")
    report.table(rows, ["model", "mode", "f1", "em", "empty_rate", "first_top1", "first_top5", "gold_nll"])
    if "joint_rescoring" in metrics:
        report.text(
            f"Joint rescoring of the latent candidates: F1 {metrics['joint_rescoring']['f1']:.2f}, "
            f"EM {metrics['joint_rescoring']['em']:.2f}."
        )
    if "compression" in metrics:
        report.heading("Compression and prefill")
        report.text(
            "```json\n" + json.dumps({k: metrics[k] for k in ("compression", "prefill")}, indent=1) + "\n```"
        )
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    models = list(metrics["models"])
    modes = [
        m for m in next(iter(metrics["models"].values())) if isinstance(metrics["models"][models[0]][m], dict)
    ]
    width = 0.8 / max(len(models), 1)
    for k, model in enumerate(models):
        ax.bar(
            np.arange(len(modes)) + k * width,
            [metrics["models"][model][m]["f1"] for m in modes],
            width,
            label=model,
        )
    ax.set_xticks(np.arange(len(modes)) + width * (len(models) - 1) / 2, modes, rotation=20)
    ax.set_ylabel("F1")
    ax.legend()
    report.figure(fig, "f1_by_mode", "SQuAD F1 by mode")
    if run_dir is not None:
        _training_curves(report, Path(run_dir))
    return report


def _training_curves(report: Report, run_dir: Path) -> None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    series = {}
    for key in sorted({k for r in rows for k in r if k.endswith("first_top1") and k.startswith("train/")}):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        series[key] = ([p[0] for p in pts], [p[1] for p in pts])
    losses = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    if losses:
        report.heading("Training")
        report.figure(
            line_plot({"loss": ([p[0] for p in losses], [p[1] for p in losses])}, "step", "loss"),
            "train_loss",
            "Training loss",
        )
    if series:
        report.figure(
            line_plot(series, "step", "first-token top-1"), "first_top1", "First-token top-1 (train)"
        )


def needs_sentence(cfg: WireRunConfig) -> bool:
    """Whether evaluation reads the sentence encoder even when the wire's encoder does not."""
    return cfg.latent.scope == "context" or "anchor_budget" in cfg.eval.baselines


def external_scorer(cfg: WireRunConfig, lms: Sequence[FrozenLM]) -> FrozenLM:
    """The frozen LM of the external baseline: one of `lms` when named so, else loaded."""
    from latentlm.wire.frozen import load_frozen_lms

    for lm in lms:
        if lm.name == cfg.eval.external_scorer:
            return lm
    return load_frozen_lms([cfg.eval.external_scorer], cfg.prompt)[0]


def load_wire(run_dir: str | Path, checkpoint: str = "best") -> WireModel:
    """The trained `WireModel` of a run: `model/` (config + final weights), then `best/` weights if asked."""
    from latentlm.core.engine import load_model_weights
    from latentlm.core.lifecycle import load_trained_model

    wire = load_trained_model(run_dir, WireModel)
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint: must be best or last, got {checkpoint!r}")
    if checkpoint == "best" and (Path(run_dir) / "best" / "model.safetensors").is_file():
        load_model_weights(wire, Path(run_dir) / "best")
    return wire.eval()


def evaluate_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    checkpoint: str = "best",
    lms: Sequence[FrozenLM] | None = None,
    sentence: SentenceStates | None = None,
) -> dict:
    """Evaluate a finished run; writes `<run_dir>/eval/` (metrics.json, predictions.jsonl, report.md)
    through `write_eval` and returns the metrics."""
    from latentlm.core.lifecycle import load_finished_run, write_eval
    from latentlm.wire.data import resolve_examples
    from latentlm.wire.features import build_features
    from latentlm.wire.frozen import load_frozen_lms

    cfg = load_finished_run(run_dir, WireRunConfig, overrides)
    lms = list(lms) if lms is not None else load_frozen_lms(cfg.models, cfg.prompt)
    wire = load_wire(run_dir, checkpoint)
    features, _ = build_features(cfg.encoder, lms, sentence, needs_sentence(cfg))
    wire.attach(lms, features=features)
    dev = resolve_examples(cfg.data.dev, "validation", cfg.data.dev_limit, cfg.data.max_context_chars)
    if cfg.latent.scope == "context":
        metrics, records = evaluate_context(
            cfg,
            wire,
            lms,
            features,
            dev,
            ["latent", *cfg.eval.context_baselines],
            scorer=external_scorer(cfg, lms) if "external" in cfg.eval.context_baselines else None,
        )
        metrics["checkpoint"] = checkpoint
        folder = write_eval(run_dir, metrics, context_report(metrics))
        atomic_write_text(folder / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        return metrics
    train = resolve_examples(cfg.data.train, "train", cfg.eval.pca_fit_examples, cfg.data.max_context_chars)
    metrics, records = evaluate_wire(
        cfg, wire, lms, features, dev, [format_content(e.context, e.question) for e in train]
    )
    metrics["checkpoint"] = checkpoint
    folder = write_eval(run_dir, metrics, build_report(metrics, run_dir))
    atomic_write_text(folder / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return metrics


# ---------------------------------------------------------------------------------------- context scope
@torch.no_grad()
def evaluate_context(
    cfg: WireRunConfig,
    wire: WireModel | None,
    lms: list[FrozenLM],
    features: FeatureBuilder,
    examples: list[SquadExample],
    methods: Sequence[str],
    ratio: int | None = None,
    scorer: FrozenLM | None = None,
) -> tuple[dict, list[dict]]:
    """The context scope's measurements: SQuAD F1/EM of the latent and of every text baseline at the
    same positions, per frozen model.

    Args:
        wire: the trained model (None: text baselines only; `latent` must then not be in `methods`).
        features: feature builder with the sentence encoder (positions, anchor_budget, the latent).
        examples: dev questions (validated and cut by `prepare_context_examples`).
        methods: among `latent` and `baselines.TEXT_BASELINES`.
        ratio: context tokens per position (default `cfg.latent.ratio`).
        scorer: the frozen LM of the `external` baseline (Selective Context).

    Returns:
        (metrics, records): `metrics["methods"][model][method]` has f1, em, positions (mean M used),
        empty_rate; one record per (question, model, method).
    """
    from latentlm.wire.baselines import baseline_context_ids, selective_context, self_information
    from latentlm.wire.data import prepare_context_examples
    from latentlm.wire.features import context_prompts, context_text_prompts

    ratio = ratio or cfg.latent.ratio
    if "latent" in methods and wire is None:
        raise ValueError("the latent method needs a trained WireModel")
    if "external" in methods and scorer is None:
        raise ValueError("the external baseline needs its scorer LM (eval.external_scorer)")
    sentence = features.sentence
    if sentence is None:
        raise ValueError("the context scope needs the sentence encoder (positions are counted in its tokens)")
    prepared = prepare_context_examples(
        examples,
        sentence.tokenizer,
        ratio,
        cfg.latent.length,
        min(cfg.encoder.max_tokens, sentence.max_tokens),
    )
    preds: dict[tuple[str, str], list[str]] = defaultdict(list)
    positions: dict[tuple[str, str], list[int]] = defaultdict(list)
    records: list[dict] = []
    for batch in progress(list(_chunks(prepared, cfg.eval.batch_size)), desc=f"eval context {ratio}x"):
        questions = [e.question for e in batch]
        external = {}
        if "external" in methods:
            external = {
                e.id: selective_context(scorer, e.context, e.positions, self_information(scorer, e.context))
                for e in batch
            }
        out = None
        if "latent" in methods:
            inputs = features([e.context for e in batch], wire.required_features, questions)
            out = wire(inputs, gain=cfg.eval.prefix_gain)
            budgets = out.latent_mask.sum(-1).tolist()
            if budgets != [e.positions for e in batch]:
                raise RuntimeError(
                    f"latent positions {budgets} differ from the budgets {[e.positions for e in batch]}"
                )
        for index, lm in enumerate(lms):
            for method in methods:
                if method == "latent":
                    pieces = out.pieces(index)
                    prompt, mask = context_prompts(lm, pieces, questions)
                    used = [p.shape[0] for p in pieces]
                else:
                    ids = [
                        baseline_context_ids(
                            method, lm, e.context, e.question, e.positions, sentence, external.get(e.id)
                        )
                        for e in batch
                    ]
                    prompt, mask = context_text_prompts(lm, ids, questions)
                    used = [len(i) for i in ids]
                generated = lm.generate_from_embeds(
                    prompt, mask, cfg.eval.max_new_tokens, cfg.eval.min_new_tokens, cfg.eval.eos_ban_steps
                )
                texts = [lm.decode(g) for g in generated]
                preds[(lm.name, method)].extend(texts)
                positions[(lm.name, method)].extend(used)
                for example, text, count in zip(batch, texts, used, strict=True):
                    records.append(
                        {
                            "id": example.id,
                            "model": lm.name,
                            "method": method,
                            "positions": count,
                            "prediction": text,
                            "gold": list(example.answers),
                            "f1": 100 * best_over_golds(f1_score, text, example.answers),
                            "em": 100 * best_over_golds(exact_match, text, example.answers),
                        }
                    )
    golds = [list(e.answers) for e in prepared]
    metrics: dict = {
        "scope": "context",
        "ratio": ratio,
        "num_examples": len(prepared),
        "truncated_contexts": sum(e.truncated for e in prepared),
        "encoder_context_tokens_mean": float(np.mean([e.context_tokens for e in prepared])),
        "positions_mean": float(np.mean([e.positions for e in prepared])),
        "methods": {},
    }
    for lm in lms:
        per = {}
        for method in methods:
            texts = preds[(lm.name, method)]
            scores = squad_scores(texts, golds)
            per[method] = {
                "f1": scores["f1"],
                "em": scores["em"],
                "positions": float(np.mean(positions[(lm.name, method)])),
                "empty_rate": float(np.mean([not t for t in texts])),
            }
        metrics["methods"][lm.name] = per
        metrics.setdefault("model_context_tokens_mean", {})[lm.name] = float(
            np.mean([len(lm.encode(e.context)) for e in prepared])
        )
    if wire is not None and "latent" in methods:
        values = metrics["positions_mean"] * wire.config.latent.d_z
        metrics["latent_bytes"] = {"fp16": 2 * values, "int8": values}
        metrics["context_utf8_bytes_mean"] = float(
            np.mean([len(e.context.encode("utf-8")) for e in prepared])
        )
        metrics["prefill"] = context_prefill(cfg, wire, lms, prepared[: max(1, min(4, len(prepared)))])
    return metrics, records


def context_prefill(cfg: WireRunConfig, wire: WireModel, lms: list[FrozenLM], examples) -> dict:
    """Median prefill seconds (batch 1) of the whole-context prompt vs the latent prompt, per model."""
    from latentlm.wire.features import context_prompts, context_text_prompts

    result = {}
    for lm in lms:
        text_t, latent_t = [], []
        for e in examples:
            prompt, mask = context_text_prompts(lm, [lm.encode(e.context)], [e.question])
            text_t.append(prefill_latency(lm, prompt, mask, cfg.eval.latency_repeats))
            # Prefill cost depends on the number of soft tokens, not on their values.
            prompt, mask = context_prompts(lm, [torch.zeros(e.positions, lm.d_model)], [e.question])
            latent_t.append(prefill_latency(lm, prompt, mask, cfg.eval.latency_repeats))
        text_s, latent_s = float(np.mean(text_t)), float(np.mean(latent_t))
        result[lm.name] = {"text_seconds": text_s, "latent_seconds": latent_s, "speedup": text_s / latent_s}
    return result


def context_report(metrics: dict) -> Report:
    """Report of a context-scope evaluation: F1/EM/positions per model and method, F1 bars."""
    report = Report("LatentWire context compression")
    ratio, mean_m = metrics["ratio"], metrics["positions_mean"]
    report.text(
        f"{metrics['num_examples']} questions, {ratio}x: M = ceil(context tokens / {ratio}), "
        f"{mean_m:.1f} positions on average for {metrics['encoder_context_tokens_mean']:.1f} "
        "encoder tokens of context."
    )
    rows = [
        {"model": model, "method": method, **entry}
        for model, per in metrics["methods"].items()
        for method, entry in per.items()
    ]
    report.heading("F1 / EM per model and method")
    report.table(rows, ["model", "method", "f1", "em", "positions", "empty_rate"])
    if "prefill" in metrics:
        report.heading("Bytes and prefill")
        report.text(
            "```json\n" + json.dumps({k: metrics[k] for k in ("latent_bytes", "prefill")}, indent=1) + "\n```"
        )
    return report
