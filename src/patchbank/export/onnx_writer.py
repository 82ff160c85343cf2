"""Writing an :class:`~patchbank.export.graph.ExportGraph` as one ONNX file.

torch's dynamo exporter (``torch.export`` + onnxscript) traces the graph once on a sample batch
with a dynamic batch axis named ``batch``; the weights, the bank and the calibration constants
are initializers.  When the initializers pass ``external_over`` bytes (default: the 2 GiB
protobuf limit, less a margin for the graph itself) they are stored as ONNX external data in
``model.onnx.data`` beside the graph; both ONNX Runtime and OpenVINO read that form.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch

from patchbank.errors import PatchbankError
from patchbank.export.graph import OUTPUTS
from patchbank.export.sidecar import INPUT_NAME

PROTOBUF_LIMIT = 2**31 - 64 * 2**20   # initializers above this go to external data
OPSET = 18


def initializer_bytes(program) -> int:
    """Bytes of an exported program's initializers (the bank, weights and constants)."""
    return int(sum(v.const_value.nbytes for v in program.model.graph.initializers.values()
                   if v.const_value is not None))


def export_program(graph: torch.nn.Module, sample: torch.Tensor):
    """The ONNX program of ``graph`` traced on ``sample`` [B, 3, H, W] with a dynamic batch axis
    (torch's own messages are kept off stdout; a failure is a one-line error)."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    quiet = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), torch.no_grad():
            warnings.simplefilter("ignore")
            return torch.onnx.export(graph.eval(), (sample,), None, input_names=[INPUT_NAME],
                                     output_names=list(OUTPUTS), opset_version=OPSET,
                                     dynamic_shapes={"x": {0: batch}}, dynamo=True, optimize=True,
                                     verbose=False)
    except Exception as exc:   # the exporter raises many types; the message is what helps
        first = " ".join(str(exc).split())[:300]
        raise PatchbankError(f"the ONNX export failed ({type(exc).__name__}: {first})") from exc


def save_program(program, path: Path, external_over: int = PROTOBUF_LIMIT) -> bool:
    """Save ``program`` to ``path``; the initializers go to ``<path>.data`` when they pass
    ``external_over`` bytes.  Returns whether they did."""
    external = initializer_bytes(program) > external_over
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program.save(str(path), external_data=external)
    return external
