"""Device and precision choice: fp32 on CPU, bf16 (or fp16 + GradScaler) on CUDA."""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """bf16/fp16 matmul on CPU is far slower than fp32 here, so 'auto' means fp32 on CPU."""
    if name not in PRECISIONS:
        raise ValueError(f"precision={name!r}: use one of {PRECISIONS}")
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
