"""GLANN: Generative Latent Nearest Neighbors (GLO + IMLE), Hoshen, Li & Malik, CVPR 2019."""
__version__ = "0.1.0"

from glann.sampler import GlannSampler, SamplerOutput  # noqa: E402

__all__ = ["GlannSampler", "SamplerOutput", "__version__"]
