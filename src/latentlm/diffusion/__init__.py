"""Joint text-latent diffusion with a two-stream RWKV denoiser (seed 002).

Public names: the run config (`DiffusionConfig`, `ModelConfig`), the model (`LatentDiffusionLM`), the
engine task (`DiffusionTask`) and the samplers.  Load a trained model without the CLI or the data::

    from latentlm.diffusion import LatentDiffusionLM
    model = LatentDiffusionLM.from_pretrained("runs/diffusion_tiny/model")
    print(model.generate(num_samples=4, num_steps=16))
"""

from latentlm.diffusion.config import DiffusionConfig, ModelConfig
from latentlm.diffusion.model import DiffusionLMOutput, LatentDiffusionLM, TwoStreamDenoiser
from latentlm.diffusion.sampling import sample_joint, sample_latent_from_text, sample_text_from_latent
from latentlm.diffusion.task import DiffusionTask

__all__ = [
    "DiffusionConfig",
    "ModelConfig",
    "LatentDiffusionLM",
    "DiffusionLMOutput",
    "TwoStreamDenoiser",
    "DiffusionTask",
    "sample_joint",
    "sample_latent_from_text",
    "sample_text_from_latent",
]
