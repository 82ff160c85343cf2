"""``patchbank serve MODEL --device cuda``: a real uvicorn process on a GPU answers concurrent
requests (dynamic batches of several sizes, replayed as CUDA graphs) as the CPU library does.
Skips without CUDA (benchmarks/gpu_check.sh runs it)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import FAST, split_items

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
              pytest.mark.filterwarnings("ignore:the threshold is calibrated on only")]
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from patchbank.detector import Detector   # noqa: E402
from patchbank.io.images import decode_bytes   # noqa: E402
from patchbank.service.process import ServerProcess   # noqa: E402


def _one(client, named: dict[str, bytes]) -> list[dict]:
    r = client.post("/v2/models/m/infer", files=[("files", (n, b, "image/png")) for n, b in named.items()])
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_a_gpu_server_answers_concurrent_requests_as_the_cpu_library(synthetic_root, tmp_path):
    model = tmp_path / "m.patchbank"
    Detector.from_preset("patchbank", progress=False, **FAST).fit(synthetic_root / "train" / "good").save(model)
    items, _ = split_items(synthetic_root)
    named = {p.name: p.read_bytes() for p in items}
    reference = Detector.load(model, progress=False)                     # the CPU library
    want = {n: p for n, p in zip(named, reference.predict([decode_bytes(b, n) for n, b in named.items()]))}
    log = tmp_path / "server.log"
    args = ["--device", "cuda", "--quiet", "--threads", "1", "--max-wait-ms", "30"]
    with ServerProcess([f"m={model}"], args, log=log, timeout=180) as proc, \
            httpx.Client(base_url=proc.url, timeout=60) as client:
        got = []
        for _ in range(3):                                               # eager, capture, replay
            with ThreadPoolExecutor(len(named)) as pool:
                got += [r for rs in pool.map(lambda kv: _one(client, dict([kv])), named.items()) for r in rs]
            got += _one(client, dict(list(named.items())[:3]))           # a batch of three
        info = client.get("/v2/models/m").json()
    for r in got:
        w = want[r["name"]]
        assert r["score"] == pytest.approx(w.score, rel=1e-3, abs=1e-5)
        if abs(w.normalized_score - reference.threshold_) > 1e-3:
            assert r["is_anomalous"] == w.is_anomalous
    assert info["device"] == "cuda" and info["batching"]["largest_call"] > 1                          # batches of several sizes ran
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "could not capture" not in text, text[-3000:]
