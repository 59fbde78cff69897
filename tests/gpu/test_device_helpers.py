"""How the library drives ``torch.cuda`` (current device, initialization, statistics, precision), checked on CPU
against :class:`tests.support.fake_cuda.FakeCuda`."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.support.fake_cuda import FakeCuda
from tsvmerge.evaluation.evaluate import Runtime
from tsvmerge.utils.device import activate_device, autocast_precision, device_scope
from tsvmerge.utils.memory import MemoryMonitor


def test_cpu_devices_touch_no_cuda_state(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("CUDA touched for a CPU device")

    for name in ("init", "set_device", "current_device", "reset_peak_memory_stats", "device"):
        monkeypatch.setattr(torch.cuda, name, forbidden)
    assert activate_device("cpu") == torch.device("cpu")
    with device_scope(torch.device("cpu")) as device:
        assert device == torch.device("cpu")
    with MemoryMonitor(device=torch.device("cpu")) as monitor:
        pass
    assert monitor.report is not None and monitor.report.peak_cuda_bytes is None
    assert autocast_precision(torch.device("cpu"), "bf16") == "bf16"


def test_activate_device_initializes_and_sets_the_current_gpu(fake_cuda: FakeCuda) -> None:
    assert activate_device("cuda:1") == torch.device("cuda", 1)
    assert fake_cuda.initialized and fake_cuda.current == 1 and fake_cuda.set_calls == [1]
    assert activate_device("cuda") == torch.device("cuda", 1)  # no index: the current GPU, with its index
    with pytest.raises(RuntimeError, match=r"cuda:2 does not exist: 2 GPU\(s\) are visible"):
        activate_device("cuda:2")


def test_device_scope_restores_the_previous_gpu(fake_cuda: FakeCuda) -> None:
    with device_scope("cuda:1") as device:
        assert device == torch.device("cuda", 1) and fake_cuda.current == 1
    assert fake_cuda.current == 0


def test_no_cuda_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        activate_device("cuda:0")


def test_memory_monitor_initializes_cuda_before_resetting_its_counters(fake_cuda: FakeCuda) -> None:
    """``tsvmerge merge --device cuda:1``: the peak counter is reset on an initialized CUDA (the real allocator
    refuses before: "Invalid device argument 1: did you call init?"), on the right GPU, made current meanwhile."""
    with MemoryMonitor(device=torch.device("cuda:1")) as monitor:
        assert fake_cuda.current == 1
    assert fake_cuda.peak_resets == [1] and fake_cuda.current == 0
    assert monitor.device == torch.device("cuda", 1)
    assert monitor.report is not None and monitor.report.peak_cuda_bytes == 1234
    assert "peak CUDA" in monitor.report.summary()


def test_memory_monitor_without_an_index_uses_the_current_gpu(fake_cuda: FakeCuda) -> None:
    with MemoryMonitor(device=torch.device("cuda")) as monitor:
        pass
    assert monitor.device == torch.device("cuda", 0) and fake_cuda.peak_resets == [0]


def test_a_failing_memory_monitor_leaves_the_current_gpu_as_it_was(fake_cuda: FakeCuda,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(device: object = None) -> None:
        raise RuntimeError("broken counter")

    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", broken)
    with pytest.raises(RuntimeError, match="broken counter"), MemoryMonitor(device=torch.device("cuda:1")):
        pass
    assert fake_cuda.current == 0


def test_runtime_makes_its_gpu_current(fake_cuda: FakeCuda) -> None:
    runtime = Runtime(torch.device("cuda:1"), "bf16", channels_last=True)
    assert runtime.device == torch.device("cuda", 1) and fake_cuda.current == 1
    assert runtime.precision == "bf16" and runtime.describe() == "cuda:1 (bf16, channels-last)"


def test_bf16_falls_back_to_fp16_on_gpus_without_bfloat16(fake_cuda: FakeCuda,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    fake_cuda.capability = (7, 5)  # Turing: bfloat16 only emulated
    with caplog.at_level(logging.WARNING, logger="tsvmerge.utils.device"):
        runtime = Runtime(torch.device("cuda:0"), "bf16")
    assert runtime.precision == "fp16" and runtime.describe() == "cuda:0 (fp16, channels-last)"
    assert len([r for r in caplog.records if "no native bfloat16" in r.getMessage()]) == 1
    assert Runtime(torch.device("cuda:0"), "fp32").precision == "fp32"
    assert autocast_precision(torch.device("cuda:0"), "bf16", announce=False) == "fp16"
    fake_cuda.capability = (8, 0)
    assert autocast_precision(torch.device("cuda:0"), "bf16") == "bf16"
