import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

# Two threads fighting over two cores (pytest + BLAS) is slower than one.
TEST_THREADS = int(os.environ.get("PATCHBANK_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before any fixture of a test is set up (module and session fixtures included): the test
    thread count, whatever an earlier test or fixture set (an in-process CLI run with --threads 2
    would change float rounding for every later fit)."""
    if torch.get_num_threads() != TEST_THREADS:
        torch.set_num_threads(TEST_THREADS)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _seeded_random_state():
    """Every test starts from the same random state whatever ran before it (the suite runs in
    random order): torch, numpy and random seeded, so an unseeded draw in a test is reproducible
    (the thread count is reset by ``pytest_runtest_setup``)."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)

# Small, fast settings shared by detector-level tests.
FAST = dict(backbone="efficientnet_lite0", image_size=96, crop_size=None, batch_size=8)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    from patchbank.io.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("synth"), n_train=16, n_test_good=6,
                        n_test_defect=4, size=96, seed=0)


@pytest.fixture(scope="session")
def fitted(synthetic_root):
    from patchbank.detector import Detector

    return Detector.from_preset("lmf-core", progress=False, **FAST).fit(synthetic_root / "train" / "good")


def split_items(root):
    good = sorted((root / "test" / "good").glob("*.png"))
    bad = sorted(p for d in ("scratch", "spot") for p in (root / "test" / d).glob("*.png"))
    return good + bad, [0] * len(good) + [1] * len(bad)


def assert_runtime_matches_torch(det, folder, runtime, items):
    """The model exported to ``folder`` predicts ``items`` on ``runtime`` as ``det`` does in
    torch: the same decisions, image scores within 1e-4 relative, maps within 1e-3 of the largest
    map value's magnitude."""
    from patchbank.export.runtimes import ExportedModel

    ref = det.predict(items)
    got = ExportedModel(folder, runtime, progress=False).predict(items, batch_size=4)
    assert [p.is_anomalous for p in got] == [p.is_anomalous for p in ref]
    for a, b in zip(got, ref):
        assert a.score == pytest.approx(b.score, rel=1e-4)
        span = float(np.abs(b.anomaly_map).max())
        assert float(np.abs(a.anomaly_map - b.anomaly_map).max()) <= 1e-3 * span


def cuda_copy_predicts_alike(det, items, path):
    """``det`` saved to ``path`` and loaded on cuda predicts ``items`` as ``det`` does on the CPU:
    image scores within 1e-3 relative (1e-5 absolute), maps within 1e-3 relative (1e-4
    absolute).  Returns the cuda detector."""
    from patchbank.detector import Detector

    det.save(path)
    gpu = Detector.load(path, device="cuda", progress=False)
    for a, b in zip(gpu.predict(items), det.predict(items)):
        assert a.score == pytest.approx(b.score, rel=1e-3, abs=1e-5)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-3, atol=1e-4)
    return gpu


def stripes_images(folder, n, seed, size=96, period=8):
    """A second synthetic 'product': ``n`` PNGs of tilted stripes with noise (a texture unlike
    the synthetic part) written to ``folder``; returns their paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    paths = []
    for i in range(n):
        phase = rng.uniform(0, 2 * np.pi)
        v = 0.5 + 0.4 * np.sin(2 * np.pi * (xx + 0.5 * yy) / period + phase)
        v = v + rng.normal(0, 0.03, v.shape)
        img = (np.clip(np.stack([v, v * 0.8, v * 0.3], -1), 0, 1) * 255).astype(np.uint8)
        p = folder / f"{i:03d}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths


def invoke_cli(*args):
    """Run the ``patchbank`` command in-process (click's runner); a bug's exception is raised,
    not hidden in the result."""
    from click.testing import CliRunner

    from patchbank.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def assert_one_line_error(exit_code: int, stderr: str, *needles) -> str:
    """A command's failure as the CLI promises it: exit status 2 and one stderr line
    ``error: ...`` containing every needle; returns that line."""
    assert exit_code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for needle in needles:
        assert str(needle) in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def recorded_predictions(monkeypatch):
    """``[(images, predictions), ...]`` of every ``Detector.predict`` call during the test."""
    from patchbank.detector import Detector

    captured = []
    real = Detector.predict

    def recording(self, images, batch_size=None):
        preds = real(self, images, batch_size=batch_size)
        captured.append((list(images), preds))
        return preds

    monkeypatch.setattr(Detector, "predict", recording)
    return captured


def seeded_weights_file(path, seed=0):
    """A seeded random state dict of efficientnet_lite0's architecture (timm keys) written as
    safetensors to ``path``: a backbone weights file of one's own, for ``--weights FILE``."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def dds_with_unknown_pixel_format() -> bytes:
    """A DDS header whose pixel-format flags are 0: PIL's DDS plugin raises NotImplementedError
    from ``Image.open`` (a format patchbank does not read; tests/test_bad_images.py, test_serve.py)."""
    import struct

    hdr = bytearray(128)
    hdr[0:4] = b"DDS "
    struct.pack_into("<7I", hdr, 4, 124, 0x1007, 48, 64, 0, 0, 0)
    struct.pack_into("<2I", hdr, 76, 32, 0)
    return bytes(hdr) + b"\0" * 64 * 48 * 4
