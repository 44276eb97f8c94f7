"""The Learned Hierarchical Transformer (seed 003): an MLM encoder for long documents whose learned
routers segment tokens into nested units, with HDT-style hierarchical attention over a block-sparse
layout. See `docs/lht.md`; entry points are `latentlm lht train|eval` (`latentlm.lht.cli`).
"""
