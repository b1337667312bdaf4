"""Where a model runs and in what dtype: the values of every `tierwise remoe` command's --device and --dtype."""

from __future__ import annotations

import torch

from tierwise.common.errors import TierwiseError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = "cpu, cuda, cuda:N, mps, or auto (cuda when available, else cpu)"


def resolve_dtype(name: str) -> torch.dtype:
    """The torch dtype of a --dtype name (fp32, bf16, fp16)."""
    if name not in DTYPES:
        raise TierwiseError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    """The torch device of a --device name; one this machine lacks is refused here, not deep inside a forward."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise TierwiseError(f"--device {name!r} is not a device name; use {DEVICES}") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TierwiseError(f"--device {name}: this machine has no usable CUDA device (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TierwiseError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise TierwiseError(f"--device {name}: the MPS backend is not available on this machine")
    elif device.type != "cpu":
        raise TierwiseError(f"--device {name!r} is not supported; use {DEVICES}")
    return device
