"""Procedural face-like images with label maps, in the challenge layout: the product's embedded default data.

`python -m train.synthetic --out DIR --train N --val M --test K --size S --seed X`

Each face is drawn as a label map (background, cloth, neck, hair, ears, skin, brows, eyes, nose, lips, mouth,
and in a minority of faces glasses, hat, earrings, necklace), with the subject's left parts on the image's
right as in CelebAMask-HQ. Pose (rotation, scale, position, yaw), colours and textures vary per face, and the
image gets blur and JPEG artefacts, so colour alone does not give the label: shape and context must be learnt.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from train.classes import NUM_CLASSES, PALETTE
from train.cli import parser as cli_parser

DEFAULT_DIR = Path("data/synthetic")
DEFAULT_COUNTS = {"train": 240, "val": 60, "test": 20}
DEFAULT_SIZE = 128


def _ellipse(draw: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, fill: int, width: int = 0):
    box = (cx - rx, cy - ry, cx + rx, cy + ry)
    if width:
        draw.ellipse(box, outline=fill, width=width)
    else:
        draw.ellipse(box, fill=fill)


def draw_labels(rng: np.random.Generator, s: int) -> Image.Image:
    """One face's label map (mode L, s x s), frontal and centred; pose is applied afterwards."""
    lab = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(lab)
    cx, cy = s / 2, s * rng.uniform(0.42, 0.5)
    fw, fh = s * rng.uniform(0.17, 0.22), s * rng.uniform(0.23, 0.28)  # face half-width / half-height
    yaw = rng.uniform(-0.35, 0.35)  # features shift sideways as the head turns
    fx = cx + yaw * fw * 0.5
    # cloth and neck
    if rng.random() < 0.85:
        top = cy + fh * rng.uniform(1.25, 1.6)
        d.rounded_rectangle((cx - fw * rng.uniform(1.8, 3.0), top, cx + fw * rng.uniform(1.8, 3.0), s * 1.2),
                            radius=int(fw * 0.8), fill=18)
    nw = fw * rng.uniform(0.45, 0.65)
    d.rectangle((cx - nw, cy + fh * 0.5, cx + nw, cy + fh * rng.uniform(1.3, 1.8)), fill=17)
    # long hair behind the head
    hair_len = rng.uniform(0.6, 1.9)
    if rng.random() < 0.9:
        hw = fw * rng.uniform(1.1, 1.45)
        d.rounded_rectangle((cx - hw, cy - fh * 1.15, cx + hw, cy + fh * hair_len), radius=int(hw * 0.9), fill=13)
    # ears: the subject's left ear (8) on the image's right; the far ear hides as the head turns
    ey = cy + fh * rng.uniform(-0.05, 0.1)
    for label, side in ((8, 1), (9, -1)):
        if side * yaw < 0.2 or rng.random() < 0.3:
            _ellipse(d, cx + side * fw * 0.98 + yaw * fw * 0.2, ey, fw * 0.18, fh * 0.22, label)
    _ellipse(d, cx, cy, fw, fh, 1)  # skin
    # fringe over the forehead
    if rng.random() < 0.85:
        fringe = rng.uniform(0.35, 0.75)
        d.chord((cx - fw * 1.08, cy - fh * 1.12, cx + fw * 1.08, cy - fh * 1.12 + 2 * fh * fringe), 180, 360, fill=13)
    # brows and eyes: 6/4 (subject's left) on the image's right
    eye_dx, eye_y = fw * rng.uniform(0.36, 0.48), cy - fh * rng.uniform(0.05, 0.18)
    eye_r = fw * rng.uniform(0.14, 0.2)
    for brow, eye, side in ((6, 4, 1), (7, 5, -1)):
        ex = fx + side * eye_dx
        by = eye_y - eye_r * rng.uniform(1.3, 2.0)
        d.polygon([(ex - eye_r * 1.4, by + eye_r * 0.3), (ex, by - eye_r * 0.3), (ex + eye_r * 1.4, by + eye_r * 0.3),
                   (ex, by + eye_r * 0.2)], fill=brow)
        d.line([(ex - eye_r * 1.4, by + eye_r * 0.2), (ex, by - eye_r * 0.2), (ex + eye_r * 1.4, by + eye_r * 0.2)],
               fill=brow, width=max(1, int(eye_r * 0.5)))
        _ellipse(d, ex, eye_y, eye_r * 1.1, eye_r * rng.uniform(0.45, 0.7), eye)
    # nose
    ny = cy + fh * rng.uniform(0.15, 0.3)
    nwid = fw * rng.uniform(0.14, 0.22)
    d.polygon([(fx, eye_y + eye_r), (fx - nwid, ny), (fx + nwid, ny)], fill=2)
    # lips and (open) mouth
    my, mw = cy + fh * rng.uniform(0.5, 0.62), fw * rng.uniform(0.3, 0.45)
    lip = fh * rng.uniform(0.05, 0.09)
    gap = fh * rng.uniform(0.02, 0.1) if rng.random() < 0.4 else 0.0
    d.chord((fx - mw, my - lip * 2, fx + mw, my + lip * 0.2), 0, 180, fill=11)
    d.chord((fx - mw * 0.9, my - lip * 1.6 + gap, fx + mw * 0.9, my + lip * 2 + gap), 0, 180, fill=12)
    d.chord((fx - mw, my - lip * 2 - lip * 0.4, fx + mw, my - lip * 0.2), 180, 360, fill=11)
    if gap:
        _ellipse(d, fx, my + gap * 0.5, mw * 0.75, gap * 0.8, 10)
    # minority accessories
    if rng.random() < 0.25:  # glasses: two rims and a bridge
        w = max(1, int(eye_r * 0.35))
        for side in (1, -1):
            _ellipse(d, fx + side * eye_dx, eye_y, eye_r * 1.7, eye_r * 1.35, 3, width=w)
        d.line([(fx - eye_dx + eye_r * 1.7, eye_y), (fx + eye_dx - eye_r * 1.7, eye_y)], fill=3, width=w)
    if rng.random() < 0.25:  # earring under one or both ear lobes
        for side in ((1,), (-1,), (1, -1))[rng.integers(3)]:
            _ellipse(d, cx + side * fw * 0.98 + yaw * fw * 0.2, ey + fh * 0.3, fw * 0.07, fw * 0.09, 15)
    if rng.random() < 0.15:  # necklace across the neck base
        ny0 = cy + fh * 1.25
        d.arc((cx - nw * 1.6, ny0 - fh * 0.6, cx + nw * 1.6, ny0 + fh * 0.35), 10, 170, fill=16,
              width=max(1, int(s * 0.012)))
    if rng.random() < 0.15:  # hat over the top of the head
        hy = cy - fh * rng.uniform(0.45, 0.75)
        d.chord((cx - fw * 1.25, hy - fh * 1.2, cx + fw * 1.25, hy + fh * 0.3), 180, 360, fill=14)
        d.rectangle((cx - fw * 1.45, hy - fh * 0.12, cx + fw * 1.45, hy + fh * 0.05), fill=14)
    return lab


def _colours(rng: np.random.Generator) -> np.ndarray:
    """A per-face colour for every class; skin-like parts share the skin tone with small shifts."""
    cols = rng.uniform(0, 255, size=(NUM_CLASSES, 3))
    skin = np.array([rng.uniform(90, 240), 0, 0])
    skin[1] = skin[0] * rng.uniform(0.65, 0.85)
    skin[2] = skin[1] * rng.uniform(0.7, 0.95)
    cols[1] = skin
    cols[2] = skin * rng.uniform(0.85, 0.97)  # nose: barely different from skin
    cols[8] = cols[9] = skin * rng.uniform(0.85, 1.0)
    cols[17] = skin * rng.uniform(0.75, 0.95)
    lip = skin * np.array([1.0, 0.6, 0.6]) * rng.uniform(0.8, 1.0)
    cols[11] = cols[12] = lip
    cols[10] = skin * 0.3
    hair = rng.uniform(10, 200) * np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.4, 0.9)])
    cols[13] = hair
    cols[6] = cols[7] = hair * rng.uniform(0.5, 0.9)
    eye = rng.uniform(20, 90)
    cols[4] = cols[5] = (eye, eye, eye * 1.1)
    cols[3] = rng.uniform(0, 60, size=3)
    cols[15] = rng.uniform(150, 255, size=3)
    cols[16] = rng.uniform(120, 255, size=3)
    return np.clip(cols, 0, 255)


def render(rng: np.random.Generator, lab: np.ndarray) -> np.ndarray:
    """RGB image for a label map: per-class colours, textures, lighting gradient and noise."""
    s = lab.shape[0]
    cols = _colours(rng)
    img = cols[lab].astype(np.float32)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    # background: gradient and soft blobs of a second colour
    bg2 = rng.uniform(0, 255, 3)
    blob = np.sin(xx * rng.uniform(3, 12) + rng.uniform(0, 6)) * np.cos(yy * rng.uniform(3, 12))
    mix = np.clip(0.5 + 0.5 * blob, 0, 1)[..., None] * rng.uniform(0.2, 0.8)
    bg = img * (1 - mix) + bg2 * mix
    img = np.where((lab == 0)[..., None], bg, img)
    # hair strands: fine stripes
    stripes = np.sin(xx * rng.uniform(40, 90) + yy * rng.uniform(-20, 20))[..., None] * rng.uniform(8, 25)
    img = np.where((lab == 13)[..., None], img + stripes, img)
    # lighting from a random side, plus sensor noise
    light = 1 + rng.uniform(-0.25, 0.25) * (xx - 0.5) + rng.uniform(-0.2, 0.2) * (yy - 0.5)
    img = img * light[..., None] + rng.normal(0, rng.uniform(3, 12), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_face(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image, mask) pair at `size`: draw, pose, render, blur, JPEG."""
    big = size * 2
    lab = draw_labels(rng, big)
    angle = rng.uniform(-20, 20)
    scale = rng.uniform(0.85, 1.2)
    shift = rng.uniform(-0.08, 0.08, 2) * big
    lab = lab.rotate(angle, Image.Resampling.NEAREST, center=(big / 2, big / 2), translate=tuple(shift))
    side = int(big / scale)
    off = (big - side) // 2
    lab = lab.crop((off, off, off + side, off + side)).resize((size, size), Image.Resampling.NEAREST)
    mask = np.asarray(lab)
    img = Image.fromarray(render(rng, mask))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.0)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(40, 95)))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")), mask


def write_dataset(out: Path, counts: dict[str, int], size: int = DEFAULT_SIZE, seed: int = 0) -> Path:
    """Write the challenge layout under `out` (masks as palette PNGs, like the real data)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    palette = PALETTE.ravel().tolist()
    for split, n in counts.items():
        if n <= 0:
            continue
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        if split != "test":
            (out / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, mask = make_face(rng, size)
            stem = f"{split}_{i:05d}"
            Image.fromarray(img).save(out / split / "images" / f"{stem}.jpg", quality=95)
            if split != "test":
                m = Image.fromarray(mask, mode="L").convert("P")
                m.putpalette(palette)
                m.save(out / split / "masks" / f"{stem}.png")
    return out


def ensure_default(root: Path = DEFAULT_DIR) -> Path:
    """The embedded default data set: generated once into data/synthetic/ and reused after."""
    root = Path(root)
    if not (root / "train" / "masks").is_dir() or not (root / ".complete").exists():
        print(f"No data given and no data/celebamask-mini/: generating the synthetic face set into {root}/ "
              f"({sum(DEFAULT_COUNTS.values())} images at {DEFAULT_SIZE} px, once).", flush=True)
        write_dataset(root, DEFAULT_COUNTS, DEFAULT_SIZE, seed=0)
        (root / ".complete").touch()
    return root


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser("python -m train.synthetic", __doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="output root (default: %(default)s)")
    parser.add_argument("--train", type=int, default=DEFAULT_COUNTS["train"], help="training pairs")
    parser.add_argument("--val", type=int, default=DEFAULT_COUNTS["val"], help="validation pairs")
    parser.add_argument("--test", type=int, default=DEFAULT_COUNTS["test"], help="test images (no masks)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    args = parser.parse_args(argv)
    for name in ("train", "val", "test"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.size < 32:
        parser.error(f"--size must be >= 32, got {args.size}")
    write_dataset(args.out, {"train": args.train, "val": args.val, "test": args.test}, args.size, args.seed)
    print(f"wrote {args.train} train, {args.val} val, {args.test} test faces at {args.size} px to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
