"""`python -m train.submission check ZIP --images DIR`: verify a challenge submission before uploading it.

Final phase: the zip root holds exactly `masks/` and `solution/`; one PNG per test image, named by its stem,
single-channel, at the image's size, values 0..18; `solution/` holds `ckpt.pth`, `run.py`, `requirements.txt`.
Development phase (`--phase dev`): `masks/` only, each mask naming an image of DIR.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from train.cli import HelpFormatter
from train.cli import parser as cli_parser
from train.data import IMAGE_SUFFIXES, MASK_MODES

SOLUTION_FILES = ("ckpt.pth", "run.py", "requirements.txt")
MAX_LISTED = 10


def _image_sizes(images: Path) -> dict[str, tuple[int, int]]:
    sizes = {}
    for p in sorted(images.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            with Image.open(p) as im:
                sizes[p.stem] = (im.height, im.width)
    return sizes


def check_zip(zip_path: Path, images: Path, phase: str = "final") -> list[str]:
    """Every problem found, one line each (empty list: the zip is fine)."""
    if not zip_path.is_file():
        return [f"{zip_path}: no such file"]
    if not images.is_dir():
        return [f"{images}: image folder missing"]
    try:
        z = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        return [f"{zip_path}: not a zip file"]
    problems: list[str] = []
    with z:
        files = [PurePosixPath(n) for n in z.namelist() if not n.endswith("/")]
        tops = {f.parts[0] for f in files} | {PurePosixPath(n).parts[0] for n in z.namelist()}
        allowed = {"masks", "solution"} if phase == "final" else {"masks"}
        extra = sorted(tops - allowed)
        if extra:
            problems.append(f"unexpected entries at the zip root: {', '.join(extra)} (expected only "
                            f"{' and '.join(sorted(allowed))}/)")
        if "masks" not in tops:
            problems.append("no masks/ folder at the zip root")
        if phase == "final":
            present = {f.name for f in files if f.parts[0] == "solution" and len(f.parts) == 2}
            missing = [n for n in SOLUTION_FILES if n not in present]
            if missing:
                problems.append(f"solution/ lacks {', '.join(missing)}")
        sizes = _image_sizes(images)
        masks = {f.stem: f for f in files if f.parts[0] == "masks"}
        nested_or_other = [str(f) for f in masks.values() if len(f.parts) != 2 or f.suffix.lower() != ".png"]
        if nested_or_other:
            problems.append(f"masks/ must hold only PNG files: {', '.join(nested_or_other[:MAX_LISTED])}")
        unknown = sorted(set(masks) - set(sizes))
        if unknown:
            problems.append(f"masks without a test image: {', '.join(unknown[:MAX_LISTED])}")
        if phase == "final":
            lacking = sorted(set(sizes) - set(masks))
            if lacking:
                problems.append(f"test images without a mask ({len(lacking)}): {', '.join(lacking[:MAX_LISTED])}")
        bad = []
        for stem in sorted(set(masks) & set(sizes)):
            try:
                with Image.open(io.BytesIO(z.read(str(masks[stem])))) as im:
                    if im.mode not in MASK_MODES:
                        bad.append(f"{masks[stem]}: mode {im.mode}, expected single-channel (P or L)")
                        continue
                    arr = np.asarray(im)
            except OSError as e:
                bad.append(f"{masks[stem]}: unreadable ({e})")
                continue
            if arr.shape != sizes[stem]:
                bad.append(f"{masks[stem]}: {arr.shape[1]}x{arr.shape[0]}, image is "
                           f"{sizes[stem][1]}x{sizes[stem][0]}")
            elif arr.max() > 18:
                bad.append(f"{masks[stem]}: label {arr.max()} outside 0..18")
        problems += bad
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser("python -m train.submission", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="verify a submission zip", formatter_class=HelpFormatter).add_argument_group(
        "the submission and its images")
    c.add_argument("zip", type=Path, help="the submission zip")
    c.add_argument("--images", type=Path, required=True, help="folder of the test images the masks are for")
    c.add_argument("--phase", choices=("final", "dev"), default="final",
                   help="final: masks/ + solution/ with a mask per image; dev: masks/ only")
    args = parser.parse_args(argv)
    problems = check_zip(args.zip, args.images, args.phase)
    if problems:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    print(f"ok: {args.zip} is a valid {args.phase}-phase submission for {args.images}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
