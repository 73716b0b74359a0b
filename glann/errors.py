"""Errors a user can act on. Entry points print them as one line (traceback with HYDRA_FULL_ERROR=1)."""


class GlannError(Exception):
    """Base class: a problem with the user's input, data or artifacts, not a bug."""


class ConfigError(GlannError, ValueError):
    """A config value is invalid; the message names the key."""


class DataError(GlannError):
    """A dataset is missing, empty, corrupt or of the wrong shape."""


class ArtifactError(GlannError):
    """A checkpoint, manifest or sampler directory is missing, corrupt or incompatible."""


class TrainingError(GlannError):
    """Training diverged (NaN/inf loss)."""
