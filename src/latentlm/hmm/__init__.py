"""Hidden Markov language models trained with Latent Variable Distillation (``latentlm hmm``).

Modules: ``model`` (HMMConfig, HMMLanguageModel: dense and neural parameterisations), ``forward``
(scaled GEMM forward–backward, joint, posteriors, Viterbi), ``estimate`` (count estimate, EM step),
``corpus`` / ``teacher`` / ``lvd`` (LVD steps 1–3), ``task`` (steps 4–6 on the shared engine),
``distill`` (corpora sampled from a causal-LM teacher), ``train`` / ``report`` / ``cli``.
See docs/hmm.md.
"""

from latentlm.hmm.model import HMMConfig, HMMLanguageModel, HMMParameters

__all__ = ["HMMConfig", "HMMLanguageModel", "HMMParameters"]
