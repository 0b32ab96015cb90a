"""Published supernets (OFA MobileNetV3, AttentiveNAS / AlphaNet) read into our supernet, tensor for tensor."""

from supernet.published.archs import PUBLISHED_MODELS, ofa_arch, source_arch
from supernet.published.importer import ImportedRun, import_checkpoint
from supernet.published.reading import FORMATS, PublishedFormatError, canonical_key, detect_format, read_state

__all__ = [
    "FORMATS",
    "PUBLISHED_MODELS",
    "ImportedRun",
    "PublishedFormatError",
    "canonical_key",
    "detect_format",
    "import_checkpoint",
    "ofa_arch",
    "read_state",
    "source_arch",
]
