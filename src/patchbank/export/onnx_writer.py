"""Writing an :class:`~patchbank.export.graph.ExportGraph` as one ONNX file, and reading which
external data files an ONNX file names (:func:`external_data_locations`).

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
from typing import Iterator

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


def import_onnx():
    """The ``onnx`` module, or the one-line error naming the extra to install."""
    try:
        import onnx
    except ImportError:
        raise PatchbankError("onnx is not installed: pip install 'patchbank[export]'") from None
    return onnx


def external_data_locations(path: Path) -> set[str]:
    """The file names (``location``, as written) that the tensors of the ONNX file ``path`` read
    as external data: every tensor the file holds (initializers, sparse initializers, node
    attribute tensors, subgraphs, functions, training graphs) that is marked external
    (``data_location`` EXTERNAL; an empty name when it gives none) or carries a ``location``.
    The graph is parsed without its external data, which is never read here.

    Raises:
        PatchbankError: the file is not a readable ONNX model (one line).
    """
    onnx = import_onnx()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:   # protobuf's DecodeError, OSError, onnx's own errors
        raise PatchbankError(f"{path} is not a readable ONNX graph ({' '.join(str(exc).split())[:200]}); "
                             f"export again") from None
    external = onnx.TensorProto.EXTERNAL
    locations = set()
    for tensor in _model_tensors(model):
        named = {e.value for e in tensor.external_data if e.key == "location"}
        if tensor.data_location == external and not named:
            named = {""}
        locations |= named
    return locations


def _model_tensors(model) -> Iterator:
    """Every TensorProto of an ONNX ModelProto (see :func:`external_data_locations`)."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)
    for training in model.training_info:
        yield from _graph_tensors(training.initialization)
        yield from _graph_tensors(training.algorithm)


def _graph_tensors(graph) -> Iterator:
    """The tensors of a GraphProto: initializers, sparse initializers and its nodes'."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensors(graph.node)


def _node_tensors(nodes) -> Iterator:
    """The tensors of NodeProtos' attributes, their subgraphs' included."""
    for node in nodes:
        for attr in node.attribute:
            yield attr.t
            yield from attr.tensors
            for sparse in [attr.sparse_tensor, *attr.sparse_tensors]:
                yield from (sparse.values, sparse.indices)
            for graph in [attr.g, *attr.graphs]:
                yield from _graph_tensors(graph)
