"""`python -m train.report_pdf OUT`: the challenge's short report (A4, at most five pages, body text Arial 10 pt)
from a final folder's own files (`final.json`, `history.csv`), as `train.final` writes it beside `report.md`.

fpdf2 writes the PDF (pure Python, embeds a subset of the TrueType font, tables and images built in); matplotlib
draws the training curve. The body font is Arial where the machine has it, else Liberation Sans (metrically
identical to Arial; Debian's fonts-liberation); the log says which. Neither: the PDF is not written, with the
reason, and this command rebuilds it once a font is installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from space.config import BUDGET
from train.cli import parser as cli_parser
from train.imageops import describe_sizes
from train.schedule import describe_schedule, parse_schedule

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".fonts",
             Path.home() / ".local/share/fonts", Path("/Library/Fonts"), Path("/System/Library/Fonts/Supplementary"),
             Path("C:/Windows/Fonts"))
# (family, regular file names, bold file names), in order of preference
FONTS = (("Arial", ("Arial.ttf", "arial.ttf"), ("Arial Bold.ttf", "arialbd.ttf", "Arial_Bold.ttf")),
         ("Liberation Sans", ("LiberationSans-Regular.ttf",), ("LiberationSans-Bold.ttf",)))
BODY_PT, SMALL_PT = 10, 8
MAX_PAGES = 5


class ReportError(ValueError):
    """The PDF cannot be written, with a one-line reason."""


def find_font(dirs: tuple[Path, ...] = FONT_DIRS) -> tuple[str, Path, Path]:
    """(family, regular TTF, bold TTF): Arial if present, else Liberation Sans."""
    for family, regular_names, bold_names in FONTS:
        found = {}
        for kind, names in (("regular", regular_names), ("bold", bold_names)):
            for folder in dirs:
                hits = [p for name in names for p in folder.rglob(name)] if folder.is_dir() else []
                if hits:
                    found[kind] = hits[0]
                    break
        if len(found) == 2:
            return family, found["regular"], found["bold"]
    raise ReportError("no Arial or Liberation Sans font found (on Debian/Ubuntu: apt-get install fonts-liberation); "
                      "report.pdf not written")


def _curve(history: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    ax.plot(history["epoch"], history["loss"], label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if "val_f" in history:
        ev = history.dropna(subset=["val_f"])
        ax2 = ax.twinx()
        ax2.plot(ev["epoch"], ev["val_f"], "o-", color="tab:orange", label="val F (EMA weights)")
        ax2.set_ylabel("val F-measure")
    if "size" in history and history["size"].nunique() > 1:
        for epoch in history["epoch"][history["size"].diff().fillna(0) != 0]:
            ax.axvline(epoch - 0.5, color="grey", linestyle=":", linewidth=1)
    fig.legend(loc="upper center", ncol=2, fontsize=BODY_PT, frameon=False)  # the figure is placed at about 1:1
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


SAMPLERS = {"tpe": "TPE sampler", "random": "random sampler"}
PRUNERS = {"hyperband": "Hyperband pruning over the proxy's epochs", "median": "median pruning over the proxy's epochs",
           "none": "no pruning"}


def search_method(proxy: dict) -> str:
    """'TPE sampler with Hyperband pruning ...' as the study recorded it (studies from before it was recorded say
    so rather than guess)."""
    if "sampler" not in proxy:
        return "sampler and pruner not recorded by this study"
    return f"{SAMPLERS.get(proxy['sampler'], proxy['sampler'])} with {PRUNERS.get(proxy['pruner'], proxy['pruner'])}"


def _figure(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def stage_rows(arch: dict) -> list[list[str]]:
    """The encoder as a table, header first: stage, block, depth, expansion, kernel, SE, width, stride."""
    nominal = [2] * 4 if len(arch["stages"]) == 4 else [1] + [2] * 4
    rows, total, dilations = [["stage", "block", "depth", "expansion", "kernel", "SE", "width", "stride"]], 2, \
        iter(arch["dilations"])
    for i, (stage, s) in enumerate(zip(arch["stages"], nominal)):
        if total * s > arch["output_stride"]:
            step = f"1 (dilation {next(dilations)})"
        else:
            total *= s
            step = str(s)
        rows.append([str(i + 1), {"ir": "inverted residual", "ds": "depthwise sep.", "res": "residual"}
                     [stage["block"]], str(stage["depth"]), str(stage["expansion"]) if stage["block"] == "ir" else "-",
                     f"{stage['kernel']}x{stage['kernel']}", "yes" if stage["se"] else "no", str(stage["width"]),
                     f"{step} (1/{total})"])
    return rows


def _sections(rec: dict) -> list[tuple[str, list]]:
    """(heading, [paragraph str | table rows | ("figure", path)]) of the report, in order."""
    arch, loss, train = rec["arch"], rec["loss"], rec["train"]
    schedule = parse_schedule(rec["schedule"])
    context = {"aspp": f"ASPP with rates {'/'.join(map(str, arch['context_rates']))}",
               "ppm": "pyramid pooling (bins 1, 2, 3, 6)", "none": "a 1x1 convolution"}[arch["context"]]
    skips = ", ".join(n for n, on in (("1/8", arch["skip8"]), ("1/4", arch["skip4"]), ("1/2", arch["skip2"])) if on)
    terms = [f"cross-entropy (weight {loss['ce']:g}; class weights = inverse pixel frequency ^ "
             f"{loss['class_weight_power']:g}; label smoothing {loss['label_smoothing']:g})"]
    terms += [f"{name} (weight {loss[key]:g}{extra})" for key, name, extra in (
        ("dice", "soft Dice", ""), ("focal", "focal", f", gamma {loss['focal_gamma']:g}"),
        ("lovasz", "Lovasz-softmax", ""), ("boundary", "boundary-weighted cross-entropy", "")) if loss[key]]
    if arch["aux_head"]:
        terms.append(f"auxiliary cross-entropy head (weight {loss['aux_weight']:g}; training only, not exported)")
    found = rec.get("found_by") or {}
    if found.get("kind") == "preset":
        how = [f"Hand-designed: the preset '{found['name']}' of the search space, trained as a baseline; no search."]
    else:
        proxy = found.get("proxy") or {}
        how = [f"Optuna study '{found.get('study')}' ({search_method(proxy)}): "
               f"{found.get('trials', '?')} trials, {found.get('complete', '?')} complete, {found.get('pruned', '?')} "
               f"pruned. Each trial sampled an architecture and training settings from a space that never yields a "
               f"network at or over {BUDGET:,} parameters and trained a short proxy: {proxy.get('size', '?')} px, "
               f"{proxy.get('epochs', '?')} epochs on {float(proxy.get('subset', 1)):.0%} of train, ranked by "
               f"{proxy.get('signal', 'last_f')}.",
               f"Chosen: trial {rec['trial']} (proxy F {_figure(found.get('proxy_f'))}); decided by "
               f"{found.get('decided_by', 'the proxy')}."]
        if found.get("rung"):
            how.append(f"Second rung: {found['rung']}.")
        if found.get("fixed"):
            how.append("Held fixed in the search: " + ", ".join(f"{k}={v}" for k, v in found["fixed"].items()) + ".")
        for row, f, gain in found.get("recipe_vs_architecture") or []:
            how.append(f"{row}: full val F {f:.4f} {gain}".rstrip())
    predict_sizes = tuple(rec.get("predict_sizes") or (rec["size"],))
    settings = rec.get("predict_settings") or []
    prediction = [] if not settings else [
        "The prediction setting was chosen on val after training: the training size unless another setting beat it "
        "by more than 0.001 F (milliseconds per val image on the training device, scoring included):",
        [["setting", "val F" + (" (flip TTA)" if rec["flip_tta"] else ""), "ms per image", ""]] + [
            [describe_sizes(tuple(r["sizes"])), f"{r['val_f']:.4f}", f"{r['ms_per_image']:.0f}",
             "chosen" if tuple(r["sizes"]) == predict_sizes else ""] for r in settings]]
    per_class = [["class", "images", "mean F"]] + [
        [f"{c['id']} {c['name']}", str(c["images"]), "-" if c["f"] is None else f"{c['f']:.4f}"]
        for c in rec["per_class"]]
    return [
        ("Summary", [
            f"Network: {rec['params']:,} trainable parameters (sum(p.numel() for p in model.parameters()) of the "
            f"exported model, auxiliary head dropped; {rec['params'] / BUDGET:.1%} of the {BUDGET:,} limit), "
            f"{rec['flops'] / 1e9:.2f} GFLOPs per image at its training size {rec['size']} px (it predicts at "
            f"{describe_sizes(tuple(rec.get('predict_sizes') or (rec['size'],)))}).",
            f"Validation F-measure (the challenge's metric, over {rec.get('val_images', '?')} val images, each scored "
            f"at its own resolution): {rec['val_f']:.4f}; with flip test-time augmentation "
            f"{rec['val_f_flip_tta']:.4f}.",
            "Test-phase F-measure (challenge server): ____________ (to be filled in)"]),
        ("Model", [
            f"Encoder: a stem convolution of width {arch['stem_width']} at 1/2, then:", stage_rows(arch),
            f"Output stride {arch['output_stride']}; context module: {context}, width {arch['context_width']}. "
            f"Decoder: {arch['decoder_depth']} conv(s) per step, width {arch['decoder_width']}, skips from "
            f"{skips or 'none'} (skip width {arch['skip_width']})"
            f"{', CBAM attention (channel, then spatial) after each step' if arch.get('decoder_cbam') else ''}"
            f"{'; a detail path to 1/8 of width ' + str(arch['detail_width']) if arch['detail_width'] else ''}. "
            f"Activation {arch['activation']}; logits are upsampled bilinearly to the input size."]),
        ("Loss functions", ["; ".join(terms) + "."]),
        ("Processing steps and training", [
            f"Training: {describe_schedule(schedule)} (resolution schedule; one learning-rate schedule over all "
            f"epochs), trained from scratch on the {rec.get('train_images', '?')} images of "
            f"{'train + val' if rec.get('include_val') else 'train'} only (no pretrained weights, no external "
            f"data), seed {rec['seed']}.",
            f"Optimiser {train['optimizer']}, learning rate {train['lr']:.4g} with {train['warmup_frac']:.0%} linear "
            f"warm-up then cosine decay, weight decay {train['weight_decay']:.3g} (not on biases and norms), batch "
            f"{train['batch_size']}, gradient clipping {train['grad_clip']:g}.",
            f"Augmentation (strength {train['aug_strength']:g}): horizontal flip with the left/right labels swapped "
            f"(eyes, brows, ears), one zoom for x and y with rotation and shift, colour jitter (brightness, contrast, "
            f"saturation, hue); masks resampled nearest-neighbour.",
            f"Evaluation and export use an exponential moving average of the weights (decay {rec['ema']:g}). "
            f"Prediction: the image is resized to {describe_sizes(predict_sizes)}, the logits are upsampled to the "
            f"image's own size before the argmax"
            f"{', averaged with the mirrored prediction (flip TTA)' if rec['flip_tta'] else ''}."] + prediction),
        ("How the architecture was found", how),
        ("Validation results per class", [
            "Mean F1 of each class over the val images that contain it (the challenge averages the classes present "
            "in each image, background included).", per_class]),
        ("Training curve", [("figure", "curve")]),
    ]


def write_pdf(out: Path, log=print) -> Path:
    """OUT/report.pdf from OUT/final.json and OUT/history.csv; returns its path."""
    from fpdf import FPDF

    out = Path(out)
    for name in ("final.json", "history.csv"):
        if not (out / name).is_file():
            raise ReportError(f"{out / name} missing: not a train.final output folder (or written by an older version)")
    rec = json.loads((out / "final.json").read_text())
    if "arch" not in rec:
        raise ReportError(f"{out / 'final.json'} lacks the model's description (written by an older train.final); "
                          f"re-run train.final to rebuild it")
    family, regular, bold = find_font()
    log(f"report.pdf: body font {family} ({regular})")
    curve = _curve(pd.read_csv(out / "history.csv"), out / "report_curve.png")
    pdf = FPDF(format="A4", unit="mm")
    pdf.set_auto_page_break(True, margin=15)
    pdf.set_margins(18, 15, 18)
    pdf.add_font("Body", "", str(regular))
    pdf.add_font("Body", "B", str(bold))
    pdf.set_title(f"facenas final model: {rec['study']} trial {rec['trial']}")
    pdf.add_page()
    found = rec.get("found_by") or {}
    pdf.set_font("Body", "B", 14)
    pdf.multi_cell(0, 7, "Face parsing under 1.82M parameters: " + (
        f"the hand-designed {found.get('name')}" if found.get("kind") == "preset" else "a searched network"),
        new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Body", "", BODY_PT)
    pdf.multi_cell(0, 5, f"facenas: study {rec['study']}, trial {rec['trial']}; trained on {rec['device']}.",
                   new_x="LMARGIN", new_y="NEXT")
    for heading, parts in _sections(rec):
        pdf.ln(2)
        pdf.set_font("Body", "B", 11)
        pdf.multi_cell(0, 6, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Body", "", BODY_PT)
        for part in parts:
            if isinstance(part, str):
                pdf.multi_cell(0, 5, part, new_x="LMARGIN", new_y="NEXT")
                pdf.ln(1)
            elif isinstance(part, tuple):
                pdf.image(str(curve), w=165)
            else:  # a table, header first; the first column wider when it holds names
                widths = {8: (30, 34, 14, 20, 14, 10, 14, 28), 4: (50, 25, 25, 20)}.get(len(part[0]), (50, 25, 25))
                with pdf.table(line_height=4.6, text_align="LEFT", first_row_as_headings=True,
                               col_widths=widths) as table:
                    for row in part:
                        cells = table.row()
                        for cell in row:
                            cells.cell(cell)
                pdf.ln(1)
    if pdf.page_no() > MAX_PAGES:
        raise ReportError(f"the report takes {pdf.page_no()} pages; the challenge allows {MAX_PAGES}")
    path = out / "report.pdf"
    pdf.output(str(path.with_suffix(".tmp")))
    path.with_suffix(".tmp").replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = cli_parser("python -m train.report_pdf", __doc__)
    p.add_argument("out", type=Path, help="a train.final output folder (holds final.json and history.csv)")
    args = p.parse_args(argv)
    try:
        path = write_pdf(args.out)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
