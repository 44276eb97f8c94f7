"""Print the markdown results table of docs/wire.md from benchmarks/results/wire_squad*.json.

Files from `benchmarks.wire_modes` add their modes (anchor-budget F1, nearest-token latent F1) to
the rows of the same M and model.

python -m benchmarks.wire_table [benchmarks/results/wire_squad_M16.json ... wire_modes.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from latentlm.core.bench import RESULTS


def _fmt(entry: dict | None, key: str, scale: float = 1.0) -> str:
    if not entry or entry.get(key) is None:
        return "–"
    return f"{entry[key] * scale:.1f}"


def main(paths: list[str]) -> None:
    files = [Path(p) for p in paths] or sorted(RESULTS.glob("wire_squad_M*.json"))
    text: dict[str, dict] = {}
    extra: dict[tuple[str, str], dict] = {}
    rows = []
    for path in files:
        data = json.loads(path.read_text())
        for run_name, run in data["runs"].items():
            for model, m in run["models"].items():
                if "latent" not in m:  # a wire_modes file
                    extra.setdefault((run_name, model), {}).update(m)
                    continue
                if m.get("text"):
                    text[model] = m["text"]
                rows.append((path.name, data["machine"], run_name, model, m, run))
    print(
        "| M | model | text F1 / EM | token-budget F1 / EM | anchor-budget F1 | PCA F1 | mean-pool F1 "
        "| latent F1 / EM | nearest-token latent F1 | latent first-tok top-1 / top-5 (%) "
        "| latent gold NLL | text tokens / M | prefill speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for _, _, run_name, model, m, _ in rows:
        t, b, lat = text.get(model), m["token_budget"], m["latent"]
        cells = [
            run_name[1:],
            model,
            f"{_fmt(t, 'f1')} / {_fmt(t, 'em')}",
            f"{_fmt(b, 'f1')} / {_fmt(b, 'em')}",
            _fmt(extra.get((run_name, model), {}).get("anchor_budget"), "f1"),
            _fmt(m.get("pca"), "f1"),
            _fmt(m.get("mean_pool"), "f1"),
            f"{_fmt(lat, 'f1')} / {_fmt(lat, 'em')}",
            _fmt(extra.get((run_name, model), {}).get("latent_nearest"), "f1"),
            f"{_fmt(lat, 'first_top1', 100)} / {_fmt(lat, 'first_top5', 100)}",
            f"{lat['gold_nll']:.2f}",
            f"{m['prompt_tokens_mean']:.0f} / {m['token_compression_ratio']:.1f}x",
            f"{m['prefill']['speedup']:.2f}x",
        ]
        print("| " + " | ".join(cells) + " |")
    print()
    seen = set()
    for name, machine, run_name, _model, _m, run in rows:
        if (name, run_name) in seen:
            continue
        seen.add((name, run_name))
        compression = run["compression"]
        print(
            f"- {name} ({run_name}): {run['num_dev_questions']} dev questions; "
            f"train {run['train_seconds']:.0f} s, "
            f"eval {run['eval_seconds']:.0f} s; latent {compression['latent_bytes']['fp16']} B at fp16 vs "
            f"{compression['prompt_utf8_bytes_mean']:.0f} B of UTF-8 prompt; joint rescoring "
            f"{run['joint_rescoring']}; {machine['cpu']}, {machine['cores']} cores, "
            f"{machine['torch_threads']} torch thread(s), {machine['date']}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
