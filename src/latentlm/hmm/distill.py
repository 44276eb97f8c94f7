"""A training corpus sampled from a causal-LM teacher (as GeLaTo and Ctrl-G distil GPT-2 into HMMs).

:func:`sample_corpus` draws sequences from the teacher (ancestral sampling, temperature / top-k),
decodes them and writes them one a line into a text file cached under a content hash of the teacher's
weights (``teachers.model_fingerprint``), the sampler's version and the sampling settings. The LVD
pipeline then reads that file with the teacher's tokenizer and takes the same teacher's hidden states as
the embeddings, so a distilled run needs no dataset.
"""

from __future__ import annotations

from pathlib import Path

import torch

from latentlm import teachers
from latentlm.core.checkpoint import atomic_write_text
from latentlm.core.run import progress
from latentlm.core.sampling import sample_categorical
from latentlm.data.cache import content_hash
from latentlm.hmm.config import DistillConfig

SAMPLER_VERSION = 1
"""Part of the corpus cache key: bump it when a change to the sampling code changes the draws."""


@torch.no_grad()
def sample_texts(model, tokenizer, cfg: DistillConfig) -> list[str]:
    """Sample ``cfg.num_sequences`` continuations from a causal LM; returns the decoded texts."""
    generator_seed = torch.initial_seed()
    torch.manual_seed(cfg.seed)
    if cfg.prompt:
        prompt_ids = tokenizer(cfg.prompt, add_special_tokens=False)["input_ids"]
    else:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        prompt_ids = [start]
    texts: list[str] = []
    bar = progress(total=cfg.num_sequences, desc="sampling from teacher")
    for begin in range(0, cfg.num_sequences, cfg.batch_size):
        size = min(cfg.batch_size, cfg.num_sequences - begin)
        for row in sample_continuations(model, prompt_ids, size, cfg, tokenizer.eos_token_id):
            text = " ".join(tokenizer.decode(row, skip_special_tokens=True).split())
            if text:
                texts.append(text)
        bar.update(size)
    bar.close()
    torch.manual_seed(generator_seed)
    if not texts:
        raise ValueError("distill: the teacher produced only empty samples; raise distill.max_new_tokens")
    return texts


def sample_continuations(
    model, prompt_ids: list[int], size: int, cfg: DistillConfig, eos_id: int | None
) -> list[list[int]]:
    """Ancestral sampling of ``size`` continuations of one prompt, each cut after its first EOS.

    A key-value-cached loop that computes the last position's logits only and draws by inverse CDF (one
    uniform per row, ``core.sampling``): on a 49k vocabulary much faster than ``generate``'s
    multinomial, which draws an exponential per vocabulary entry.
    """
    device = next(model.parameters()).device
    step_ids = torch.tensor([prompt_ids] * size, device=device)  # (size, prompt)
    finished = torch.zeros(size, dtype=torch.bool, device=device)
    cache, drawn = None, []
    for _ in range(cfg.max_new_tokens):
        out = model(input_ids=step_ids, cache=cache, use_cache=True, logits_to_keep=1)
        cache = out.cache
        next_ids = sample_categorical(
            out.logits[:, -1], cfg.temperature, cfg.top_k, method="inverse_cdf"
        )  # (size,)
        drawn.append(next_ids)
        if eos_id is not None:
            finished |= next_ids == eos_id
            if bool(finished.all()):
                break
        step_ids = next_ids[:, None]  # (size, 1)
    rows = torch.stack(drawn, 1).tolist()  # (size, steps)
    return [row[: row.index(eos_id) + 1] if eos_id in row else row for row in rows]


def sample_corpus(teacher_name: str, cfg: DistillConfig, cache_dir: Path) -> Path:
    """Sample (or reuse) the distilled corpus; returns the path of its one-sequence-a-line file."""
    key = content_hash("distill", SAMPLER_VERSION, teachers.model_fingerprint(teacher_name), vars(cfg))
    path = Path(cache_dir) / f"distilled-{key}.txt"
    if not path.is_file():
        from latentlm.teachers.attention import GROUPED_QUERY

        try:
            model, tokenizer = teachers.load_causal_lm(teacher_name, dtype=getattr(torch, cfg.dtype))
            model.set_attn_implementation(GROUPED_QUERY)  # reads the cache in place (teachers.attention)
        except FileNotFoundError as err:
            raise ValueError(f"lvd.teacher.name: {err}") from err
        atomic_write_text(path, "\n".join(sample_texts(model, tokenizer, cfg)) + "\n")
    return path
