"""--threads / set_threads: one thread count for torch, FAISS and numpy's BLAS."""
import subprocess
import sys
import textwrap

import pytest


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_set_threads_limits_every_runtime():
    pytest.importorskip("threadpoolctl")
    pytest.importorskip("faiss")
    out = _run("""
        import numpy, faiss, torch
        from threadpoolctl import threadpool_info
        from patchbank.runtime.threads import set_threads
        set_threads(1)
        pools = sorted({(i["user_api"], i["num_threads"]) for i in threadpool_info()})
        print(torch.get_num_threads(), faiss.omp_get_max_threads(), pools)
    """)
    torch_n, faiss_n, pools = out.split(" ", 2)
    assert torch_n == "1" and faiss_n == "1"
    assert "2)" not in pools and "'blas', 1" in pools


def test_faiss_follows_torch_set_num_threads():
    """torch.set_num_threads alone is honoured: FAISS gets torch's count at every search."""
    pytest.importorskip("faiss")
    out = _run("""
        import torch, faiss
        from patchbank.search import FaissSearch
        torch.manual_seed(0)
        s = FaissSearch(torch.randn(2000, 16), "ivf", nprobe=4)
        torch.set_num_threads(1)
        s.search(torch.randn(10, 16), 1)
        print(faiss.omp_get_max_threads())
    """)
    assert out == "1"


def test_cli_threads_flag(tmp_path):
    """`patchbank ... --threads 1` sets the environment before torch loads and limits torch and FAISS."""
    pytest.importorskip("faiss")
    out = _run("""
        import os, sys
        from patchbank.cli.options import setup_threads
        assert "torch" not in sys.modules
        setup_threads(1)
        import torch, faiss
        print(os.environ["OMP_NUM_THREADS"], os.environ["OPENBLAS_NUM_THREADS"], torch.get_num_threads())
        from patchbank.runtime.threads import sync_faiss
        sync_faiss()
        print(faiss.omp_get_max_threads())
    """)
    assert out.split() == ["1", "1", "1", "1"]


def test_set_threads_rejects_zero():
    from patchbank.runtime.threads import set_threads

    with pytest.raises(ValueError):
        set_threads(0)


def test_set_threads_and_the_cli_refuse_more_than_max_threads():
    """Session 29: ``--threads 100000`` crashed the process (libgomp segmentation fault) after
    writing empty output placeholders; it is refused before anything runs."""
    from click.testing import CliRunner

    from patchbank.cli import cli
    from patchbank.runtime.threads import MAX_THREADS, set_threads

    with pytest.raises(ValueError, match=f"must be in \\[1, {MAX_THREADS}\\]"):
        set_threads(MAX_THREADS + 1)
    r = CliRunner().invoke(cli, ["predict", "m.patchbank", "x.png", "-o", "out", "--threads", "100000"])
    assert r.exit_code == 2 and f"1<=x<={MAX_THREADS}" in r.output
