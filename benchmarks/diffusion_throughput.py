"""Training and sampling throughput: RWKV two-stream denoiser vs the attention (MDLM/DiT-like) peer.

Both denoisers share everything but the sequence mixer (same width, depth, heads, latent tokens,
embeddings, adaLN-Zero, heads); the peer replaces the bidirectional WKV time mix with joint softmax
attention and the channel mix with a GELU MLP.  Measured in the same process on the same batches:

* training tokens/s: AdamW steps of the Stage I ``stage1_coupling`` loss (forward + backward + step);
* sampling tokens/s: generated tokens per second of ``sample_text_from_latent`` (L2T) with
  ``--sample-steps`` denoising steps;

at the corpus' sentence length (real pydocs sentences, from ``precompute-latents``) and at longer
synthetic lengths (random ids, the same model), where the linear-time recurrence should pay off.

    python benchmarks/diffusion_throughput.py [--data runs/diffusion_data/pydocs] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from latentlm.core.bench import save_results
from latentlm.core.config import load_config
from latentlm.diffusion.config import DiffusionConfig
from latentlm.diffusion.data import DirectFileDataset
from latentlm.diffusion.model import LatentDiffusionLM
from latentlm.diffusion.sampling import sample_text_from_latent
from latentlm.diffusion.task import DiffusionTask


def _batches(dataset: DirectFileDataset, task: DiffusionTask, batch_size: int, length: int, count: int):
    """``count`` batches: real rows at the corpus length, random ids for longer lengths."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for i in range(count):
        items = [dataset[(i * batch_size + j) % len(dataset)] for j in range(batch_size)]
        batch = task.collate(items)
        if length != batch["input_ids"].shape[1]:
            batch["input_ids"] = torch.randint(1000, 30000, (batch_size, length), generator=g)
        batches.append(batch)
    return batches


def _train_rate(model, task, batches) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step(batch):
        loss = task.compute_losses(model, batch, "stage1_coupling")["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    elapsed = time.perf_counter() - start
    return sum(b["input_ids"].numel() for b in batches[1:]) / elapsed


def _sample_rate(model, batch, steps: int) -> float:
    model.eval()
    length = batch["input_ids"].shape[1]
    sample_text_from_latent(model, batch["latent"][:2], seq_len=length, num_steps=2)  # warm-up
    start = time.perf_counter()
    ids = sample_text_from_latent(
        model, batch["latent"], seq_len=length, num_steps=steps, generator=torch.Generator().manual_seed(0)
    )
    return ids.numel() / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="runs/diffusion_data/pydocs")
    parser.add_argument("--config", default="configs/diffusion/rwkv_mmdit.yaml")
    parser.add_argument("--lengths", default="40,128,512")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--sample-steps", type=int, default=16)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "tokens" / "meta.json").is_file():
        raise SystemExit(f"{data}: run `latentlm diffusion precompute-latents ... out_dir={data}` first")
    cfg = load_config(
        DiffusionConfig,
        args.config,
        [f"data.token_dir={data / 'tokens'}", f"data.latent_dir={data / 'latents'}"],
    )
    task = DiffusionTask(cfg)
    dataset = task.train_dataset()
    lengths = [int(x) for x in args.lengths.split(",")]
    train_steps = 3 if args.quick else args.train_steps
    rows = []
    for length in lengths:
        batches = _batches(dataset, task, args.batch_size, length, train_steps + 1)
        row = {
            "seq_len": length,
            "batch_size": args.batch_size,
            "real_text": length == task.token_meta.seq_len,
        }
        for mixer in ("rwkv", "attention"):
            torch.manual_seed(0)
            config = dataclasses.replace(task.model_config, sequence_mixer=mixer, seq_len=max(length, 40))
            model = LatentDiffusionLM(config)
            row[f"{mixer}_params"] = sum(p.numel() for p in model.parameters())
            row[f"{mixer}_train_tokens_per_s"] = _train_rate(model, task, batches)
            row[f"{mixer}_sample_tokens_per_s"] = _sample_rate(
                model, batches[0], 4 if args.quick else args.sample_steps
            )
        row["train_ratio_rwkv_over_attention"] = (
            row["rwkv_train_tokens_per_s"] / row["attention_train_tokens_per_s"]
        )
        row["sample_ratio_rwkv_over_attention"] = (
            row["rwkv_sample_tokens_per_s"] / row["attention_sample_tokens_per_s"]
        )
        rows.append(row)
        print(row, flush=True)
    c = task.model_config
    save_results(
        "diffusion_throughput",
        {
            "description": (
                f"two-stream denoisers d_model={c.d_model} layers={c.num_layers} heads={c.num_heads} "
                f"latent tokens={c.num_latent_tokens} vocab={c.vocab_size}; training = AdamW steps of the "
                f"stage1_coupling loss; sampling = L2T with {args.sample_steps} steps; float32 CPU"
            ),
            "note": "CPU shared with four other engineers' jobs; both models measured back to back",
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
