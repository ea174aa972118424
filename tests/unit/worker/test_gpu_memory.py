"""Which GPUs a worker meters, and that a worker without any (or without NVML) meters none."""

from __future__ import annotations

import pytest

from modelhost.worker.gpu_memory import GpuMeter, visible_device_ids


@pytest.mark.parametrize(
    ("value", "ids"),
    [
        (None, ()),
        ("", ()),
        ("-1", ()),
        ("0", ("0",)),
        ("1,3", ("1", "3")),
        (" 2 , 0 ", ("2", "0")),
        ("GPU-8f6c1a2e-0000-1111-2222-333344445555", ("GPU-8f6c1a2e-0000-1111-2222-333344445555",)),
        ("0,-1,1", ("0",)),  # CUDA stops at the first invalid entry
    ],
)
def test_visible_devices_follow_cuda_visible_devices(value: str | None, ids: tuple[str, ...]) -> None:
    environ = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    assert visible_device_ids(environ) == ids


def test_a_worker_that_sees_no_gpu_meters_none() -> None:
    assert GpuMeter.open({"CUDA_VISIBLE_DEVICES": ""}) is None
    assert GpuMeter.open({}) is None


def test_gpu_memory_is_metered_where_nvml_reads_the_gpu(caplog: pytest.LogCaptureFixture) -> None:
    # nvidia-ml-py is in the dev extra. Without an NVIDIA driver (CI) the worker says so and goes on; with
    # one, device 0 is metered: its memory, and what this process holds there.
    import pynvml

    try:
        pynvml.nvmlInit()
        has_gpu = pynvml.nvmlDeviceGetCount() > 0
    except pynvml.NVMLError:
        has_gpu = False
    meter = GpuMeter.open({"CUDA_VISIBLE_DEVICES": "0"})
    if has_gpu:
        assert meter is not None and meter.total_bytes() > 2**30 and meter.used_bytes() >= 0
    else:
        assert meter is None and "GPU memory is not measured" in caplog.text
