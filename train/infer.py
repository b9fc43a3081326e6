"""Inference for one image at a time: preprocessing, prediction at the checkpoint's chosen input size (or the
average over two), label maps at the input image's own size, mask files.

This module needs only torch, numpy and pillow: `train.solution` bundles it (with the class table, the configs
and the network) into the standalone `solution/run.py`, so the shipped runner and this package predict with the
same code.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from space.config import BUDGET, ArchConfig
from space.network import build_model
from train.classes import FLIP_LUT, PALETTE
from train.imageops import resize_image

MEAN, STD = 0.5, 0.25  # network input = (x / 255 - MEAN) / STD
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def save_mask(mask: np.ndarray, path: Path) -> None:
    """Single-channel palette PNG with values 0..18 (the challenge's mask format)."""
    im = Image.fromarray(mask.astype(np.uint8), mode="L").convert("P")
    im.putpalette(PALETTE.ravel().tolist())
    im.save(path)


# Per device type, written once: the search's proxy (size, epochs, share of train, the ranking signal a complete
# trial reports, FLOPs cap as a multiple of the costliest preset, 0 = none), the second rung (trials promoted,
# its schedule and share of train; search.rung), the full run of train.final (a resolution schedule,
# train.schedule), and
# DataLoader worker processes. The CPU proxy is the best Kendall tau per CPU-minute measured (docs/results.md); the
# CPU final is the highest two-seed val F of the schedules measured for dw_unet that take <= 45 minutes alone on two
# cores (docs/results.md, "The CPU final's resolution schedule": 128:24,256:12, 0.8145, about 28 minutes). The CPU
# rung, 128:4,256:2 on all of train, ordered the 8 arch-tpe networks of known full F exactly (tau 1.0 by mean_last2_f,
# 11 of 11 close pairs, against 128:20; tau 0.929, 14 of 15, against the new final), where 128:4 on 40 % reached
# 0.714 (docs/results.md).
# The CPU's final_minutes (picks whose train.final is predicted over it are left out, search.rung) keeps the whole
# flow within 2 hours: the search at these defaults took 72 minutes and the part after training about 4, so 120 - 72
# - 4 = 44 less a margin for the search's own spread (docs/results.md, "The whole CPU flow").
DEVICE_DEFAULTS = {
    "cpu": dict(proxy_size=64, proxy_epochs=4, subset=0.4, signal="mean_last2_f", flops_cap=1.0,
                rung_k=3, rung_schedule="128:4,256:2", rung_subset=1.0, final_schedule="128:24,256:12",
                final_minutes=40.0, loader_workers=0),
    "cuda": dict(proxy_size=256, proxy_epochs=12, subset=1.0, signal="last_f", flops_cap=0.0,
                 rung_k=0, rung_schedule="512:8", rung_subset=1.0, final_schedule="512:60", final_minutes=None,
                 loader_workers=6),
}


def device_defaults(device: torch.device) -> dict:
    return DEVICE_DEFAULTS["cuda" if device.type == "cuda" else "cpu"]


def pick_device(name: str | None = None) -> torch.device:
    """`auto` (or None): CUDA when available, else CPU; anything else as torch names it."""
    if name and name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, bf16: bool | None = None):
    """bf16 autocast (by default on CUDA; a CPU test may ask for it), else a disabled context (fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" if bf16 is None else bf16)


def to_tensor(images: np.ndarray | torch.Tensor, device: torch.device, channels_last: bool | None = None
              ) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) normalised float on `device` (channels_last by default on CUDA)."""
    if not isinstance(images, torch.Tensor):  # DataLoader batches arrive as tensors already
        images = torch.from_numpy(np.array(images))  # a copy: decoded PIL arrays are read-only
    return normalise(images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255), channels_last)


def normalise(x: torch.Tensor, channels_last: bool | None = None) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] -> the network's input (channels_last by default on CUDA)."""
    x = x.sub(MEAN).div_(STD)
    last = x.device.type == "cuda" if channels_last is None else channels_last
    return x.contiguous(memory_format=torch.channels_last) if last else x.contiguous()


_FLIP_LUTS: dict[torch.device, torch.Tensor] = {}


def flip_lut(device: torch.device) -> torch.Tensor:
    """FLIP_LUT as an index tensor on `device`, built once per device (not a host-to-device copy per batch)."""
    if device not in _FLIP_LUTS:
        _FLIP_LUTS[device] = torch.as_tensor(FLIP_LUT, device=device).long()
    return _FLIP_LUTS[device]


@torch.no_grad()
def predict_logits(model: torch.nn.Module, batch: np.ndarray, device: torch.device,
                   flip_tta: bool = False) -> torch.Tensor:
    """(B, H, W, 3) uint8 at model input size -> (B, C, H, W) float32 logits; flip TTA swaps left/right."""
    model.eval()
    x = to_tensor(batch, device)
    with autocast(device):
        logits = model(x).float()
        if flip_tta:
            flipped = model(x.flip(3)).float().flip(3)
            logits = (logits + flipped[:, flip_lut(device)]) / 2
    return logits


def logits_to_mask(logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(C, h, w) logits -> (height, width) uint8 labels, upsampling the logits before the argmax."""
    if logits.shape[1:] != (height, width):
        logits = F.interpolate(logits[None], (height, width), mode="bilinear", align_corners=False)[0]
    return logits.argmax(0).to(torch.uint8).cpu().numpy()


def as_sizes(size: int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """A prediction setting as a tuple of input sizes: one size, or several whose logits are averaged."""
    return (int(size),) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)


def predict_mask(model: torch.nn.Module, image: np.ndarray, size: int | tuple[int, ...], device: torch.device,
                 flip_tta: bool = False) -> np.ndarray:
    """Label map at `image`'s own size: resize to each of the setting's sizes, predict, upsample the logits to
    the image's size, average them over the sizes (one size: as is), argmax."""
    height, width = image.shape[:2]
    total = None
    for s in as_sizes(size):
        logits = predict_logits(model, resize_image(image, s)[None], device, flip_tta)[0]
        if logits.shape[1:] != (height, width):
            logits = F.interpolate(logits[None], (height, width), mode="bilinear", align_corners=False)[0]
        total = logits if total is None else total + logits
    return logits_to_mask(total, height, width)


def safe_load(path: Path) -> dict:
    """A checkpoint of ours, read with `torch.load(weights_only=True)`: never unpickles code. A file that holds
    code or other objects, or is no PyTorch file at all, is refused with a one-line ValueError."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a PyTorch checkpoint (torch.save writes a zip archive; this is none)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path}: refused: it holds Python objects beyond tensors and plain data (it could run "
                         f"code when loaded); facenas checkpoints never do, so it is not one of ours") from None
    except (RuntimeError, KeyError, EOFError, AttributeError) as e:
        raise ValueError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:100]})"
                         ) from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a facenas checkpoint (a {type(ckpt).__name__}, not a dict)")
    return ckpt


def prediction_sizes(ckpt: dict) -> tuple[int, ...]:
    """The input sizes a checkpoint predicts at: its `predict_sizes` (chosen on val by train.final: one size, or
    two whose logits are averaged), else its training `size` (checkpoints from before that choice)."""
    sizes = ckpt.get("predict_sizes") or (ckpt["size"],)
    return as_sizes(sizes)


def load_checkpoint(path: Path, device: torch.device) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """(model, prediction sizes) from an exported checkpoint: {"config", "state_dict", "size", "num_classes",
    optionally "predict_sizes"}; predict with `predict_mask(model, image, sizes, ...)`."""
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or not {"config", "state_dict", "size"} <= set(ckpt):
        raise ValueError(f"{path}: not an exported facenas checkpoint (expected keys config, state_dict, size)")
    try:
        model = build_model(ArchConfig.from_dict(ckpt["config"]), ckpt.get("num_classes", 19)).drop_aux()
    except (TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: its config does not describe a network of this space ({e})") from None
    params = sum(p.numel() for p in model.parameters())
    if params >= BUDGET:
        raise ValueError(f"{path}: its network has {params:,} parameters; the limit is < {BUDGET:,}")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match the checkpoint's config ({str(e).splitlines()[0]})") from None
    try:
        sizes = prediction_sizes(ckpt)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: its predict_sizes {ckpt.get('predict_sizes')!r} is not a list of sizes") from None
    if not sizes or min(sizes) < 16:
        raise ValueError(f"{path}: its prediction sizes {sizes} are not sizes in px (expected >= 16)")
    return model.to(device).eval(), sizes


def list_images(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [path]


def main(argv: list[str] | None = None) -> int:
    """python3 run.py --input X.jpg|DIR --output Y.png|DIR --weights ckpt.pth"""
    p = argparse.ArgumentParser(description="Face parsing: write the label map (0..18) of each input image, "
                                            "at the image's own size.")
    p.add_argument("--input", type=Path, required=True, help="an image file or a folder of images")
    p.add_argument("--output", type=Path, required=True, help="output PNG path, or a folder for a folder input")
    p.add_argument("--weights", type=Path, required=True, help="checkpoint (ckpt.pth)")
    p.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=True,
                   help="average with the mirrored prediction, left/right labels swapped back (on by default: "
                        "+0.006 val F measured; twice the compute)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    for path, what in ((args.input, "input"), (args.weights, "weights")):
        if not path.exists():
            print(f"error: {what} {path} does not exist", file=sys.stderr)
            return 2
    try:
        model, sizes = load_checkpoint(args.weights, device)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    images = list_images(args.input)
    if args.input.is_dir():
        args.output.mkdir(parents=True, exist_ok=True)
    for path in images:
        out = args.output / f"{path.stem}.png" if args.input.is_dir() else args.output
        save_mask(predict_mask(model, load_rgb(path), sizes, device, args.flip_tta), out)
    print(f"wrote {len(images)} mask(s) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
