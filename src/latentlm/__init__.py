"""latentlm: training and evaluating latent-variable language models.

Four systems share one core (`latentlm.core`): HMM language models trained with Latent Variable
Distillation (`latentlm.hmm`), LatentWire (`latentlm.wire`), joint text-latent diffusion
(`latentlm.diffusion`) and the Learned Hierarchical Transformer (`latentlm.lht`).
"""

__version__ = "0.1.0"
