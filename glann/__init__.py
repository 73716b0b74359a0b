"""GLANN: Generative Latent Nearest Neighbors (GLO + IMLE), Hoshen, Li & Malik, CVPR 2019."""
from glann.sampler import GlannSampler, SamplerOutput
from glann.version import __version__

__all__ = ["GlannSampler", "SamplerOutput", "__version__"]
