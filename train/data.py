"""Challenge-layout face-parsing data: validation, in-memory loading, and `python -m train.data check ROOT`.

Layout: ROOT/{train,val}/images/*.jpg with ROOT/{train,val}/masks/*.png (single-channel label maps, values
0..18), and ROOT/test/images/*.jpg. Images are decoded once and kept as uint8, resized once to the training
size when one is given, never per epoch.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from train.classes import CLASS_NAMES, NUM_CLASSES
from train.cli import parser as cli_parser
from train.imageops import resize_image
from train.synthetic import ensure_default

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIX = ".png"
MASK_MODES = ("P", "L")  # single-channel; "I"/"I;16" are refused too: labels are 8-bit
MAX_NAMED = 10
SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A dataset problem, with a one-line message that names the files and what was expected."""


def _names(paths: list[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:MAX_NAMED])
    more = len(paths) - MAX_NAMED
    return shown + (f" (and {more} more)" if more > 0 else "")


def _listing(folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    """Stem -> path for the files in `folder`; refuses a missing/empty folder and unexpected files."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder missing (expected {what})")
    files = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    strays = [p for p in files if p.is_dir() or p.suffix.lower() not in suffixes]
    if strays:
        raise DataError(f"unexpected files in {folder} (expected only {'/'.join(suffixes)}): {_names(strays)}")
    if not files:
        raise DataError(f"{folder}: folder is empty (expected {what})")
    return {p.stem: p for p in files}


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path | None


def list_split(root: Path, split: str) -> list[Pair]:
    """Pairs of one split, checked for matching names; test has images only."""
    base = Path(root) / split
    images = _listing(base / "images", IMAGE_SUFFIXES, "*.jpg images")
    if split == "test":
        return [Pair(images[s], None) for s in sorted(images)]
    masks = _listing(base / "masks", (MASK_SUFFIX,), "*.png label masks")
    lonely_images = [images[s] for s in sorted(set(images) - set(masks))]
    if lonely_images:
        raise DataError(f"images without a mask in {base / 'masks'}: {_names(lonely_images)}")
    lonely_masks = [masks[s] for s in sorted(set(masks) - set(images))]
    if lonely_masks:
        raise DataError(f"masks without an image in {base / 'images'}: {_names(lonely_masks)}")
    return [Pair(images[s], masks[s]) for s in sorted(images)]


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; DataError naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: unreadable or corrupt image ({e})") from None


def read_mask(path: Path) -> np.ndarray:
    """(H, W) uint8 label map; refuses colour masks and labels outside 0..18."""
    try:
        with Image.open(path) as im:
            if im.mode not in MASK_MODES:
                raise DataError(
                    f"{path}: mask has mode {im.mode} with {len(im.getbands())} channel(s); expected a "
                    f"single-channel label map (mode P or L) with values 0..{NUM_CLASSES - 1}")
            mask = np.asarray(im)
    except DataError:
        raise
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable or corrupt mask ({e})") from None
    return mask.astype(np.uint8, copy=False)


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    if mask.shape[0] == size and mask.shape[1] == size:
        return mask
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))


@dataclass
class Split:
    """One split in memory: images (N, S, S, 3) uint8 at the training size (or native), masks likewise
    (N, S, S) uint8, `full_masks` the masks at their native resolution (for scoring as the challenge does)."""

    name: str
    stems: list[str]
    images: np.ndarray
    masks: np.ndarray | None
    full_masks: list[np.ndarray] | None
    sizes: list[tuple[int, int]]  # native (H, W) per image

    def __len__(self) -> int:
        return len(self.stems)

    def head(self, fraction: float) -> Split:
        """The first `fraction` of the pairs (at least 2): a proxy's training subset, the same one every time."""
        n = max(2, int(round(len(self) * fraction)))
        full = None if self.full_masks is None else self.full_masks[:n]
        masks = None if self.masks is None else self.masks[:n]
        return Split(self.name, self.stems[:n], self.images[:n], masks, full, self.sizes[:n])


def load_split(root: Path, split: str, size: int | None = None, limit: int | None = None,
               keep_full_masks: bool = False) -> Split:
    """Validate and decode one split into memory. All problems of one kind are reported together."""
    pairs = list_split(Path(root), split)
    if limit is not None:
        pairs = pairs[:limit]
    images, masks, full, sizes = [], [], [], []
    bad_range, bad_size, errors = [], [], []
    for pair in pairs:
        try:
            img = read_image(pair.image)
            mask = read_mask(pair.mask) if pair.mask is not None else None
        except DataError as e:
            errors.append(e)
            continue
        if mask is not None:
            if mask.shape != img.shape[:2]:
                bad_size.append(pair.mask)
                continue
            if mask.max() >= NUM_CLASSES:
                bad_range.append(pair.mask)
                continue
        sizes.append(img.shape[:2])
        if size is None and images and img.shape != images[0].shape:
            raise DataError(f"{pair.image}: size {img.shape[1]}x{img.shape[0]} differs from "
                            f"{images[0].shape[1]}x{images[0].shape[0]}; give a training size to resize")
        images.append(img if size is None else resize_image(img, size))
        if mask is not None:
            masks.append(mask if size is None else _resize_mask(mask, size))
            if keep_full_masks:
                full.append(mask)
    if errors:
        raise DataError(errors[0].args[0] + (f" (and {len(errors) - 1} more bad files)" if len(errors) > 1 else ""))
    if bad_size:
        raise DataError(f"mask size differs from its image's (expected equal sizes): {_names(bad_size)}")
    if bad_range:
        raise DataError(f"label values outside 0..{NUM_CLASSES - 1} in: {_names(bad_range)}")
    return Split(
        name=split,
        stems=[p.image.stem for p in pairs],
        images=np.stack(images),
        masks=np.stack(masks) if masks else None,
        full_masks=full if keep_full_masks else None,
        sizes=sizes,
    )


def concat(a: Split, b: Split, name: str) -> Split:
    """Two splits cached at one size as one (train + val for a fit on both)."""
    full = None if a.full_masks is None or b.full_masks is None else a.full_masks + b.full_masks
    return Split(name, a.stems + b.stems, np.concatenate([a.images, b.images]), np.concatenate([a.masks, b.masks]),
                 full, a.sizes + b.sizes)


class SplitCache:
    """(train, val) of one data folder at each training size, decoded on first use and kept: what `fit` walks
    through a resolution schedule. `subset` keeps the first share of train (a proxy's), `include_val` trains on
    train + val (val is still what is scored)."""

    def __init__(self, root: Path, *, subset: float = 1.0, include_val: bool = False):
        self.root, self.subset, self.include_val = Path(root), subset, include_val
        self._cache: dict[int, tuple[Split, Split]] = {}

    def __getitem__(self, size: int) -> tuple[Split, Split]:
        if size not in self._cache:
            train = load_split(self.root, "train", size=size).head(self.subset)
            val = load_split(self.root, "val", size=size, keep_full_masks=True)
            if self.include_val:
                train = concat(train, dataclasses.replace(val, full_masks=None), "train+val")
            self._cache[size] = (train, val)
        return self._cache[size]


def resolve_data(data: Path | None) -> Path:
    """The data folder a CLI should use: the one given, else data/celebamask-mini/, else the synthetic set."""
    if data is not None:
        return Path(data)
    real = Path("data/celebamask-mini")
    if real.is_dir():
        return real
    return ensure_default()


def class_stats(masks: list[np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class pixel counts and number of images containing each class."""
    pixels = np.zeros(NUM_CLASSES, dtype=np.int64)
    images = np.zeros(NUM_CLASSES, dtype=np.int64)
    for m in masks:
        counts = np.bincount(m.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
        pixels += counts
        images += counts > 0
    return pixels, images


def check(root: Path) -> str:
    """Validate every split present under `root` (train and val required) and return a summary."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder missing (expected {root}/train/images, {root}/train/masks, ...)")
    lines = [f"dataset {root}"]
    stats = {}
    for split in SPLITS:
        if split == "test" and not (root / "test").exists():
            lines.append("test: absent")
            continue
        data = load_split(root, split)
        sizes = sorted({f"{w}x{h}" for h, w in data.sizes})
        lines.append(f"{split}: {len(data)} {'images' if data.masks is None else 'pairs'}, sizes {', '.join(sizes)}")
        if data.masks is not None:
            stats[split] = class_stats(data.masks)
    for split, (pixels, images) in stats.items():
        lines.append(f"\n{split} class statistics")
        lines.append(f"{'id':>3} {'class':<12} {'pixel %':>8} {'images':>7}")
        total = pixels.sum()
        for c in range(NUM_CLASSES):
            lines.append(f"{c:>3} {CLASS_NAMES[c]:<12} {100 * pixels[c] / total:>8.3f} {images[c]:>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser("python -m train.data", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="validate a dataset folder and print a summary")
    p_check.add_argument("root", type=Path, help="dataset root holding train/, val/ and optionally test/")
    args = parser.parse_args(argv)
    try:
        print(check(args.root))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
