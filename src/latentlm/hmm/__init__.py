"""Hidden Markov language models trained with Latent Variable Distillation (``latentlm hmm``).

Role files: ``config`` (every dataclass of a run), ``model`` (HMMLanguageModel: dense and neural
parameterisations, its vocabulary saved inside ``model/``), ``data`` (corpora, vocabularies, batches),
``task`` (the engine Task: LVD phases, AdamW or EM, and one training run), ``evaluate`` (held-out
perplexity, reports, ``latentlm hmm eval``), ``cli``. Algorithms: ``forward`` (scaled GEMM
forward–backward, joint, posteriors, Viterbi), ``estimate`` (count estimate, EM step), ``em`` (EM as a
torch optimizer), ``teacher`` / ``lvd`` (LVD steps 1–3 and the closed-form phase), ``distill`` (corpora
sampled from a causal-LM teacher). See docs/hmm.md.
"""

from latentlm.hmm.config import HMMConfig, HMMRunConfig
from latentlm.hmm.data import Vocabulary
from latentlm.hmm.model import HMMLanguageModel, HMMOutput, HMMParameters

__all__ = ["HMMConfig", "HMMLanguageModel", "HMMOutput", "HMMParameters", "HMMRunConfig", "Vocabulary"]
