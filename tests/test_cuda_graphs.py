"""CUDA graphs on the inference path (patchbank.runtime.cuda_graphs): a shape's first batch runs
eagerly, its second captures, later ones replay; the answers are the eager path's to float
rounding, under threads too; a capture that fails runs eagerly with one warning; the CPU never
captures.  The CUDA tests skip without a GPU (benchmarks/gpu_check.sh runs them)."""
from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch

from conftest import FAST, split_items
from patchbank.detector import Detector
from patchbank.runtime.cuda_graphs import GraphedCall

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CONTEXT = dict(FAST, context_taps=1)


def test_cpu_calls_run_the_function_and_capture_nothing():
    calls = []

    def fn(x):
        calls.append(x.shape)
        return (x * 2,)

    graphed = GraphedCall(fn, torch.device("cpu"))
    x = torch.arange(6.0).view(2, 3)
    for _ in range(3):
        (y,) = graphed(x)
        torch.testing.assert_close(y, x * 2)
    assert len(calls) == 3 and graphed.captured == [] and graphed.eager == []


class RerunRecorder:
    """A stand-in for :class:`CudaGraphs` that runs on the CPU: a "capture" runs ``fn`` once into
    static outputs, a "replay" runs it again on the static input and writes the same outputs in
    place (as a graph replay does).  Counts captures and replays; ``fail`` makes a capture raise."""

    def __init__(self, fail: bool = False):
        self.fail, self.captures, self.replays = fail, 0, 0

    def applies(self, device):
        return True

    def capture(self, fn, inputs):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing\nsecond line")
        self.captures += 1
        outputs = tuple(fn(inputs))

        def replay():
            self.replays += 1
            for out, new in zip(outputs, fn(inputs)):
                out.copy_(new)
        return replay, outputs


def test_the_policy_runs_eagerly_then_captures_then_replays():
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        return (x * 2, x.sum(1))

    rec = RerunRecorder()
    graphed = GraphedCall(fn, torch.device("cpu"), max_graphs=2, backend=rec)
    a = torch.arange(6.0).view(2, 3)
    outs = [graphed(a + i) for i in range(4)]          # eager, capture + replay, replay, replay
    for i, (y, s) in enumerate(outs):
        torch.testing.assert_close(y, (a + i) * 2)
        torch.testing.assert_close(s, (a + i).sum(1))
    assert rec.captures == 1 and rec.replays == 3
    assert graphed.captured == [((2, 3), torch.float32)]
    # a replay's outputs are clones: later replays do not change them
    torch.testing.assert_close(outs[1][0], (a + 1) * 2)
    # two more shapes: one is captured (max_graphs 2), the third stays eager however often it comes
    b, c = torch.ones(1, 3), torch.ones(3, 3)
    for _ in range(3):
        torch.testing.assert_close(graphed(b)[0], b * 2)
        torch.testing.assert_close(graphed(c)[0], c * 2)
    assert len(graphed.captured) == 2 and rec.captures == 2 and graphed.eager == []


def test_a_failed_capture_warns_once_and_that_shape_runs_eagerly():
    graphed = GraphedCall(lambda x: (x + 1,), torch.device("cpu"), backend=RerunRecorder(fail=True))
    x = torch.zeros(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [graphed(x + i)[0] for i in range(4)]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "could not capture" in messages[0] and "\n" not in messages[0]
    assert "second line" not in messages[0] and "[2]" in messages[0]
    for i, y in enumerate(outs):
        torch.testing.assert_close(y, x + i + 1)
    assert graphed.captured == [] and graphed.eager == [((2,), torch.float32)]


def test_threads_sharing_a_graphed_call_get_their_own_answers():
    graphed = GraphedCall(lambda x: (x * 3,), torch.device("cpu"), backend=RerunRecorder())
    graphed(torch.zeros(4))
    graphed(torch.zeros(4))                                   # captured
    errors, got = [], {}

    def work(k):
        try:
            for i in range(50):
                v = float(k * 100 + i)
                got[(k, i)] = (v, graphed(torch.full((4,), v))[0])
        except Exception as exc:   # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(got) == 200
    for v, y in got.values():
        torch.testing.assert_close(y, torch.full((4,), 3 * v))


def test_the_graphed_forward_gives_the_eager_answers(synthetic_root):
    # the graphs branch of InferenceModel.forward, on the CPU with the stand-in recorder: the
    # same maps, descriptors and decisions as the eager path, batch 1 and a partial batch
    from patchbank.pipeline.inference import InferenceModel, stays_on_device

    det = Detector.from_preset("patchbank", progress=False, cuda_graphs=False,
                               **CONTEXT).fit(synthetic_root / "train" / "good")
    assert stays_on_device(det.scorer_)
    eager = det.model_
    graphed = InferenceModel(det.extractor, det.scorer_, det.calibration_, cuda_graphs=False)
    rec = RerunRecorder()
    graphed.graphs = GraphedCall(graphed.device_outputs, torch.device("cpu"), backend=rec)
    items, _ = split_items(synthetic_root)
    for batch in ([items[0]], items[:3], items[3:6], items[:3]):
        x, names = next(iter(det.stream(batch, len(batch))))
        a, b = eager(x).predictions(names), graphed(x).predictions(names)
        _assert_alike(b, a)
    assert rec.captures == 1 and rec.replays == 2          # batch 3: eager, capture, replay


def test_a_cpu_detector_has_no_graphs_and_the_switch_rebuilds_the_model(synthetic_root, monkeypatch):
    monkeypatch.delenv("PATCHBANK_CUDA_GRAPHS", raising=False)
    det = Detector.from_preset("patchbank", progress=False, **CONTEXT).fit(synthetic_root / "train" / "good")
    assert det.cuda_graphs and det.model_.cuda_graphs and det.model_.graphs is None   # CPU: never
    det.cuda_graphs = False
    assert det.model_.cuda_graphs is False
    items, _ = split_items(synthetic_root)
    first = det.predict(items[:3])
    det.cuda_graphs = True
    for a, b in zip(det.predict(items[:3]), first):
        assert a.score == b.score
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)


@pytest.fixture(scope="module")
def gpu_pair(synthetic_root):
    train = synthetic_root / "train" / "good"
    eager = Detector.from_preset("patchbank", device="cuda", progress=False, cuda_graphs=False,
                                 **CONTEXT).fit(train)
    tensors, meta = eager.state_tensors(), eager.info()
    graphed = Detector.from_state(tensors, meta, "the eager model", device="cuda", progress=False,
                                  backbone=eager.backbone, cuda_graphs=True)
    assert graphed.cuda_graphs and not eager.cuda_graphs
    return eager, graphed


def _assert_alike(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.score == pytest.approx(b.score, rel=1e-6, abs=1e-6)
        assert a.is_anomalous == b.is_anomalous
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a.descriptor, b.descriptor, rtol=1e-5, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("batch_size", [1, 4])
def test_replayed_graphs_give_the_eager_answers(gpu_pair, synthetic_root, batch_size):
    eager, graphed = gpu_pair
    items, _ = split_items(synthetic_root)           # 14 images: batches of 4 end with one of 2
    want = eager.predict(items, batch_size=batch_size)
    for _ in range(3):                               # eager, capture, replay for every shape
        _assert_alike(graphed.predict(items, batch_size=batch_size), want)
    shapes = [key[0][0] for key in graphed.model_.graphs.captured]
    assert batch_size in shapes and graphed.model_.graphs.eager == []
    assert eager.model_.graphs is None


@needs_cuda
def test_threads_replaying_at_once_get_their_own_answers(gpu_pair, synthetic_root):
    eager, graphed = gpu_pair
    items, _ = split_items(synthetic_root)
    want = {str(p): r for p, r in zip(items, eager.predict(items, batch_size=1))}
    graphed.predict(items[:2], batch_size=1)         # captured before the threads start
    got, errors = {}, []

    def work(part):
        try:
            for p in part:
                got[str(p)] = graphed.predict([p], batch_size=1)[0]
        except Exception as exc:   # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(items[i::3],)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    _assert_alike([got[k] for k in want], list(want.values()))


@needs_cuda
def test_a_shape_that_cannot_be_captured_runs_eagerly_with_one_warning():
    def syncs(x):                                    # .item() synchronises: not capturable
        return (x * float(x.sum().item()),)

    graphed = GraphedCall(syncs, torch.device("cuda"))
    x = torch.arange(4.0, device="cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [graphed(x)[0] for _ in range(4)]
    assert [str(w.message) for w in caught if "CUDA graph" in str(w.message)].__len__() == 1
    for y in outs:
        torch.testing.assert_close(y, x * 6.0)
    assert graphed.captured == [] and graphed.eager == [((4,), torch.float32)]


@needs_cuda
def test_no_more_than_max_graphs_shapes_are_captured():
    graphed = GraphedCall(lambda x: (x + 1,), torch.device("cuda"), max_graphs=1)
    a, b = torch.zeros(2, device="cuda"), torch.zeros(3, device="cuda")
    for _ in range(3):
        torch.testing.assert_close(graphed(a)[0], a + 1)
        torch.testing.assert_close(graphed(b)[0], b + 1)
    assert graphed.captured == [((2,), torch.float32)]
    # a replay's outputs are clones: the next replay does not change them
    first = graphed(a + 5)[0]
    graphed(a)
    torch.testing.assert_close(first, a + 6)


def test_only_searches_that_stay_on_the_device_are_graphed():
    from types import SimpleNamespace

    from patchbank.pipeline.inference import stays_on_device
    from patchbank.search.exact import ExactSearch
    from patchbank.search.faiss import FaissSearch
    from patchbank.search.leave_out import LeaveGroupOut

    assert ExactSearch.device_only and not FaissSearch.device_only and not LeaveGroupOut.device_only
    exact, index = SimpleNamespace(device_only=True), SimpleNamespace(device_only=False)
    assert stays_on_device(SimpleNamespace(search=exact, context=None))
    assert stays_on_device(SimpleNamespace(search=exact, context=exact))
    assert not stays_on_device(SimpleNamespace(search=index, context=None))
    assert not stays_on_device(SimpleNamespace(search=exact, context=index))


@needs_cuda
def test_a_faiss_index_on_a_gpu_model_runs_without_graphs(synthetic_root):
    pytest.importorskip("faiss")
    det = Detector.from_preset("patchbank", device="cuda", progress=False, search="faiss-flat",
                               **CONTEXT).fit(synthetic_root / "train" / "good")
    items, _ = split_items(synthetic_root)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)        # no failed capture is tried
        for _ in range(3):
            det.predict(items[:2], batch_size=1)
    assert det.model_.graphs is None


def test_the_benchmark_lists_the_batch_sizes_replayed_as_graphs():
    from types import SimpleNamespace

    from patchbank.studies.speed import graph_batches, summary_lines

    shapes = [((16, 3, 8, 8), torch.float32), ((1, 3, 8, 8), torch.float32), ((16, 3, 4, 4), torch.float32)]
    det = SimpleNamespace(model_=SimpleNamespace(graphs=SimpleNamespace(captured=shapes)))
    assert graph_batches(det) == [1, 16]
    assert graph_batches(SimpleNamespace(model_=SimpleNamespace(graphs=None))) == []
    row = {"batch_size": 1, "ms_per_image": 1.0, "images_per_s": 1000.0, "floor_ms_per_image": 1.0,
           "predict_ratio": 1.0, "split_ms_per_image": {"read": 0.5, "extract": 0.5}}
    result = {"preset": "p", "data": "d", "n_train": 1, "n_test": 1, "device": "cuda",
              "machine": {"threads": 1, "cpu": "c"},
              "runs": [{"coreset_ratio": 0.01, "fit": {"fit_s": 1.0, "floor_s": [1.0], "fit_ratio": 1.0,
                                                    "peak_rss_mb": 1.0},
                        "bank": {"entries": 1, "dim": 1, "mb": 0.0, "search": "exact"},
                        "predict": [dict(row, cuda_graph_batches=[1]), dict(row, cuda_graph_batches=[])]}]}
    lines = summary_lines(result)
    assert "CUDA graph" in lines[2] and "CUDA graph" not in lines[3]


@pytest.mark.parametrize("env, want", [(None, True), ("", True), ("1", True), (" On ", True),
                                       ("0", False), ("false", False), ("no", False)])
def test_the_environment_sets_the_default(monkeypatch, env, want):
    if env is None:
        monkeypatch.delenv("PATCHBANK_CUDA_GRAPHS", raising=False)
    else:
        monkeypatch.setenv("PATCHBANK_CUDA_GRAPHS", env)
    assert Detector().cuda_graphs is want
    assert Detector(cuda_graphs=not want).cuda_graphs is (not want)     # the argument wins


def test_a_bad_environment_value_is_one_line_from_the_api_and_the_cli(monkeypatch, tmp_path, synthetic_root):
    from conftest import assert_one_line_error
    from patchbank.errors import PatchbankError

    monkeypatch.setenv("PATCHBANK_CUDA_GRAPHS", "maybe")
    with pytest.raises(PatchbankError, match="PATCHBANK_CUDA_GRAPHS must be 0 or 1, got 'maybe'") as info:
        Detector()
    assert "\n" not in str(info.value)
    from click.testing import CliRunner

    from patchbank.cli import cli

    result = CliRunner().invoke(cli, ["fit", str(synthetic_root / "train" / "good"), "-o",
                                      str(tmp_path / "m.patchbank"), "--quiet"])
    assert_one_line_error(result.exit_code, result.stderr, "PATCHBANK_CUDA_GRAPHS must be 0 or 1")
    assert not (tmp_path / "m.patchbank").exists()


# ------------------------------------------------------------------ multi-category models
def _multi_items(synthetic_root, tmp_path):
    from conftest import stripes_images

    stripes = stripes_images(tmp_path / "stripes", 8, seed=1)
    return {"part": synthetic_root / "train" / "good", "stripes": stripes}, stripes_images(
        tmp_path / "stripes_test", 3, seed=2)


def test_a_multi_category_models_graphed_extraction_gives_the_eager_answers(synthetic_root, tmp_path,
                                                                           monkeypatch):
    # the graphs branch of MultiDetector's extraction on the CPU, the stand-in recorder in place of
    # CudaGraphs: the same routing, scores and maps as the eager model, batch 1 and 3 (a partial
    # last batch), and a rebuilt call when the switch changes
    import patchbank.runtime.cuda_graphs as cuda_graphs_module
    from patchbank.multi import MultiDetector

    train, stripes_test = _multi_items(synthetic_root, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        multi = MultiDetector.from_preset("patchbank", progress=False, n_prototypes=4, cuda_graphs=False,
                                          **CONTEXT).fit(train)
    assert multi.graphs is None                                  # switched off
    items, _ = split_items(synthetic_root)
    images = items[:4] + stripes_test
    want = multi.predict(images, batch_size=3)
    recorders = []
    monkeypatch.setattr(cuda_graphs_module, "CudaGraphs", lambda: recorders.append(RerunRecorder()) or recorders[-1])
    multi.cuda_graphs = True
    for _ in range(3):                                           # eager, capture, replay
        got = multi.predict(images, batch_size=3)
        assert [p.category for p in got] == [p.category for p in want]
        _assert_alike(got, want)
    (rec,) = recorders
    # a pass is batches of 3, 3 and 1: shape 3 captured (and replayed) at its second batch in pass
    # 1, shape 1 in pass 2; replays: 1 + (2 + 1) + (2 + 1)
    assert rec.captures == 2 and rec.replays == 7
    assert multi.route(images, batch_size=3) == [p.category for p in want]
    assert rec.replays == 10                                      # routing reads the same extraction
    multi.cuda_graphs = False
    assert multi.graphs is None and len(recorders) == 1


def test_a_cpu_multi_category_model_has_no_graphs(synthetic_root, tmp_path, monkeypatch):
    from patchbank.multi import MultiDetector

    monkeypatch.delenv("PATCHBANK_CUDA_GRAPHS", raising=False)
    train, _ = _multi_items(synthetic_root, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        multi = MultiDetector.from_preset("patchbank", progress=False, n_prototypes=4, **CONTEXT).fit(train)
    assert multi.cuda_graphs and multi.graphs is None            # on by default, never on the CPU
    assert all(d.cuda_graphs for d in multi.detectors_.values())
    path = tmp_path / "m.patchbank"
    multi.save(path)
    assert MultiDetector.load(path, progress=False, cuda_graphs=False).cuda_graphs is False
    with pytest.raises(Exception, match="cuda_graphs must be True, False or None"):
        MultiDetector(cuda_graphs="no")


@needs_cuda
def test_a_multi_category_model_on_a_gpu_replays_its_extraction(synthetic_root, tmp_path):
    from patchbank.multi import MultiDetector

    train, stripes_test = _multi_items(synthetic_root, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fitted = MultiDetector.from_preset("patchbank", device="cuda", progress=False, n_prototypes=4,
                                           **CONTEXT).fit(train)
    path = tmp_path / "m.patchbank"
    fitted.save(path)
    eager, graphed = (MultiDetector.load(path, device="cuda", progress=False, cuda_graphs=flag)
                      for flag in (False, True))
    items, _ = split_items(synthetic_root)
    images = items + stripes_test
    for b in (1, 4):
        want = eager.predict(images, batch_size=b)
        for _ in range(3):
            got = graphed.predict(images, batch_size=b)
            assert [p.category for p in got] == [p.category for p in want]
            _assert_alike(got, want)
    shapes = sorted(key[0][0] for key in graphed.graphs.captured)
    assert 1 in shapes and 4 in shapes and graphed.graphs.eager == []
    assert eager.graphs is None


def test_the_inference_model_asks_for_graphs_only_when_switched_on_and_its_searches_stay_on_the_device(
        fitted, monkeypatch):
    """With a recorder that applies on the CPU: graphs exactly when ``cuda_graphs`` is on and
    every search stays on the device (an exact search does; a host-side one does not)."""
    from types import SimpleNamespace

    import patchbank.runtime.cuda_graphs as cuda_graphs_module
    from patchbank.pipeline.inference import InferenceModel

    monkeypatch.setattr(cuda_graphs_module, "CudaGraphs", RerunRecorder)
    assert fitted.scorer_.search.device_only
    parts = (fitted.extractor, fitted.scorer_, fitted.calibration_)
    assert InferenceModel(*parts, cuda_graphs=True).graphs is not None
    assert InferenceModel(*parts, cuda_graphs=False).graphs is None
    host = SimpleNamespace(search=SimpleNamespace(device_only=False), context=None)
    assert InferenceModel(fitted.extractor, host, fitted.calibration_, cuda_graphs=True).graphs is None
