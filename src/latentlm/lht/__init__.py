"""The Learned Hierarchical Transformer (seed 003): an MLM encoder for long documents whose learned
routers segment tokens into nested units, with HDT-style hierarchical attention over a block-sparse
layout. See `docs/lht.md`; entry points are `latentlm lht train|eval` (`latentlm.lht.cli`).

    from latentlm.lht import LHTForMaskedLM
    model = LHTForMaskedLM.from_pretrained("runs/lht-tiny/model").eval()
    print(model.fill_mask("The [MASK] statement raises an exception."))
"""

from latentlm.lht.config import (
    DataConfig,
    EdgeConfig,
    EvalConfig,
    HierarchyConfig,
    LHTConfig,
    LHTRunConfig,
    MaskingConfig,
    SourceConfig,
)
from latentlm.lht.model import LHTForMaskedLM, LHTOutput
from latentlm.lht.task import LHTPretrainTask

__all__ = [
    "DataConfig",
    "EdgeConfig",
    "EvalConfig",
    "HierarchyConfig",
    "LHTConfig",
    "LHTForMaskedLM",
    "LHTOutput",
    "LHTPretrainTask",
    "LHTRunConfig",
    "MaskingConfig",
    "SourceConfig",
]
