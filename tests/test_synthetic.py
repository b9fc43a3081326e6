from __future__ import annotations

import hashlib

import numpy as np
from conftest import run_cli
from PIL import Image

from train.data import check, load_split


def digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_generator_layout_classes_and_determinism(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out, seed in ((a, 5), (b, 5)):
        res = run_cli("train.synthetic", "--out", str(out), "--train", "200", "--val", "4", "--test", "2",
                      "--size", "64", "--seed", str(seed))
        assert res.returncode == 0, res.stderr
    assert digest(a) == digest(b)
    check(a)  # raises on any layout problem
    train = load_split(a, "train")
    present = set(np.unique(train.masks))
    assert present == set(range(19))
    # minority classes are a minority, as in real data
    per_image = [set(np.unique(m)) for m in train.masks]
    for c in (3, 14, 15, 16):
        share = np.mean([c in s for s in per_image])
        assert 0.03 < share < 0.5, (c, share)
    # the subject's left eye lies on the image's right on average
    xs4 = np.mean([np.nonzero(m == 4)[1].mean() for m in train.masks if (m == 4).any()])
    xs5 = np.mean([np.nonzero(m == 5)[1].mean() for m in train.masks if (m == 5).any()])
    assert xs4 > xs5
    assert Image.open(next((a / "train" / "masks").iterdir())).mode == "P"


def test_other_seed_differs(tmp_path):
    from train.synthetic import write_dataset

    a = write_dataset(tmp_path / "a", {"train": 3}, 48, seed=1)
    b = write_dataset(tmp_path / "b", {"train": 3}, 48, seed=2)
    assert digest(a) != digest(b)
