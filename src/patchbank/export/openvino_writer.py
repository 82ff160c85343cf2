"""Writing the OpenVINO IR (``model.xml`` + ``model.bin``) of an exported ONNX graph.

The IR is OpenVINO's own conversion of the ONNX file (``openvino.convert_model``), saved with
the weights as they are (``compress_to_fp16=False``: a float16 bank is float16 because the graph
stores it so, nothing else is rounded).  The .bin file has no 2 GiB limit.
"""
from __future__ import annotations

from pathlib import Path

from patchbank.errors import PatchbankError


def write_openvino(onnx_path: Path, xml_path: Path) -> None:
    """Convert ``onnx_path`` (with its external data, if any) to IR at ``xml_path`` (+ .bin)."""
    ov = import_openvino()
    try:
        model = ov.convert_model(str(onnx_path))
        ov.save_model(model, str(xml_path), compress_to_fp16=False)
    except Exception as exc:   # OpenVINO raises RuntimeError / OVAny errors with long messages
        raise PatchbankError(f"OpenVINO could not convert the ONNX graph "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})") from exc


def import_openvino():
    """The ``openvino`` module, or the one-line error naming the extra to install."""
    try:
        import openvino
    except ImportError:
        raise PatchbankError("OpenVINO is not installed: pip install 'patchbank[export]'") from None
    return openvino
