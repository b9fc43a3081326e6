"""`python -m train.export --weights CKPT --out MODEL.onnx`: the exported network as ONNX, checked against PyTorch
with onnxruntime, and its latency.

The ONNX input is `image` (1, 3, H, W) float, normalised as `train.infer.normalise` does; the output `logits`
(1, 19, H, W). By default H = W = the checkpoint's size (what `run.py` resizes every image to); `--dynamic` exports
a variable height and width, but only after checking that the network gives PyTorch's labels at several other
sizes too (padding arithmetic and pooling bins may not trace that way): otherwise it refuses, naming the size
that differs. After exporting, the label maps of a few images (the data folder's val images, else generated faces)
must agree with PyTorch's on at least 99.9 % of pixels, or the command exits 1 saying how far they differ.
`--check MODEL.onnx` runs that comparison on an existing file. Needs the optional extra: pip install -e '.[export]'.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from train.cli import parser, renamed
from train.data import DataError, list_split, resolve_data
from train.imageops import describe_sizes, resize_image
from train.infer import MEAN, STD, load_checkpoint, load_rgb, pick_device, safe_load, to_tensor
from train.schedule import MAX_SIZE, MIN_SIZE

AGREE = 0.999  # share of pixels whose argmax label must match PyTorch's
LATENCY_SIZE = 512  # the task's resolution
DYNAMIC_CHECK = (1.5, 0.75)  # other sizes tried before a dynamic export is accepted, as multiples of the size


class ExportError(ValueError):
    """The export cannot be made or trusted, with a one-line reason."""


def export_onnx(model: torch.nn.Module, size: int, path: Path, dynamic: bool = False) -> None:
    """Trace `model` (eval mode, CPU) to ONNX at `size` x `size`, or with a dynamic height and width."""
    x = torch.zeros(1, 3, size, size)
    shapes = ({2: torch.export.Dim("height", min=32, max=4096), 3: torch.export.Dim("width", min=32, max=4096)},)
    quiet = logging.getLogger("torch.onnx")  # e.g. "torchvision is not installed. Skipping torchvision::nms"
    level, quiet.level = quiet.level, logging.ERROR
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (x,), dynamo=True, input_names=["image"], output_names=["logits"],
                                         dynamic_shapes=shapes if dynamic else None, optimize=True)
    finally:
        quiet.level = level
    program.save(str(path))


def onnx_size(path: Path) -> int | None:
    """The fixed input height of an ONNX file (None when it is dynamic); an ExportError naming a file that
    onnxruntime cannot load or that is not one of our exports."""
    try:
        shape = session(path, 1).get_inputs()[0].shape
    except Exception as e:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...) for a bad file
        raise ExportError(f"--check {path}: not an ONNX model onnxruntime can load "
                          f"({str(e).splitlines()[0][:200]})") from None
    if len(shape) != 4:
        raise ExportError(f"--check {path}: its input has shape {shape}, expected (1, 3, H, W)")
    return shape[2] if isinstance(shape[2], int) else None


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def sample_images(data: Path | None, n: int = 4) -> list[np.ndarray]:
    """The first `n` val images of the data folder (the synthetic faces where none is given or found)."""
    root = resolve_data(data)
    try:
        pairs = list_split(root, "val")[:n]
    except DataError:
        pairs = list_split(root, "test")[:n]
    return [load_rgb(p.image) for p in pairs]


def agreement(model: torch.nn.Module, onnx_path: Path, images: list[np.ndarray], size: int, threads: int) -> float:
    """Share of pixels whose argmax label from onnxruntime equals PyTorch's, over `images` resized to `size`."""
    sess = session(onnx_path, threads)
    same = total = 0
    for image in images:
        x = to_tensor(resize_image(image, size)[None], torch.device("cpu"))
        with torch.no_grad():
            ours = model(x).argmax(1).numpy()
        theirs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0].argmax(1)
        same, total = same + int((ours == theirs).sum()), total + ours.size
    return same / total


def latency(model: torch.nn.Module, onnx_path: Path, size: int, threads: int, runs: int = 10) -> dict[str, float]:
    """Median milliseconds of one forward on a (1, 3, size, size) tensor, PyTorch and onnxruntime, `threads`
    threads each, after a warm-up run."""
    x, previous = torch.randn(1, 3, size, size), torch.get_num_threads()
    torch.set_num_threads(threads)  # and back after: the caller's process keeps its own thread count
    sess = session(onnx_path, threads)
    feed = {sess.get_inputs()[0].name: x.numpy()}
    times: dict[str, list[float]] = {"pytorch_ms": [], "onnxruntime_ms": []}
    try:
        with torch.no_grad():
            for i in range(runs + 1):
                for key, run in (("pytorch_ms", lambda: model(x)), ("onnxruntime_ms", lambda: sess.run(None, feed))):
                    t0 = time.perf_counter()
                    run()
                    if i:  # the first run warms up
                        times[key].append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_num_threads(previous)
    return {k: statistics.median(v) for k, v in times.items()}


def check_dynamic(model: torch.nn.Module, onnx_path: Path, images: list[np.ndarray], size: int, threads: int) -> None:
    for factor in DYNAMIC_CHECK:
        other = max(32, int(round(size * factor)) + 1)  # deliberately not a multiple of the network's stride
        share = agreement(model, onnx_path, images, other, threads)
        if share < AGREE:
            raise ExportError(f"the dynamic export differs from PyTorch at {other}x{other} px ({share:.2%} of pixels "
                              f"agree): this network does not trace to a variable size; export without --dynamic")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("python -m train.export", __doc__, epilog="Details: docs/deliverables.md.")
    g = p.add_argument_group("export")
    g.add_argument("--weights", type=Path, required=True, help="an exported checkpoint (train.final's ckpt.pth)")
    g.add_argument("--out", type=Path, default=None, help="the ONNX file to write (default: model.onnx beside the "
                                                          "checkpoint)")
    g.add_argument("--input-size", type=int, default=None, metavar="PX",
                   help="a fixed input height and width (default: the checkpoint's prediction size; a dynamic graph "
                        "when it predicts at several sizes)")
    renamed(g, "--size", "--input-size", "input_size", type=int)
    g.add_argument("--dynamic", action="store_true",
                   help="variable input height and width, accepted only if it agrees with PyTorch at other sizes")
    g = p.add_argument_group("check and timing")
    g.add_argument("--check", type=Path, default=None, metavar="MODEL.onnx",
                   help="do not export: compare this ONNX file with the checkpoint (exit 1 below 99.9%% agreement)")
    g.add_argument("--data", type=Path, default=None,
                   help="data folder whose first val images are compared (default data/celebamask-mini, else "
                        "generated faces)")
    g.add_argument("--images", type=int, default=4, help="how many images to compare")
    g.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="threads for PyTorch and onnxruntime in the latency figures")
    g.add_argument("--repeats", type=int, default=10, metavar="N",
                   help="timed runs per runtime (the median is printed)")
    renamed(g, "--runs", "--repeats", "repeats", type=int)
    return p.parse_args(argv)


def write_setting(target: Path, sizes: tuple[int, ...], graph_size: int | None) -> Path:
    """MODEL.onnx.json beside the ONNX file: how to feed this graph so that it predicts as the checkpoint does, with
    only sizes the graph takes (a fixed graph: its own size, and a note where the checkpoint predicts otherwise)."""
    feed = sizes if graph_size is None else (graph_size,)
    setting = {
        "input": f"image: 1x3xHxW float32, RGB / 255, minus {MEAN}, divided by {STD}",
        "graph_size": graph_size if graph_size is not None else "dynamic",
        "predict_sizes": list(feed),
        "how": ("resize the image to each size, run the graph, upsample the logits bilinearly to the image's size, "
                "average them over the sizes, argmax" if len(feed) > 1 else
                f"resize the image to {feed[0]}x{feed[0]}, run the graph, upsample the logits bilinearly to the "
                f"image's size, argmax"),
        "flip_tta": "optional: also run the mirrored image, flip its logits back, swap channels 4<->5, 6<->7, 8<->9, "
                    "average (+0.006 val F measured)"}
    if tuple(feed) != tuple(sizes):
        setting["note"] = (f"the checkpoint predicts at {describe_sizes(sizes)}; this graph takes {graph_size} px "
                           f"only: export with --dynamic (or without --input-size) to predict as it does")
    path = target.with_name(target.name + ".json")
    path.write_text(json.dumps(setting, indent=1) + "\n")
    return path


def run(args: argparse.Namespace) -> int:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ExportError(f"{e.name} is not installed: pip install -e '.[export]'") from None
    for path, what in ((args.weights, "--weights"), (args.check, "--check")):
        if path is not None and not path.is_file():
            raise ExportError(f"{what} {path} does not exist")
    for value, what in ((args.images, "--images"), (args.threads, "--threads"), (args.repeats, "--repeats")):
        if value < 1:
            raise ExportError(f"{what} must be >= 1, got {value}")
    if args.input_size is not None and not MIN_SIZE <= args.input_size <= MAX_SIZE:
        raise ExportError(f"--input-size must be {MIN_SIZE}..{MAX_SIZE} px, got {args.input_size}")
    if args.check is None and args.out is not None and not args.out.parent.is_dir():
        raise ExportError(f"--out {args.out}: folder {args.out.parent} does not exist")
    if args.check is None and args.out is not None and args.out.is_dir():
        raise ExportError(f"--out {args.out}: is a folder; give the ONNX file's path, e.g. {args.out / 'model.onnx'}")
    try:
        model, sizes = load_checkpoint(args.weights, pick_device("cpu"))
    except ValueError as e:
        raise ExportError(str(e)) from None
    trained_size = int(safe_load(args.weights)["size"])
    fixed = onnx_size(args.check) if args.check else None
    if fixed is not None and args.input_size is not None and args.input_size != fixed:
        raise ExportError(f"--input-size {args.input_size}: {args.check} takes a fixed {fixed}x{fixed} px input; "
                          f"leave --input-size out or give {fixed}")
    size = args.input_size or fixed or sizes[0]
    # several prediction sizes: one graph must take them all
    dynamic = args.dynamic or (args.check is None and args.input_size is None and len(sizes) > 1)
    images = sample_images(args.data, args.images)
    target = args.check or args.out or args.weights.with_name("model.onnx")
    if args.check is None:  # written beside the target, moved into place once it is trusted
        draft = target.with_name(target.name + ".tmp")
        try:
            export_onnx(model, size, draft, dynamic)
            if dynamic:
                check_dynamic(model, draft, images, size, args.threads)
            if not agrees(model, draft, images, size, args.threads, target):
                draft.unlink(missing_ok=True)
                return 1
        except BaseException:
            draft.unlink(missing_ok=True)
            raise
        draft.replace(target)
        setting = write_setting(target, sizes, None if dynamic else size)
        print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB; input 1x3x"
              f"{'HxW (dynamic)' if dynamic else f'{size}x{size}'}; the checkpoint was trained at "
              f"{trained_size} px and predicts at {describe_sizes(sizes)}: {setting.name} says how)")
        if sizes != (size,) and not dynamic:
            print(f"note: this graph takes {size} px only; the checkpoint predicts at {describe_sizes(sizes)}: "
                  f"export --dynamic, or without --input-size, to predict as it does")
    elif not agrees(model, target, images, size, args.threads, target):
        return 1
    if args.check is not None:
        return 0
    timed = target
    with tempfile.TemporaryDirectory() as tmp:
        if not dynamic and size != LATENCY_SIZE:  # time the task's resolution, with its own fixed-size export
            timed = Path(tmp) / "latency.onnx"
            export_onnx(model, LATENCY_SIZE, timed)
        ms = latency(model, timed, LATENCY_SIZE, args.threads, args.repeats)
    print(f"latency of one forward on a 1x3x{LATENCY_SIZE}x{LATENCY_SIZE} tensor (no flip TTA), median of "
          f"{args.repeats} runs, {args.threads} thread(s): PyTorch {ms['pytorch_ms']:.1f} ms, onnxruntime "
          f"{ms['onnxruntime_ms']:.1f} ms")
    return 0


def agrees(model: torch.nn.Module, path: Path, images: list[np.ndarray], size: int, threads: int, target: Path
           ) -> bool:
    """Whether the graph at `path` gives PyTorch's labels on at least AGREE of the pixels (said either way)."""
    share = agreement(model, path, images, size, threads)
    print(f"agreement with PyTorch: {share:.4%} of pixels over {len(images)} images at {size} px")
    if share < AGREE:
        print(f"error: only {share:.4%} of pixels agree (need {AGREE:.1%}): {target} does not compute what the "
              f"checkpoint does" + ("" if path == target else "; nothing written"), file=sys.stderr)
    return share >= AGREE


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (ExportError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
