"""Stage A / Stage B LatentWire training as an engine `Task` (issue 3, seed 004).

One step: encode the batch's prompts once into Z; for each frozen model scheduled this step, run
its adapter, lay out `[prefix | soft tokens | suffix | anchor | answer]`, and add the weighted
losses (answer CE, first-token CE on its schedule, K-token CE, top-k KD from cached text-teacher
logits, entropy bonus, alignment, reconstruction, identity pull of the calibration). Phases come
from the config: Stage B alternates text and latent batches during its warm-up and keeps a tail
probability of text batches. A text batch trains what a frozen LLM lets a text batch train: the
latent is pulled toward the text (reconstruction, plus alignment to the gold first-token embedding
when `loss.align` > 0); with LoRA (a later issue) it would also carry the text CE. During the
reconstruction warm-up (`loss.recon_warmup_steps`) a step makes no pass through the frozen LLMs.
With the interlingua encoder, reconstruction is per token: every token code, through each adapter,
against that model's own embedding of the same characters.

Every `diagnostics_every` steps the task appends to `diagnostics.jsonl`: per model first-token
top-1/top-5, entropy, margin, a histogram of the predicted first tokens, and the gradient norm of
each weighted loss on the trainable parameters.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from latentlm.core.engine import StepOutput, Task, TrainState
from latentlm.core.run import progress
from latentlm.data.cache import cached_arrays, content_hash
from latentlm.data.squad import SquadExample
from latentlm.wire import losses as L
from latentlm.wire.config import PhaseConfig, WireModelConfig, WireRunConfig
from latentlm.wire.data import QAItem, to_items
from latentlm.wire.features import (
    FeatureBuilder,
    SentenceStates,
    content_embeddings,
    latent_prompt,
    text_prompts,
)
from latentlm.wire.frozen import FrozenLM
from latentlm.wire.model import WireModel, token_rms


def model_config_for(cfg: WireRunConfig, lms: list[FrozenLM], st_dim: int) -> WireModelConfig:
    """The saved model config: encoder/latent/adapter settings plus each frozen model's facts."""
    return WireModelConfig(
        model_names=[lm.name for lm in lms],
        model_dims=[lm.d_model for lm in lms],
        embed_rms=[float(lm.embed_rms) for lm in lms],
        st_dim=st_dim,
        prompt=cfg.prompt,
        encoder=cfg.encoder,
        latent=cfg.latent,
        adapter=cfg.adapter,
    )


def phase_at(phases: list[PhaseConfig], step: int) -> tuple[PhaseConfig, int]:
    """The phase that optimizer step `step` (0-based) belongs to and the step inside it."""
    start = 0
    for phase in phases:
        if step < start + phase.steps:
            return phase, step - start
        start += phase.steps
    return phases[-1], step - (start - phases[-1].steps)


def is_text_batch(phase: PhaseConfig, phase_step: int, step: int, seed: int) -> bool:
    """Stage B: odd warm-up steps are text batches; later ones are with probability `text_tail_prob`."""
    if phase_step < phase.text_warmup_steps:
        return phase_step % 2 == 1
    if phase.text_tail_prob <= 0:
        return False
    return random.Random(seed * 7_919 + step).random() < phase.text_tail_prob


class TeacherCache:
    """Top-k log-probabilities of the first K answer steps under the text prompt, per model.

    Computed once with the frozen model (no adapters involved) and stored with
    `latentlm.data.cache` under a hash of the model and its precision, the prompt layout (the anchor
    text as written), questions and K/k.
    """

    def __init__(self, ids: np.ndarray, logp: np.ndarray) -> None:
        self.ids, self.logp = ids, logp  # (N, K, k) each

    @classmethod
    def build(
        cls,
        lm: FrozenLM,
        items: list[QAItem],
        k_steps: int,
        top_k: int,
        max_answer: int,
        cache_dir: str,
        batch_size: int = 4,
    ) -> TeacherCache:
        key = "wire-teacher-" + content_hash(
            lm.name,
            str(lm.dtype),
            lm.parts.prefix,
            lm.parts.suffix,
            lm.anchor_text,  # with its trailing whitespace, which starts the answer ids
            [(i.content, i.answer) for i in items],
            k_steps,
            top_k,
            max_answer,
        )

        def compute() -> dict[str, np.ndarray]:
            ids = np.zeros((len(items), k_steps, top_k), dtype=np.int64)
            logp = np.full((len(items), k_steps, top_k), -1e4, dtype=np.float32)
            starts = range(0, len(items), batch_size)
            for start in progress(starts, desc=f"teacher logits {lm.name}"):
                chunk = items[start : start + batch_size]
                embeds, mask = text_prompts(lm, [c.content for c in chunk])
                answers = [lm.answer_ids(c.answer)[:max_answer] for c in chunk]
                answer_ids = lm.pad_answers(answers)
                answer_mask = lm.answer_mask(answers, answer_ids.shape[1])
                with torch.no_grad():
                    logits = lm.teacher_forced_logits(embeds, mask, answer_ids, answer_mask)[:, :k_steps]
                top = torch.log_softmax(logits.float(), -1).topk(min(top_k, logits.shape[-1]), dim=-1)
                steps = top.indices.shape[1]
                ids[start : start + len(chunk), :steps, : top.indices.shape[-1]] = top.indices.numpy()
                logp[start : start + len(chunk), :steps, : top.values.shape[-1]] = top.values.numpy()
            return {"ids": ids, "logp": logp}

        arrays = cached_arrays(cache_dir, key, compute)
        return cls(arrays["ids"], arrays["logp"])

    def batch(self, indices: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = indices.cpu().numpy()
        return torch.from_numpy(np.asarray(self.ids[rows][:, :steps])), torch.from_numpy(
            np.asarray(self.logp[rows][:, :steps])
        )


class WireTask(Task):
    """Stage A + Stage B training of the encoder and every adapter against frozen LLMs.

    Args:
        cfg: the run config.
        lms: the frozen LLMs, in `cfg.models` order.
        features: builds encoder inputs.
        train_examples / dev_examples: questions for training and in-training evaluation.
        run_path: run directory (diagnostics.jsonl goes there).
        st_dim: width of the sentence encoder's states (saved in the model config).
    """

    def __init__(
        self,
        cfg: WireRunConfig,
        lms: list[FrozenLM],
        features: FeatureBuilder,
        train_examples: list[SquadExample],
        dev_examples: list[SquadExample],
        run_path: str | Path,
        st_dim: int = 384,
    ) -> None:
        self.cfg, self.lms, self.features = cfg, lms, features
        self.batch_size = cfg.batch_size
        if cfg.latent.scope == "context" and features.sentence is not None:
            from latentlm.wire.data import prepare_context_examples

            limit = min(cfg.encoder.max_tokens, features.sentence.max_tokens)
            tokenizer = features.sentence.tokenizer
            train_examples = prepare_context_examples(
                train_examples, tokenizer, cfg.latent.ratio, cfg.latent.length, limit
            )
            dev_examples = prepare_context_examples(
                dev_examples, tokenizer, cfg.latent.ratio, cfg.latent.length, limit
            )
        self.items = to_items(train_examples)
        self.dev_items = to_items(dev_examples)[: cfg.eval.in_training_examples]
        self.run_path = Path(run_path)
        self.model_config = model_config_for(cfg, lms, st_dim)
        self.teachers: list[TeacherCache | None] = [None] * len(lms)

    # ------------------------------------------------------------------ engine hooks
    def build_model(self) -> nn.Module:
        if self.cfg.loss.kd > 0:
            self.teachers = [
                TeacherCache.build(
                    lm,
                    self.items,
                    self.cfg.loss.k,
                    self.cfg.loss.kd_top_k,
                    self.cfg.data.max_answer_tokens,
                    self.cfg.data.cache_dir,
                )
                for lm in self.lms
            ]
        return WireModel(self.model_config).attach(self.lms, features=self.features)

    def train_dataset(self):
        return self.items

    def collate(self, items: list[QAItem]) -> dict:
        return {
            "index": torch.tensor([i.index for i in items], dtype=torch.long),
            "content": [i.content for i in items],
            "answer": [i.answer for i in items],
            "context": [i.context for i in items],
            "question": [i.question for i in items],
        }

    def param_groups(self, model: WireModel) -> list[dict]:
        return [
            {"params": model.encoder_parameters(), "lr": self.cfg.train.lr * self.cfg.encoder_lr_scale},
            {"params": model.adapter_parameters(), "lr": self.cfg.train.lr},
        ]

    # ------------------------------------------------------------------ the step
    def loss(self, model: nn.Module, batch: dict, state: TrainState) -> StepOutput:
        wire: WireModel = getattr(model, "module", model)
        if self.cfg.latent.scope == "context":
            return self._context_loss(wire, batch, state)
        cfg, loss_cfg = self.cfg, self.cfg.loss
        phase, phase_step = phase_at(cfg.phases, state.step)
        text_batch = is_text_batch(phase, phase_step, state.step, cfg.train.seed)
        indices = range(len(self.lms))
        if phase.model_schedule == "alternate":
            indices = [state.step % len(self.lms)]
        diagnose = cfg.diagnostics_every > 0 and state.step % cfg.diagnostics_every == 0

        inputs = self.features(batch["content"], wire.required_features)
        z, codes = wire.encode_with_codes(inputs)  # (B, M_total, d_z); per-token codes or None
        terms: dict[str, torch.Tensor] = {}
        metrics: dict[str, float] = {"text_batch": float(text_batch)}
        record: dict = {"step": state.step + 1, "phase": phase.name, "text_batch": text_batch, "models": {}}
        num_tokens = 0
        for i in indices:
            lm = self.lms[i]
            soft = wire.soft_tokens(z, i)  # (B, M, d)
            answers = [lm.answer_ids(a)[: cfg.data.max_answer_tokens] for a in batch["answer"]]
            answer_ids = lm.pad_answers(answers).to(soft.device)
            answer_mask = lm.answer_mask(answers, answer_ids.shape[1]).to(soft.device)
            num_tokens += int(answer_mask.sum())
            name = lm.name
            need_recon = loss_cfg.recon > 0 or text_batch or loss_cfg.recon_cos_threshold > 0
            if need_recon and codes is not None:  # every token code read back as this model's token
                recon, recon_cos = L.token_reconstruction(
                    wire.adapters[i](codes.values), inputs.aligned_embeds[i].to(soft.device), codes.mask
                )
            elif need_recon:  # M soft tokens vs the M-segment mean pool of the prompt embeddings
                content, content_mask = content_embeddings(lm, batch["content"], cfg.encoder.max_tokens)
                recon, recon_cos = L.reconstruction(
                    soft, content.to(soft.device), content_mask.to(soft.device), lm.embed_rms
                )
            if need_recon:
                metrics[f"{name}/recon_cos"] = recon_cos.item()
                self._update_backoff(state, i, recon_cos.item())
                if loss_cfg.recon > 0 or text_batch:
                    terms[f"{name}/recon"] = max(loss_cfg.recon, 1.0 if text_batch else 0.0) * recon
            gold_embed = lm.embed(answer_ids[:, 0]).to(soft.dtype)  # (B, d)
            if loss_cfg.align > 0:
                terms[f"{name}/align"] = max(loss_cfg.align, 1.0 if text_batch else 0.0) * L.cosine_distance(
                    soft[:, 0], gold_embed
                )
            if cfg.adapter.affine_l2 > 0:
                terms[f"{name}/identity"] = cfg.adapter.affine_l2 * wire.adapters[i].identity_penalty()
            if text_batch:
                continue
            ema = state.extra.get("recon_cos_ema", {}).get(name)
            backed_off = (
                loss_cfg.recon_cos_threshold > 0 and ema is not None and ema < loss_cfg.recon_cos_threshold
            )
            gen = L.generation_scale(loss_cfg, state.step, backed_off)
            metrics[f"{name}/gen_scale"] = gen
            if gen == 0:  # reconstruction warm-up: no pass through the frozen LLM
                continue
            prompt, prompt_mask = latent_prompt(lm, soft)
            logits = lm.teacher_forced_logits(prompt, prompt_mask, answer_ids, answer_mask)  # (B, A, V)
            first_w = L.first_token_weight(loss_cfg, phase_step, phase.steps, phase.first_token_scale)
            if gen > 0:
                if loss_cfg.answer_ce > 0:
                    terms[f"{name}/answer_ce"] = (
                        gen * loss_cfg.answer_ce * L.masked_token_ce(logits, answer_ids, answer_mask)
                    )
                if first_w > 0:
                    terms[f"{name}/first_ce"] = (
                        gen * first_w * L.first_k_ce(logits, answer_ids, answer_mask, 1)
                    )
                if loss_cfg.k_token > 0:
                    terms[f"{name}/k_ce"] = (
                        gen * loss_cfg.k_token * L.first_k_ce(logits, answer_ids, answer_mask, loss_cfg.k)
                    )
                if loss_cfg.kd > 0 and self.teachers[i] is not None:
                    steps = min(loss_cfg.k, logits.shape[1])
                    t_ids, t_logp = self.teachers[i].batch(batch["index"], steps)
                    terms[f"{name}/kd"] = (
                        gen
                        * loss_cfg.kd
                        * L.kd_top_k(
                            logits[:, :steps],
                            t_ids.to(soft.device),
                            t_logp.to(soft.device),
                            answer_mask[:, :steps],
                            loss_cfg.kd_tau,
                        )
                    )
                if loss_cfg.entropy > 0:
                    terms[f"{name}/entropy"] = -gen * loss_cfg.entropy * L.entropy(logits[:, 0])
            with torch.no_grad():
                diag = L.first_token_diagnostics(logits[:, 0], answer_ids[:, 0])
                metrics.update({f"{name}/{k}": v for k, v in diag.items()})
                metrics[f"{name}/answer_nll"] = L.masked_token_ce(logits, answer_ids, answer_mask).item()
            if diagnose:
                predicted = logits[:, 0].argmax(-1).tolist()
                record["models"][name] = {
                    **diag,
                    "first_token_weight": first_w,
                    "prefix_rms": token_rms(soft).mean().item(),
                    "embed_rms": lm.embed_rms,
                    "predicted_first_tokens": dict(Counter(lm.tokenizer.decode([t]) for t in predicted)),
                }
        if not terms:
            raise RuntimeError(f"step {state.step + 1}: no loss term is active (all weights are 0)")
        total = sum(terms.values())
        for key, value in terms.items():
            metrics[f"loss/{key}"] = value.item()
        grad_diag = cfg.grad_diag_every > 0 and state.step % cfg.grad_diag_every == 0
        if grad_diag:
            record["grad_norms"] = self._grad_norms(wire, terms)
        if diagnose or grad_diag:
            record["losses"] = {k: v.item() for k, v in terms.items()}
            self._write_diagnostics(record)
        return StepOutput(loss=total, num_tokens=num_tokens, metrics=metrics)

    def _context_loss(self, wire: WireModel, batch: dict, state: TrainState) -> StepOutput:
        """Context scope: autoencoding through every frozen model (it regenerates the context from the
        soft tokens) and, after `loss.autoencode_only_steps`, the answer CE with the question as text.
        One teacher-forced pass per model and objective, the whole batch at once."""
        from latentlm.wire.features import autoencode_prompts, context_prompts

        cfg, loss_cfg = self.cfg, self.cfg.loss
        out = wire(self.features(batch["context"], wire.required_features, batch["question"]))
        answer_pass = state.step >= loss_cfg.autoencode_only_steps
        terms: dict[str, torch.Tensor] = {}
        metrics: dict[str, float] = {"latent_positions": float(out.latent_mask.sum(-1).float().mean())}
        num_tokens = 0
        for i, lm in enumerate(self.lms):
            soft = out.soft_tokens[i]  # (B, M, d)
            pieces = out.pieces(i)  # (M_b, d) each
            if loss_cfg.autoencode > 0:
                targets = [lm.encode(c)[: loss_cfg.autoencode_tokens] for c in batch["context"]]
                target_ids = lm.pad_answers(targets).to(soft.device)
                target_mask = lm.answer_mask(targets, target_ids.shape[1]).to(soft.device)
                prompt, prompt_mask = autoencode_prompts(lm, pieces)
                logits = lm.teacher_forced_logits(prompt, prompt_mask, target_ids, target_mask)  # (B, T, V)
                ae = L.masked_token_ce(logits, target_ids, target_mask)
                terms[f"{lm.name}/autoencode"] = loss_cfg.autoencode * ae
                metrics[f"{lm.name}/autoencode_nll"] = ae.item()
                num_tokens += int(target_mask.sum())
            if cfg.adapter.affine_l2 > 0:
                terms[f"{lm.name}/identity"] = cfg.adapter.affine_l2 * wire.adapters[i].identity_penalty()
            if not answer_pass:
                continue
            answers = [lm.answer_ids(a)[: cfg.data.max_answer_tokens] for a in batch["answer"]]
            answer_ids = lm.pad_answers(answers).to(soft.device)
            answer_mask = lm.answer_mask(answers, answer_ids.shape[1]).to(soft.device)
            prompt, prompt_mask = context_prompts(lm, pieces, batch["question"])
            logits = lm.teacher_forced_logits(prompt, prompt_mask, answer_ids, answer_mask)  # (B, A, V)
            answer_nll = L.masked_token_ce(logits, answer_ids, answer_mask)
            if loss_cfg.answer_ce > 0:
                terms[f"{lm.name}/answer_ce"] = loss_cfg.answer_ce * answer_nll
            if loss_cfg.first_token > 0:
                terms[f"{lm.name}/first_ce"] = loss_cfg.first_token * L.first_k_ce(
                    logits, answer_ids, answer_mask, 1
                )
            metrics[f"{lm.name}/answer_nll"] = answer_nll.item()
            with torch.no_grad():
                diag = L.first_token_diagnostics(logits[:, 0], answer_ids[:, 0])
            metrics.update({f"{lm.name}/{k}": v for k, v in diag.items()})
            num_tokens += int(answer_mask.sum())
        total = sum(terms.values())
        metrics.update({f"loss/{k}": v.item() for k, v in terms.items()})
        return StepOutput(loss=total, num_tokens=num_tokens, metrics=metrics)

    def _update_backoff(self, state: TrainState, index: int, cos: float) -> None:
        """EMA of the reconstruction cosine per model, kept in `state.extra` so resume is exact."""
        emas = state.extra.setdefault("recon_cos_ema", {})
        name = self.lms[index].name
        previous = emas.get(name)
        emas[name] = cos if previous is None else 0.9 * previous + 0.1 * cos

    @staticmethod
    def _grad_norms(wire: WireModel, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """Norm of d(term)/d(trainable params) for each weighted term (retain_graph, no .grad change)."""
        params = [p for p in wire.parameters() if p.requires_grad]
        norms = {}
        for key, value in terms.items():
            if not value.requires_grad:
                continue
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            norms[key] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None) + 0.0))
        return norms

    def _write_diagnostics(self, record: dict) -> None:
        self.run_path.mkdir(parents=True, exist_ok=True)
        with (self.run_path / "diagnostics.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ in-training evaluation
    def evaluate(self, model: nn.Module, state: TrainState) -> dict[str, float]:
        """First-token top-1 and gold NLL/token of the latent on a few dev questions, per model."""
        wire: WireModel = getattr(model, "module", model)
        return latent_dev_scores(wire, self.lms, self.features, self.dev_items, self.cfg)


@torch.no_grad()
def latent_dev_scores(
    wire: WireModel, lms: list[FrozenLM], features: FeatureBuilder, items: list[QAItem], cfg: WireRunConfig
) -> dict[str, float]:
    """First-token top-1 and gold NLL/token of the latent on `items`, per model, and `gold_nll_mean`
    (the in-training evaluation; the context benchmark also scores the step-0 model with it)."""
    from latentlm.wire.evaluate import score_gold

    if not items:
        return {}
    out: dict[str, float] = {}
    nlls = []
    questions = [i.question for i in items]
    golds = [i.answer for i in items]
    texts = wire.encoder_texts([i.context for i in items], questions)
    encoded = wire(features(texts, wire.required_features, questions), gain=cfg.eval.prefix_gain)
    for index, lm in enumerate(lms):
        prompt, mask = wire.prompt(index, encoded.soft_tokens[index], encoded.mask_for(index), questions)
        scores = score_gold(lm, prompt, mask, golds, cfg.data.max_answer_tokens)
        out[f"{lm.name}/first_top1"] = scores["first_top1"]
        out[f"{lm.name}/gold_nll"] = scores["gold_nll"]
        nlls.append(scores["gold_nll"])
    out["gold_nll_mean"] = float(np.mean(nlls))
    return out


def selection_dev_examples(cfg: WireRunConfig) -> list[SquadExample]:
    """The dev questions of the in-training evaluation (`best/`): `eval.in_training_examples` of them,
    after the `data.dev_limit` ones that `eval` scores."""
    from latentlm.wire.data import resolve_examples

    return resolve_examples(
        cfg.data.dev,
        "validation",
        cfg.eval.in_training_examples,
        cfg.data.max_context_chars,
        cfg.data.dev_limit,
    )


def train_wire(
    cfg: WireRunConfig,
    lms: list[FrozenLM] | None = None,
    sentence: SentenceStates | None = None,
) -> Path:
    """Train as configured (`train_task`: config, engine checkpoints, `best/`, `model/`); returns the
    run directory. `lms` / `sentence` reuse frozen models already loaded (tests, benchmarks)."""
    from latentlm.core.lifecycle import train_task
    from latentlm.core.run import RunDir
    from latentlm.wire.data import resolve_examples
    from latentlm.wire.features import build_features
    from latentlm.wire.frozen import load_frozen_lms

    lms = list(lms) if lms is not None else load_frozen_lms(cfg.models, cfg.prompt)
    features, st_dim = build_features(cfg.encoder, lms, sentence, "anchor_budget" in cfg.eval.baselines)
    train = resolve_examples(cfg.data.train, "train", cfg.data.train_limit, cfg.data.max_context_chars)
    run = RunDir(cfg.run_dir)
    task = WireTask(cfg, lms, features, train, selection_dev_examples(cfg), run.path, st_dim)
    train_task(task, cfg, run)
    run.close()
    return run.path
