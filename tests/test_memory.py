"""patchbank.runtime.malloc: glibc malloc settings for lean fits."""
import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tune_malloc_limits_arenas_in_a_fresh_process():
    # Eight threads that each allocate and free: with the default settings glibc gives each
    # its own arena; after tune_malloc(arenas=2) at most two arenas exist (malloc_info lists them).
    code = r'''
import ctypes, sys, threading
from patchbank.runtime.malloc import tune_malloc
if sys.argv[1] == "tune":
    assert tune_malloc(arenas=2) is True
    assert tune_malloc() is True          # idempotent
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.fdopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
barrier = threading.Barrier(8)
def work():
    barrier.wait()                        # all eight threads allocate at the same time
    for _ in range(200):
        p = libc.malloc(4096); libc.free(p)
ts = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
import tempfile, os
fd, path = tempfile.mkstemp()
f = libc.fdopen(fd, b"w")
libc.malloc_info(0, f); libc.fclose(f)
print(open(path).read().count("<heap nr="))
os.remove(path)
'''
    counts = {}
    for mode in ("tune", "default"):
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True)
        counts[mode] = int(out.stdout.strip())
    assert counts["tune"] <= 2
    assert counts["default"] > counts["tune"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_trim_malloc_returns_free_pages_in_the_middle_of_the_heap():
    # 200 MB in 64 KiB blocks (below the mmap threshold: they live in the heap), then every block
    # freed but the last one, which pins the heap's top: glibc keeps the freed pages resident
    # until trim_malloc (malloc_trim(0)) hands them back.
    code = r'''
import ctypes
from patchbank.runtime.malloc import trim_malloc
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def rss():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) / 1024
blocks = [libc.malloc(65536) for _ in range(3200)]
for b in blocks:
    libc.memset(b, 1, 65536)
for b in blocks[:-1]:
    libc.free(b)
before = rss()
trim_malloc()
print(before - rss())
'''
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) > 150          # MB given back of the ~200 MB freed
