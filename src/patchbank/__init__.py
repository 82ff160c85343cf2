"""patchbank: training-free industrial visual anomaly detection.

images -> features -> (fusion, projection) -> bank -> patch scores -> map -> image score -> decision
"""
from patchbank.config import PRESETS, Config
from patchbank.errors import PatchbankError

__version__ = "0.1.0"

__all__ = ["Config", "PRESETS", "PatchbankError", "__version__"]
