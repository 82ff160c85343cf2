"""patchbank: training-free industrial visual anomaly detection.

images -> features -> (fusion, projection) -> bank -> patch scores -> map -> image score -> decision
"""
from patchbank.config import PRESETS, Config
from patchbank.errors import PatchbankError

__version__ = "0.1.0"

__all__ = ["Config", "PRESETS", "PatchbankError", "Detector", "MultiDetector", "load_any", "__version__"]


def __getattr__(name: str):
    # Detector and friends import torch; load them on first use so `import patchbank` stays light.
    if name == "Detector":
        from patchbank.detector import Detector
        return Detector
    if name in ("MultiDetector", "load_any"):
        from patchbank import multi
        return getattr(multi, name)
    raise AttributeError(f"module 'patchbank' has no attribute {name!r}")
