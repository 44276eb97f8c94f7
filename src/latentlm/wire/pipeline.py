"""Glue from a `WireRunConfig` to frozen models, data, training and evaluation.

`train_wire` writes a run directory: config.yaml, metrics.jsonl, diagnostics.jsonl, engine
checkpoints, `best/` (lowest in-training gold NLL) and `wire/` (the final `WireModel`:
encoder + every adapter + its config). `evaluate_run` rebuilds exactly that model from the run
directory and writes `eval/metrics.json`, `eval/predictions.jsonl` and `eval/report.md`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from latentlm.core.config import load_run_config
from latentlm.core.engine import Trainer, load_model_weights
from latentlm.core.run import RunDir
from latentlm.data.squad import SquadExample, load_squad, select_examples
from latentlm.data.synthetic_qa import synthetic_squad
from latentlm.wire.adapters import WireModel
from latentlm.wire.config import WireRunConfig
from latentlm.wire.evaluate import evaluate_wire, write_outputs
from latentlm.wire.features import FeatureBuilder, SentenceStates
from latentlm.wire.models import FrozenLM, format_content, load_frozen_lm
from latentlm.wire.task import WireTask


def resolve_examples(
    spec: str, split: str, limit: int, max_context_chars: int, offset: int = 0, seed: int = 0
) -> list[SquadExample]:
    """Questions from 'synthetic', 'squad' (Hugging Face) or a JSON path (relative: under $LATENTLM_DATA).

    Keeps paragraphs of at most `max_context_chars` characters, then `limit` questions from `offset`.
    """
    if spec == "synthetic":
        return synthetic_squad(offset + (limit or 64), seed=seed + (0 if split == "train" else 1))[offset:]
    if spec == "squad":
        examples = load_squad("squad", split=split)
    else:
        path = Path(spec)
        if not path.is_absolute() and not path.exists():
            from latentlm.data.paths import data_root

            path = data_root() / spec
        examples = load_squad(path)
    if max_context_chars > 0:
        examples = [e for e in examples if len(e.context) <= max_context_chars]
    return select_examples(examples, limit, offset)


def load_lms(cfg: WireRunConfig) -> list[FrozenLM]:
    """The frozen models of `cfg.models` with the configured prompting policy."""
    lms = []
    for name in cfg.models:
        lm = load_frozen_lm(
            name, "plain", cfg.prompt.anchor_text, cfg.prompt.add_bos, cfg.prompt.bos_after_prefix
        )
        style = cfg.prompt.style
        if style == "auto":
            style = "chat" if getattr(lm.tokenizer, "chat_template", None) else "plain"
        if style != "plain":
            lm = FrozenLM(
                lm.model,
                lm.tokenizer,
                name,
                style,
                cfg.prompt.anchor_text,
                cfg.prompt.add_bos,
                cfg.prompt.bos_after_prefix,
            )
        lms.append(lm)
    return lms


def build_features(cfg: WireRunConfig, lms: Sequence[FrozenLM], sentence: SentenceStates | None = None):
    """Feature builder for the configured encoder (loads the sentence encoder only if it is read)."""
    reads_sentence = cfg.encoder.kind != "byte" or "anchor_budget" in cfg.eval.baselines
    if sentence is None and reads_sentence:
        sentence = SentenceStates.load(cfg.encoder.sentence_encoder, cfg.encoder.max_tokens)
    features = FeatureBuilder(lms, sentence, cfg.encoder.max_bytes, cfg.encoder.max_tokens)
    st_dim = sentence.dim if sentence is not None else 384
    return features, st_dim


def train_wire(
    cfg: WireRunConfig,
    lms: Sequence[FrozenLM] | None = None,
    sentence: SentenceStates | None = None,
) -> Path:
    """Run Stage A + Stage B as configured; returns the run directory."""
    lms = list(lms) if lms is not None else load_lms(cfg)
    features, st_dim = build_features(cfg, lms, sentence)
    train = resolve_examples(cfg.data.train, "train", cfg.data.train_limit, cfg.data.max_context_chars)
    # In-training evaluation (best checkpoint) uses dev questions after the ones `eval` scores.
    dev = resolve_examples(
        cfg.data.dev,
        "validation",
        cfg.eval.in_training_examples,
        cfg.data.max_context_chars,
        cfg.data.dev_limit,
    )
    run = RunDir(cfg.run_dir)
    run.save_config(cfg)
    task = WireTask(cfg, lms, features, train, dev, run.path, st_dim)
    trainer = Trainer(task, cfg.train, run)
    trainer.fit()
    trainer.model.save_pretrained(run.path / "wire")
    run.close()
    return run.path


def load_wire(run_dir: str | Path, checkpoint: str = "best") -> WireModel:
    """The trained `WireModel` of a run: `wire/` (config + final weights), then `best/` weights if asked."""
    run_dir = Path(run_dir)
    wire = WireModel.from_pretrained(run_dir / "wire")
    if checkpoint == "best" and (run_dir / "best" / "model.safetensors").is_file():
        load_model_weights(wire, run_dir / "best")
    return wire.eval()


def evaluate_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    checkpoint: str = "best",
    lms: Sequence[FrozenLM] | None = None,
    sentence: SentenceStates | None = None,
    out_name: str = "eval",
) -> dict:
    """Evaluate a trained run; writes `<run_dir>/<out_name>/` and returns the metrics."""
    cfg = load_run_config(WireRunConfig, run_dir, overrides)
    lms = list(lms) if lms is not None else load_lms(cfg)
    wire = load_wire(run_dir, checkpoint)
    features, _ = build_features(cfg, lms, sentence)
    dev = resolve_examples(cfg.data.dev, "validation", cfg.data.dev_limit, cfg.data.max_context_chars)
    train = resolve_examples(cfg.data.train, "train", cfg.eval.pca_fit_examples, cfg.data.max_context_chars)
    metrics, records = evaluate_wire(
        cfg, wire, lms, features, dev, [format_content(e.context, e.question) for e in train]
    )
    metrics["checkpoint"] = checkpoint
    write_outputs(Path(run_dir) / out_name, metrics, records, run_dir)
    return metrics
