"""`python -m train.demo --weights CKPT [--compare CKPT2]`: a local page to see what a model does on a face photo.

Upload a photo or pick an example (the data folder's val or test images when present, else the synthetic faces),
then see the colour overlay and the label map with a legend of the 19 classes, hide classes, and read the parameter
count, the checkpoint's config and the inference time; the label PNG downloads as the challenge wants it. With
`--compare`, a second checkpoint runs side by side on the same image. Prediction is `train.infer.predict_mask` with
flip TTA, exactly as `train.predict` and the shipped `run.py` predict.

Gradio serves the page (an optional extra: `pip install -e '.[demo]'`), on 127.0.0.1 unless `--host` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from space.config import BUDGET
from train.classes import CLASS_NAMES, PALETTE, colorize
from train.cli import parser
from train.data import resolve_data
from train.imageops import describe_sizes
from train.infer import IMAGE_SUFFIXES, load_checkpoint, pick_device, predict_mask, save_mask
from train.visual import overlay

MAX_SIDE = 2048  # larger uploads are resized (with a note) before prediction
EXAMPLES = 6


@dataclass
class Loaded:
    name: str
    model: torch.nn.Module
    sizes: tuple[int, ...]  # the checkpoint's prediction setting (train.infer.prediction_sizes)
    params: int
    summary: str


def load(path: Path, device: torch.device) -> Loaded:
    """A checkpoint of ours under the budget, or a one-line ValueError (refused at start)."""
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint")
    model, sizes = load_checkpoint(path, device)  # refuses code, other files, over-budget networks
    arch = model.cfg  # the network was built from the checkpoint's config: no second read of the file
    params = sum(p.numel() for p in model.parameters())
    stages = ", ".join(f"{s.depth}x{s.block} w{s.width}" for s in arch.stages)
    skips = "+".join(n for n, on in (("1/8", arch.skip8), ("1/4", arch.skip4), ("1/2", arch.skip2)) if on)
    summary = (f"stages {stages}; output stride {arch.output_stride}; context {arch.context}; skips "
               f"{skips or 'none'}; decoder w{arch.decoder_width}{' + CBAM' if arch.decoder_cbam else ''}; "
               f"{arch.activation}")
    return Loaded(f"{path.parent.name}/{path.name}", model, sizes, params, summary)


def read_upload(path: str | None) -> tuple[np.ndarray | None, str]:
    """The uploaded file as RGB, or None with the reason; notes say what was converted or resized."""
    if not path:
        return None, "Upload a face photo (JPEG or PNG) or pick an example."
    try:
        with Image.open(path) as im:
            im.load()
            notes = []
            if im.mode != "RGB":
                notes.append(f"converted from {im.mode} to RGB")
                im = im.convert("RGB")
            if max(im.size) > MAX_SIDE:
                scale = MAX_SIDE / max(im.size)
                new = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
                notes.append(f"resized from {im.width}x{im.height} to {new[0]}x{new[1]} (larger than {MAX_SIDE} px)")
                im = im.resize(new, Image.Resampling.LANCZOS)
            return np.asarray(im), "; ".join(notes)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        return None, f"**Not an image**: {Path(path).name} could not be read as a picture ({type(e).__name__}). " \
                     f"Upload a JPEG or PNG photo."


def legend_html() -> str:
    swatches = "".join(
        f"<span style='display:inline-block;margin:2px 8px 2px 0'><span style='display:inline-block;width:12px;"
        f"height:12px;background:rgb{tuple(int(v) for v in PALETTE[c])};border:1px solid #888;margin-right:4px'>"
        f"</span>{c} {name}</span>" for c, name in enumerate(CLASS_NAMES))
    return f"<div id='legend'>{swatches}</div>"


def shown_only(mask: np.ndarray, shown: list[str]) -> np.ndarray:
    """The mask with hidden classes set to background, for display only (downloads keep every class)."""
    keep = np.isin(np.arange(len(CLASS_NAMES)), [CLASS_NAMES.index(n) for n in shown])
    return np.where(keep[mask], mask, 0).astype(np.uint8)


def examples(data: Path) -> list[str]:
    for split in ("val", "test"):
        folder = data / split / "images"
        if folder.is_dir():
            found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:EXAMPLES]
            if found:
                return [str(p) for p in found]
    return []


def build(models: list[Loaded], device: torch.device, data: Path):
    """The Gradio page."""
    import gradio as gr

    out_dir = Path(tempfile.mkdtemp(prefix="facenas-demo-"))

    def predict(path: str | None, shown: list[str]):
        image, note = read_upload(path)
        if image is None:
            return [note, None] + [None, None, None, ""] * len(models)
        results, masks = [], []
        for i, m in enumerate(models):
            t0 = time.perf_counter()
            mask = predict_mask(m.model, image, m.sizes, device, flip_tta=True)
            ms = (time.perf_counter() - t0) * 1000
            png = out_dir / f"{Path(path).stem}_labels_{i}.png"
            save_mask(mask, png)
            masks.append(mask)
            shown_mask = shown_only(mask, shown)
            info = (f"**{m.name}**: {m.params:,} parameters ({m.params / BUDGET:.1%} of the {BUDGET:,} limit); "
                    f"predicts at {describe_sizes(m.sizes)}; inference {ms:.0f} ms on {device.type} (flip TTA)  \n"
                    f"{m.summary}")
            results += [overlay(image, shown_mask), colorize(shown_mask), str(png), info]
        status = f"{image.shape[1]}x{image.shape[0]} image" + (f"; {note}" if note else "")
        return [status, (image, masks)] + results

    def recolour(state, shown: list[str]):
        if state is None:
            return [gr.skip()] * (2 * len(models))
        image, masks = state
        out = []
        for mask in masks:
            shown_mask = shown_only(mask, shown)
            out += [overlay(image, shown_mask), colorize(shown_mask)]
        return out

    with gr.Blocks(title="facenas demo") as page:
        gr.Markdown("# facenas: face parsing\nUpload a face photo or pick an example, then **Parse**.")
        with gr.Row():
            upload = gr.File(label="face photo (JPEG or PNG)", type="filepath", elem_id="upload")
            with gr.Column():
                shown = gr.CheckboxGroup(list(CLASS_NAMES), value=list(CLASS_NAMES), label="classes shown")
                run = gr.Button("Parse", variant="primary", elem_id="parse")
        status = gr.Markdown(elem_id="status")
        state = gr.State()
        outputs, recoloured = [], []
        with gr.Row():
            for i, m in enumerate(models):
                with gr.Column():
                    over = gr.Image(label=f"overlay: {m.name}", elem_id=f"overlay{i}", interactive=False)
                    labels = gr.Image(label=f"label map: {m.name}", elem_id=f"labels{i}", interactive=False)
                    download = gr.File(label="label PNG (0..18, the challenge format)", elem_id=f"download{i}")
                    info = gr.Markdown(elem_id=f"info{i}")
                    outputs += [over, labels, download, info]
                    recoloured += [over, labels]
        gr.HTML(legend_html())
        found = examples(data)
        if found:
            gr.Examples(found, inputs=[upload], label=f"examples from {data}")
        run.click(predict, [upload, shown], [status, state, *outputs])
        shown.change(recolour, [state, shown], recoloured)
    return page, [str(Path(p).parent) for p in found] + [str(out_dir)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("python -m train.demo", __doc__, epilog="Details: docs/deliverables.md.")
    g = p.add_argument_group("models")
    g.add_argument("--weights", type=Path, required=True, help="exported checkpoint (ckpt.pth from train.final)")
    g.add_argument("--compare", type=Path, default=None, help="a second checkpoint, shown side by side")
    g.add_argument("--data", type=Path, default=None,
                   help="where the examples come from: its val or test images (default as in search.run)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g = p.add_argument_group("server")
    g.add_argument("--port", type=int, default=7860, help="port on --host")
    g.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    try:
        models = [load(path, device) for path in [args.weights, args.compare] if path is not None]
    except ValueError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home; read when gradio is imported
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the demo needs Gradio, an optional extra: pip install -e '.[demo]'", file=sys.stderr)
        return 2
    page, allowed = build(models, device, resolve_data(args.data))
    print(f"demo: http://{args.host}:{args.port}/ ({', '.join(m.name for m in models)})", flush=True)
    page.launch(server_name=args.host, server_port=args.port, allowed_paths=allowed, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
