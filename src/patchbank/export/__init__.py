"""Export to ONNX / OpenVINO and the runtimes that run an export (``pip install 'patchbank[export]'``).

* :mod:`~patchbank.export.graph`: :class:`ExportGraph`, the whole scoring path of a fitted
  detector as one ``nn.Module`` built from its own parts (bank, map operators and calibration as
  constants);
* :mod:`~patchbank.export.onnx_writer`, :mod:`~patchbank.export.openvino_writer`: the files;
* :mod:`~patchbank.export.sidecar`: the JSON sidecar (format version, preprocessing, threshold,
  every graph file's size and sha256), checked field by field on load;
* :mod:`~patchbank.export.exporter`: :func:`export_model` (a model -> an export folder);
* :mod:`~patchbank.export.runtimes`: :class:`ExportedModel` (an export folder -> predictions, on
  ONNX Runtime or OpenVINO, chosen from a registry).

Nothing here is imported by ``import patchbank``; onnx / onnxruntime / openvino are imported when
used, with a one-line error naming the extra when missing.
"""
