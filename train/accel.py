"""What a training run turns on for its device, in one place, with the arguments of every CUDA-only call built by
small functions that CPU tests check with torch's own argument handling: a wrong argument there would otherwise
first show on a lent GPU, and cost the lease.

`Accel.of(device)` is what a run uses; a CPU test can ask for the CUDA settings (`Accel.cuda_like()`) on the CPU
device, where torch allows each of them: bf16 autocast, channels_last, the fused AdamW kernel, the training set kept
and augmented on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SYNC_DEBUG_MODES = ("default", "warn", "error")  # torch.cuda.set_sync_debug_mode's string modes


@dataclass(frozen=True)
class Accel:
    bf16: bool = False  # bf16 autocast for the forward pass
    channels_last: bool = False  # model and input in channels_last memory format
    fused_optimizer: bool = False  # AdamW's fused kernel (one launch for all tensors)
    device_data: bool = False  # the training set lives on the device and is augmented there
    cudnn_benchmark: bool = False

    @classmethod
    def of(cls, device: torch.device) -> Accel:
        """On CUDA everything on; elsewhere the plain fp32 path (bf16 and channels_last gain 0-20 % or lose on
        the depthwise nets on the CPU, docs/benchmarks.md)."""
        return cls.cuda_like() if device.type == "cuda" else cls()

    @classmethod
    def cuda_like(cls) -> Accel:
        return cls(bf16=True, channels_last=True, fused_optimizer=True, device_data=True, cudnn_benchmark=True)


def autocast_kwargs(device: torch.device, bf16: bool) -> dict:
    """torch.autocast's arguments: bf16 on `device` when asked, else a disabled context."""
    return {"device_type": device.type, "dtype": torch.bfloat16, "enabled": bf16}


def cuda_index(device: torch.device) -> int:
    """The CUDA device index torch's per-device calls need: `cuda` alone means the current device (0 where no
    CUDA runtime is loaded, as in a CPU test of the arguments)."""
    if device.index is not None:
        return device.index
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


def memory_share(device: torch.device, workers: int) -> tuple[float, int]:
    """Arguments of `torch.cuda.set_per_process_memory_fraction` for one of `workers` processes sharing `device`:
    a float fraction and a device index (a bare torch.device("cuda") is refused by torch)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return 0.95 / workers, cuda_index(device)


def share_memory(device: torch.device, workers: int) -> None:
    """Cap this process at its share of the GPU's memory when several workers share one device."""
    if device.type == "cuda" and workers > 1:
        torch.cuda.set_per_process_memory_fraction(*memory_share(device, workers))


def sync_debug_mode(mode: str) -> str:
    """The argument of `torch.cuda.set_sync_debug_mode`, checked against the modes torch names."""
    if mode not in SYNC_DEBUG_MODES:
        raise ValueError(f"sync debug mode {mode!r}: expected one of {', '.join(SYNC_DEBUG_MODES)}")
    return mode
