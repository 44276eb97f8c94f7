"""A training corpus sampled from a causal-LM teacher (as GeLaTo and Ctrl-G distil GPT-2 into HMMs).

:func:`sample_corpus` draws sequences from the teacher (ancestral sampling, temperature / top-k),
decodes them and writes them one a line into a text file cached under a content hash of the teacher
and the sampling settings. The LVD pipeline then reads that file with the teacher's tokenizer and
takes the same teacher's hidden states as the embeddings, so a distilled run needs no dataset.
"""

from __future__ import annotations

from pathlib import Path

import torch

from latentlm.core.checkpoint import atomic_write_text
from latentlm.core.run import progress
from latentlm.data.cache import content_hash
from latentlm.hmm.config import DistillConfig


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
        input_ids = torch.tensor([prompt_ids] * size)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=True,
            temperature=cfg.temperature,
            top_k=cfg.top_k or None,
            top_p=1.0,
            max_new_tokens=cfg.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row in out[:, len(prompt_ids) :]:
            text = " ".join(tokenizer.decode(row, skip_special_tokens=True).split())
            if text:
                texts.append(text)
        bar.update(size)
    bar.close()
    torch.manual_seed(generator_seed)
    if not texts:
        raise ValueError("distill: the teacher produced only empty samples; raise distill.max_new_tokens")
    return texts


def sample_corpus(teacher_name: str, cfg: DistillConfig, cache_dir: Path) -> Path:
    """Sample (or reuse) the distilled corpus; returns the path of its one-sequence-a-line file."""
    key = content_hash("distill", teacher_name, vars(cfg))
    path = Path(cache_dir) / f"distilled-{key}.txt"
    if not path.is_file():
        from latentlm.teachers import load_causal_lm

        try:
            model, tokenizer = load_causal_lm(teacher_name)
        except FileNotFoundError as err:
            raise ValueError(f"lvd.teacher.name: {err}") from err
        atomic_write_text(path, "\n".join(sample_texts(model, tokenizer, cfg)) + "\n")
    return path
