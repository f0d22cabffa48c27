"""`training.precision`: device and dtype choice. CI has no GPU, so the CUDA branches
run against a monkeypatched `torch.cuda` (a `torch.device("cuda")` object needs no GPU)."""

from __future__ import annotations

import pytest
import torch

from multimodal_doubleloop.training.precision import PRECISIONS, resolve_device, resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA reported available; `bf16` says what `is_bf16_supported` answers."""
    calls = {"bf16": True, "asked": 0}

    def is_bf16_supported(*args, **kwargs):
        calls["asked"] += 1
        return calls["bf16"]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    return calls


def test_precisions_lists_auto_and_the_three_dtypes():
    assert PRECISIONS == ("auto", "fp32", "bf16", "fp16")


# resolve_device


def test_auto_device_is_cpu_without_cuda(no_cuda):
    assert resolve_device("auto") == CPU


def test_auto_device_is_cuda_when_available(fake_cuda):
    assert resolve_device("auto") == CUDA


@pytest.mark.parametrize("name", ["cpu", "meta"])
def test_explicit_non_cuda_device_is_taken_as_is(no_cuda, name):
    assert resolve_device(name) == torch.device(name)


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_device_without_cuda_is_refused_clearly(no_cuda, name):
    with pytest.raises(ValueError, match="CUDA is not available") as info:
        resolve_device(name)
    assert repr(name) in str(info.value)  # names what was asked for


@pytest.mark.parametrize(("name", "index"), [("cuda", None), ("cuda:0", 0), ("cuda:1", 1)])
def test_cuda_device_with_cuda_keeps_the_index(fake_cuda, name, index):
    device = resolve_device(name)
    assert device.type == "cuda" and device.index == index


def test_explicit_cpu_is_honoured_even_with_cuda(fake_cuda):
    assert resolve_device("cpu") == CPU


def test_unknown_device_name_raises(no_cuda):
    with pytest.raises(RuntimeError):  # torch.device's own error
        resolve_device("gpu")


# resolve_precision


def test_auto_precision_is_fp32_on_cpu_without_asking_cuda(fake_cuda):
    assert resolve_precision("auto", CPU) is torch.float32
    assert fake_cuda["asked"] == 0


def test_auto_precision_is_bf16_on_cuda_when_supported(fake_cuda):
    assert resolve_precision("auto", CUDA) is torch.bfloat16
    assert resolve_precision("auto", torch.device("cuda:1")) is torch.bfloat16
    assert fake_cuda["asked"] == 2


def test_auto_precision_falls_back_to_fp16_on_cuda_without_bf16(fake_cuda):
    fake_cuda["bf16"] = False
    assert resolve_precision("auto", CUDA) is torch.float16


@pytest.mark.parametrize(
    ("name", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)]
)
@pytest.mark.parametrize("device", [CPU, CUDA], ids=["cpu", "cuda"])
def test_explicit_precision_is_honoured_on_any_device(fake_cuda, name, dtype, device):
    fake_cuda["bf16"] = False  # an explicit choice does not consult the hardware
    assert resolve_precision(name, device) is dtype
    assert fake_cuda["asked"] == 0


@pytest.mark.parametrize("name", ["float32", "FP32", "bf32", "fp8", "", "Auto", "half"])
@pytest.mark.parametrize("device", [CPU, CUDA], ids=["cpu", "cuda"])
def test_unknown_precision_is_refused_naming_the_choices(fake_cuda, name, device):
    with pytest.raises(ValueError) as info:
        resolve_precision(name, device)
    message = str(info.value)
    assert repr(name) in message
    assert all(choice in message for choice in PRECISIONS)
