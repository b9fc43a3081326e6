"""`python -m train.predict --weights ckpt.pth --input IMG_OR_DIR --out DIR`: label PNGs at each image's size.

Optionally (`--overlay`) colour overlays a person can look at; flip TTA as the shipped run.py (`--no-flip-tta`: off).
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

from PIL import Image

from train.cli import parser, renamed
from train.infer import list_images, load_checkpoint, load_rgb, pick_device, predict_mask, save_mask
from train.visual import overlay


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m train.predict", __doc__, epilog="Details: docs/deliverables.md.")
    g = p.add_argument_group("input and output")
    g.add_argument("--weights", type=Path, required=True, help="exported checkpoint (ckpt.pth from train.final)")
    g.add_argument("--input", type=Path, required=True, help="an image or a folder of images")
    g.add_argument("--out", type=Path, default=None, help="folder for <stem>.png label maps (required)")
    renamed(g, "--output", "--out", "out", type=Path)
    g.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.jpg colour overlays")
    g = p.add_argument_group("prediction")
    g.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=True,
                   help="average with the mirrored prediction, left/right labels swapped back (as the shipped "
                        "run.py does)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = p.parse_args(argv)
    if args.out is None:  # not required=True: the old spelling --output fills it too
        p.error("the following arguments are required: --out")
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
    args.out.mkdir(parents=True, exist_ok=True)
    for path in images:
        image = load_rgb(path)
        mask = predict_mask(model, image, sizes, device, args.flip_tta)
        save_mask(mask, args.out / f"{path.stem}.png")
        if args.overlay:
            Image.fromarray(overlay(image, mask)).save(args.out / f"{path.stem}_overlay.jpg", quality=90)
    print(f"wrote {len(images)} mask(s){' and overlays' if args.overlay else ''} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
