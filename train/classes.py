"""The 19 face-parsing classes of CelebAMask-HQ and their left/right pairs.

"Left" is the subject's left, which appears on the image's right in a frontal photo.
"""

from __future__ import annotations

import numpy as np

from space.config import NUM_CLASSES

CLASS_NAMES = (
    "background", "skin", "nose", "eye_glasses", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "earring", "necklace", "neck", "cloth",
)
LR_PAIRS = ((4, 5), (6, 7), (8, 9))


def flip_lut() -> np.ndarray:
    """Label lookup table applied with a horizontal flip: swaps left and right classes."""
    lut = np.arange(NUM_CLASSES, dtype=np.uint8)
    for a, b in LR_PAIRS:
        lut[a], lut[b] = b, a
    return lut


FLIP_LUT = flip_lut()

# A fixed colour per class for overlays and prediction grids (RGB).
PALETTE = np.array([
    (0, 0, 0), (204, 153, 128), (255, 120, 60), (90, 200, 255), (0, 0, 255), (255, 0, 0),
    (0, 160, 0), (160, 0, 160), (255, 255, 0), (0, 255, 255), (120, 60, 0), (255, 0, 120),
    (180, 0, 60), (100, 60, 20), (0, 80, 160), (255, 215, 0), (170, 255, 170), (255, 190, 150),
    (60, 60, 160),
], dtype=np.uint8)


def colorize(mask: np.ndarray) -> np.ndarray:
    """(H, W) label map -> (H, W, 3) uint8 colour image."""
    return PALETTE[np.clip(mask, 0, NUM_CLASSES - 1)]
