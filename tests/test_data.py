from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, run_main
from PIL import Image

from train.data import DataError, check, load_split


@pytest.fixture
def data(tiny_data, tmp_path) -> Path:
    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    return root


def first(root: Path, split: str = "train", kind: str = "masks") -> Path:
    return sorted((root / split / kind).iterdir())[0]


def break_lonely_image(root):
    first(root).unlink()


def break_lonely_mask(root):
    first(root, kind="images").unlink()


def break_rgb_mask(root):
    p = first(root)
    Image.open(p).convert("RGB").save(p)


def break_label_range(root):
    p = first(root)
    m = np.array(Image.open(p))
    m[0, 0] = 25
    Image.fromarray(m, mode="L").save(p)


def break_size(root):
    p = first(root)
    Image.open(p).resize((32, 32)).save(p)


def break_corrupt(root):
    p = first(root, kind="images")
    p.write_bytes(p.read_bytes()[:200])


def break_missing_folder(root):
    shutil.rmtree(root / "val" / "masks")


def break_empty_folder(root):
    shutil.rmtree(root / "val")
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "masks").mkdir()


def break_stray_file(root):
    (root / "train" / "images" / "notes.txt").write_text("hello")


CASES = [
    (break_lonely_image, "images without a mask", "images"),
    (break_lonely_mask, "masks without an image", "masks"),
    (break_rgb_mask, "mode RGB", "masks"),
    (break_label_range, "outside 0..18", "masks"),
    (break_size, "size differs", "masks"),
    (break_corrupt, "corrupt", "images"),
    (break_missing_folder, "folder missing", None),
    (break_empty_folder, "empty", None),
    (break_stray_file, "unexpected files", None),
]


@pytest.mark.parametrize("breaker,message,named", CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_data_is_refused_with_the_file_named(data, breaker, message, named):
    target = first(data, kind=named) if named else None
    breaker(data)
    with pytest.raises(DataError, match=message):
        check(data)
    res = run_main("train.data", "check", str(data))
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    if named:
        assert target.name in res.stderr


def test_check_summary_on_good_data(tiny_data):
    res = run_cli("train.data", "check", str(tiny_data))
    assert res.returncode == 0, res.stderr
    assert "train: 24 pairs" in res.stdout and "val: 8 pairs" in res.stdout and "test: 4 images" in res.stdout
    assert "eye_glasses" in res.stdout


def test_load_resizes_once_and_keeps_native_masks(tiny_data):
    split = load_split(tiny_data, "val", size=32, keep_full_masks=True)
    assert split.images.shape == (8, 32, 32, 3) and split.images.dtype == np.uint8
    assert split.masks.shape == (8, 32, 32)
    assert split.full_masks[0].shape == (64, 64)
    assert set(np.unique(split.masks)) <= set(np.unique(np.concatenate([m.ravel() for m in split.full_masks])))


def test_check_real_train_split(real_data):
    summary = check(real_data)
    assert "train: 800 pairs, sizes 512x512" in summary and "val: 100 pairs" in summary
