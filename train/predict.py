"""`python -m train.predict --weights ckpt.pth --input IMG_OR_DIR --output DIR [--overlay] [--no-flip-tta]`:
label PNGs at each input image's size, and optionally colour overlays a person can look at."""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

from PIL import Image

from train.infer import list_images, load_checkpoint, load_rgb, pick_device, predict_mask, save_mask
from train.visual import overlay


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.predict", description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=Path, required=True, help="exported checkpoint (ckpt.pth from train.final)")
    p.add_argument("--input", type=Path, required=True, help="an image or a folder of images")
    p.add_argument("--output", type=Path, required=True, help="folder for <stem>.png label maps")
    p.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.jpg colour overlays")
    p.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=True,
                   help="average with the horizontally flipped prediction, left/right labels swapped back (on by "
                        "default, as in the shipped run.py; --no-flip-tta for the plain prediction)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = p.parse_args(argv)
    for path, what in ((args.weights, "weights"), (args.input, "input")):
        if not path.exists():
            print(f"error: {what} {path} does not exist", file=sys.stderr)
            return 2
    images = list_images(args.input)
    if not images:
        print(f"error: no .jpg/.jpeg/.png images in {args.input}", file=sys.stderr)
        return 2
    device = pick_device(args.device)
    try:
        model, sizes = load_checkpoint(args.weights, device)
    except (ValueError, OSError, pickle.UnpicklingError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    for path in images:
        image = load_rgb(path)
        mask = predict_mask(model, image, sizes, device, args.flip_tta)
        save_mask(mask, args.output / f"{path.stem}.png")
        if args.overlay:
            Image.fromarray(overlay(image, mask)).save(args.output / f"{path.stem}_overlay.jpg", quality=90)
    print(f"wrote {len(images)} mask(s){' and overlays' if args.overlay else ''} to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
