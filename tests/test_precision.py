"""``patchbank.backbones.precision``: cuDNN's TF32 convolutions are off exactly while backbone
calls run on a GPU, and the process's own setting comes back after the last one, also when
calls overlap in several threads.  (The flag is a plain torch setting, so this runs on the CPU;
the GPU test in test_context_taps.py checks the features against the CPU's.)"""
from __future__ import annotations

import threading

import pytest
import torch

from patchbank.backbones.precision import full_float32_convolutions


@pytest.fixture
def tf32_on():
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32 = saved


def test_off_inside_and_back_after_also_on_an_error(tf32_on):
    with full_float32_convolutions():
        assert torch.backends.cudnn.allow_tf32 is False
        with full_float32_convolutions():               # nested: still off when the inner ends
            pass
        assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is True
    with pytest.raises(ValueError):
        with full_float32_convolutions():
            raise ValueError("boom")
    assert torch.backends.cudnn.allow_tf32 is True
    torch.backends.cudnn.allow_tf32 = False             # a user who turned it off keeps it off
    with full_float32_convolutions():
        pass
    assert torch.backends.cudnn.allow_tf32 is False


def test_overlapping_threads_keep_it_off_until_the_last_leaves(tf32_on):
    entered, release, seen = threading.Barrier(3), threading.Event(), []

    def call(hold: bool):
        with full_float32_convolutions():
            entered.wait()
            if hold:
                release.wait(10)
            seen.append(torch.backends.cudnn.allow_tf32)

    quick, slow = threading.Thread(target=call, args=(False,)), threading.Thread(target=call, args=(True,))
    quick.start(), slow.start()
    entered.wait()
    quick.join(10)
    assert torch.backends.cudnn.allow_tf32 is False     # the slow call still runs
    release.set()
    slow.join(10)
    assert seen == [False, False] and torch.backends.cudnn.allow_tf32 is True


def test_cpu_calls_leave_the_flag_alone(fitted, tf32_on, monkeypatch):
    entered = []
    monkeypatch.setattr("patchbank.backbones.base.full_float32_convolutions",
                        lambda: entered.append(1) or full_float32_convolutions())
    fitted.backbone(torch.zeros(1, 3, 64, 64))
    assert entered == [] and torch.backends.cudnn.allow_tf32 is True
