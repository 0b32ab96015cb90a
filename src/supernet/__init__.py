"""supernet: once-for-all training of weight-sharing supernets and extraction of specialised sub-networks."""

from importlib.metadata import PackageNotFoundError, version

from supernet import spaces
from supernet.allocator import retain_freed_memory
from supernet.export import export_subnet, load_subnet, verify_onnx
from supernet.model import Supernet
from supernet.runs import load_supernet
from supernet.space import Arch, ArchError, SearchSpace, SpaceError

try:
    __version__ = version("supernet")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+src"

__all__ = [
    "Arch",
    "ArchError",
    "SearchSpace",
    "SpaceError",
    "Supernet",
    "__version__",
    "export_subnet",
    "load_subnet",
    "load_supernet",
    "retain_freed_memory",
    "spaces",
    "verify_onnx",
]
