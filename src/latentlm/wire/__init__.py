"""LatentWire: a learned encoder compresses text into M soft tokens that condition several different
frozen LLMs through `inputs_embeds` (seeds 001 and 004; issue 12's context compression)."""

from latentlm.wire.config import WireModelConfig, WireRunConfig
from latentlm.wire.evaluate import evaluate_run, load_wire
from latentlm.wire.frozen import FrozenLM, load_frozen_lm, load_frozen_lms
from latentlm.wire.model import WireAdapter, WireModel, WireOutput
from latentlm.wire.task import WireTask, train_wire

__all__ = [
    "FrozenLM",
    "WireAdapter",
    "WireModel",
    "WireModelConfig",
    "WireOutput",
    "WireRunConfig",
    "WireTask",
    "evaluate_run",
    "load_frozen_lm",
    "load_frozen_lms",
    "load_wire",
    "train_wire",
]
