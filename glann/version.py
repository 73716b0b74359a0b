"""glann's version, read from the installed package metadata (``pyproject.toml`` is its one source)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("glann")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"
