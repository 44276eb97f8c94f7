"""Sampling speed of the distillation teacher (issue 10: a >= 1M-token corpus in <= 20 minutes).

SmolLM2-135M draws ``--batch`` continuations of ``--tokens`` tokens from its start token, every row run
to the full length (no EOS stop, so every variant computes the same tokens), in the same process and
alternating, ``--repeats`` times each:

* ``generate_float32``: ``transformers``' ``generate(do_sample=True)`` on the float32 teacher (how
  ``latentlm hmm distill`` sampled before);
* ``generate_bfloat16``: the same on the bfloat16 teacher;
* ``loop_bfloat16``: ``latentlm.hmm.distill.sample_continuations`` (key-value-cached loop, last-position
  logits only, two-level inverse-CDF draws, ``grouped_query`` attention) on the bfloat16 teacher, what
  ``distill.dtype: bfloat16`` (the default) runs;
* ``loop_float32``: the same loop on the float32 teacher (``distill.dtype: float32``; faster on a CPU
  without fast bfloat16 matmuls);
* ``loop_float32_eager``: the float32 loop with transformers' eager attention, which copies the
  key-value cache once per step to repeat its heads (how the loop ran before ``grouped_query``).

Reports new tokens per second (the median over repeats), each variant's ratio to ``generate_float32``
and the minutes 1M tokens would take.

    OMP_NUM_THREADS=2 python3 benchmarks/hmm_distill_speed.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from latentlm.core.bench import save_results
from latentlm.hmm.config import DistillConfig
from latentlm.hmm.distill import sample_continuations
from latentlm.teachers import load_causal_lm
from latentlm.teachers.attention import GROUPED_QUERY


def generate(model, start: int, batch: int, tokens: int) -> None:
    ids = torch.full((batch, 1), start)
    model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=True,
        top_k=None,
        top_p=1.0,
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        pad_token_id=start,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default="smollm2")
    parser.add_argument("--batch", type=int, default=256, help="sequences sampled in parallel")
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per sequence")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="hmm_distill_speed")
    args = parser.parse_args()

    fp32, tokenizer = load_causal_lm(args.teacher, dtype=torch.float32)
    bf16, _ = load_causal_lm(args.teacher, dtype=torch.bfloat16)
    loops = {}
    for name, dtype, attention in (
        ("loop_bfloat16", torch.bfloat16, GROUPED_QUERY),  # as sample_corpus runs it
        ("loop_float32", torch.float32, GROUPED_QUERY),
        ("loop_float32_eager", torch.float32, "eager"),
    ):
        loops[name] = load_causal_lm(args.teacher, dtype=dtype)[0]
        loops[name].set_attn_implementation(attention)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    cfg = DistillConfig(max_new_tokens=args.tokens)
    variants = {
        "generate_float32": lambda: generate(fp32, start, args.batch, args.tokens),
        "generate_bfloat16": lambda: generate(bf16, start, args.batch, args.tokens),
        **{
            name: lambda model=model: sample_continuations(model, [start], args.batch, cfg, eos_id=None)
            for name, model in loops.items()
        },
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    torch.manual_seed(0)
    for run in variants.values():  # warm-up
        run()
    for _ in range(args.repeats):
        for name, run in variants.items():
            began = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - began)
    new_tokens = args.batch * args.tokens
    rows = []
    base = new_tokens / statistics.median(seconds["generate_float32"])
    for name, times in seconds.items():
        rate = new_tokens / statistics.median(times)
        rows.append(
            {
                "variant": name,
                "tokens_per_s": round(rate, 1),
                "ratio_to_generate_float32": round(rate / base, 2),
                "minutes_per_million_tokens": round(1e6 / rate / 60, 1),
                "seconds": [round(s, 2) for s in times],
            }
        )
        print(
            f"{name:>18}: {rate:7.1f} tokens/s ({rate / base:.2f}x), {1e6 / rate / 60:5.1f} min per 1M tokens"
        )
    save_results(
        args.name,
        {
            "description": __doc__.split("\n\n")[1].replace("\n", " "),
            "settings": {**vars(args), "torch_threads": torch.get_num_threads()},
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
