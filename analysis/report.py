"""`python -m analysis.report --study NAME`: an offline HTML report of a study (no remote scripts or fonts).

Writes DIR/index.html (default studies/<study>/report/), its PNG figures and trials.csv (pandas
`trials_dataframe` with user attrs). Sections: optimization history, parameter importances (PED-ANOVA),
F-measure vs parameters (budget line, Pareto front) and vs FLOPs, per-class F of the top 10 trials, learning
curves, pruning, and proxy-vs-full fidelity when full retrains are recorded.
"""

from __future__ import annotations

import html
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import matplotlib

from train.cli import parser

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from analysis.common import complete_trials, rank_correlations  # noqa: E402
from search.records import full_settings, recipe_and_architecture, recorded  # noqa: E402
from search.rung import (  # noqa: E402
    MINUTES_ATTR,
    current_setting,
    gains_of,
    name_of,
    proxy_text,
    redirect_notes,
    reference_number,
    rung_records,
    stage_trials_at,
    verdict,
)
from search.storage import DEFAULT_STORAGE, StorageError, load_existing_study  # noqa: E402
from space.config import BUDGET  # noqa: E402
from train.classes import CLASS_NAMES  # noqa: E402

Section = tuple[str, str]  # (title, html body)
PRUNED = optuna.trial.TrialState.PRUNED


def _figure(out: Path, name: str, draw: Callable[[plt.Axes], None], size=(7, 4)) -> str:
    fig, ax = plt.subplots(figsize=size)
    draw(ax)
    fig.tight_layout()
    fig.savefig(out / name, dpi=90)
    plt.close(fig)
    return f'<img src="{name}" alt="{html.escape(name)}">'


def history(study: optuna.Study, out: Path) -> Section:
    done = complete_trials(study)

    def draw(ax):
        xs, ys = [t.number for t in done], [t.value for t in done]
        ax.scatter(xs, ys, s=12, label="trial")
        ax.step(xs, np.maximum.accumulate(ys) if ys else [], where="post", color="tab:red", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel("proxy val F-measure")
        ax.legend()

    return "Optimization history", _figure(out, "history.png", draw) + f"<p>{len(done)} complete trials.</p>"


def importances(study: optuna.Study, out: Path) -> Section:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        return "Parameter importances", f"<p>Not computable yet: {html.escape(str(e))}</p>"
    if not imp:
        return "Parameter importances", "<p>Not enough complete trials yet.</p>"
    top = list(imp.items())[:20][::-1]

    def draw(ax):
        ax.barh([k for k, _ in top], [v for _, v in top])
        ax.set_xlabel("PED-ANOVA importance")

    return "Parameter importances", _figure(out, "importances.png", draw, (7, 6)) + \
        "<p>PED-ANOVA (handles conditional parameters): how much each choice separates the top trials.</p>"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(params, F) points not dominated by a smaller-or-equal model with higher-or-equal F."""
    front, best = [], -np.inf
    for p, f in sorted(points, key=lambda x: (x[0], -x[1])):
        if f > best:
            front.append((p, f))
            best = f
    return front


def size_vs_f(study: optuna.Study, out: Path) -> Section:
    done = [t for t in complete_trials(study) if "params" in t.user_attrs]
    pts = [(t.user_attrs["params"], t.value) for t in done]
    front = pareto_front(pts)

    def draw_params(ax):
        ax.scatter([p for p, _ in pts], [f for _, f in pts], s=12, label="trial")
        ax.plot([p for p, _ in front], [f for _, f in front], "r.-", label="Pareto front")
        ax.axvline(BUDGET, color="k", linestyle="--", label=f"budget {BUDGET:,}")
        ax.set_xlabel("parameters")
        ax.set_ylabel("proxy val F")
        ax.legend()

    def draw_flops(ax):
        ax.scatter([t.user_attrs.get("flops", np.nan) / 1e9 for t in done], [t.value for t in done], s=12)
        ax.set_xlabel("GFLOPs per image at proxy size (torch.utils.flop_counter)")
        ax.set_ylabel("proxy val F")

    rows = "".join(f"<tr><td>{p:,}</td><td>{f:.4f}</td></tr>" for p, f in front)
    body = (_figure(out, "f_vs_params.png", draw_params) + _figure(out, "f_vs_flops.png", draw_flops)
            + f"<table><tr><th>params (Pareto)</th><th>F</th></tr>{rows}</table>")
    return "F-measure vs parameters and FLOPs", body


def per_class(study: optuna.Study, out: Path) -> Section:
    top = [t for t in sorted(complete_trials(study), key=lambda t: -t.value) if t.user_attrs.get("per_class_f")][:10]
    if not top:
        return "Per-class F of the top trials", "<p>No per-class figures recorded.</p>"
    grid = np.array([[np.nan if v is None else v for v in t.user_attrs["per_class_f"]] for t in top])

    def draw(ax):
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=70, fontsize=7)
        ax.set_yticks(range(len(top)), [f"#{t.number}" for t in top], fontsize=7)
        plt.colorbar(im, ax=ax, label="mean per-image F1")

    return "Per-class F of the top 10 trials", _figure(out, "per_class.png", draw, (8, 4.5))


def curves(study: optuna.Study, out: Path) -> Section:
    trials = [t for t in study.trials if t.intermediate_values]

    def draw(ax):
        for t in trials:
            steps = sorted(t.intermediate_values)
            ax.plot(steps, [t.intermediate_values[s] for s in steps], alpha=0.5,
                    color="tab:gray" if t.state == PRUNED else "tab:blue", lw=1)
        ax.set_xlabel("proxy epoch")
        ax.set_ylabel("val F")
        ax.set_title("blue: complete, grey: pruned")

    return "Learning curves", _figure(out, "curves.png", draw)


def pruning(study: optuna.Study, out: Path) -> Section:
    proxy_epochs = (study.user_attrs.get("proxy") or {}).get("epochs")
    pruned = [t for t in study.trials if t.state == PRUNED and t.last_step is not None]
    if not pruned:
        return "Pruning", "<p>No pruned trials.</p>"
    counts: dict[int, int] = {}
    saved = 0.0
    for t in pruned:
        counts[t.last_step] = counts.get(t.last_step, 0) + 1
        if proxy_epochs and t.duration:
            saved += t.duration.total_seconds() / t.last_step * (proxy_epochs - t.last_step)

    def draw(ax):
        ax.bar(list(counts), list(counts.values()))
        ax.set_xlabel("epoch at which the trial was pruned")
        ax.set_ylabel("trials")

    note = (f"<p>{len(pruned)} of {len(study.trials)} trials pruned; training time saved against running them "
            f"to {proxy_epochs} epochs: about {saved / 60:.1f} min.</p>") if proxy_epochs else ""
    return "Pruning", _figure(out, "pruning.png", draw) + note


def fidelity(study: optuna.Study, out: Path) -> Section | None:
    settings = full_settings(study)
    if not settings:
        return None
    setting = settings[0][0]  # the full-fidelity setting with the most retrained trials
    full = recorded(study, setting)
    pairs = [(t.value, full[t.number]) for t in complete_trials(study) if t.number in full]
    if not pairs:
        return None
    tau, rho = rank_correlations([p for p, _ in pairs], [f for _, f in pairs])

    def draw(ax):
        ax.scatter([p for p, _ in pairs], [f for _, f in pairs])
        ax.set_xlabel("proxy val F")
        ax.set_ylabel("full-fidelity val F")
        ax.set_title(f"Kendall tau {tau:.3f}, Spearman rho {rho:.3f} ({len(pairs)} trials)")

    others = "; ".join(f"{s.describe()}: {n} trials" for s, n in settings[1:])
    rows = recipe_and_architecture(study)
    table = "" if not rows else (
        "<h3>What the recipe buys and what the architecture buys</h3><p>Full-fidelity val F (one seed each); the "
        f"study's recipe is its fixed params: {html.escape(str(study.user_attrs.get('fixed')))}.</p><table>"
        "<tr><th>network</th><th>full val F</th><th>gain over the row above</th></tr>"
        + "".join(f"<tr><td>{html.escape(r)}</td><td>{f:.4f}</td><td>{html.escape(g)}</td></tr>" for r, f, g in rows)
        + "</table>")
    return "Proxy vs full fidelity", _figure(out, "fidelity.png", draw) + (
        f"<p>Kendall &tau; = {tau:.3f}, Spearman &rho; = {rho:.3f} over {len(pairs)} retrained trials, full "
        f"fidelity {html.escape(setting.describe())}"
        + (f" (other settings recorded: {html.escape(others)})" if others else "") + ".</p>") + table


def second_rung(study: optuna.Study, out: Path) -> Section | None:
    """The promoted trials' proxy F beside their rung-2 F (search.rung), best rung-2 F first."""
    records = rung_records(study)
    if not records:
        return None
    setting = current_setting(study)
    minutes = lambda r: f"{r['final_minutes']:.0f}" if r.get("final_minutes") else "-"
    ref = reference_number(study, records)
    rows = "".join(f"<tr><td>{html.escape(name_of(study.trials[n]))}{' (the reference)' if n == ref else ''}"
                   f"</td><td>{proxy_text(r['proxy_f'])}</td><td>{r['f']:.4f}</td><td>{r['seconds']:.0f}</td>"
                   f"<td>{minutes(r)}</td></tr>" for n, r in sorted(records.items(), key=lambda kv: -kv[1]["f"]))
    stage = (", then the best searched network at the reference's recipe (the recipe stage)"
             if stage_trials_at(study, setting) else
             " (no recipe stage: no portfolio entry, or the best searched network trains at the reference's recipe)")
    limit = study.user_attrs.get(MINUTES_ATTR)
    within = f" among the picks predicted within --final-minutes {limit:g}" if limit is not None else ""
    within += (" (under the time budget's plan: plus the ladder's gain of the schedule each pick can afford)"
               if gains_of(study, rung_records(study, setting)) else "")
    moved = "".join(f"<li>{html.escape(note)}</li>" for note in redirect_notes(study, setting))
    return "Second rung", (f"<p>The top {setting.k} complete trials, and the portfolio entry with the best proxy F "
                           f"(the reference), trained again at {html.escape(setting.describe())}{stage}; "
                           f"<code>train.final --study best</code> takes the best rung-2 F{within}: "
                           f"{html.escape(verdict(study))}.</p>"
                           f"<table><tr><th>trial</th><th>proxy F</th><th>rung-2 F</th><th>seconds</th>"
                           f"<th>train.final, predicted minutes</th></tr>{rows}</table>"
                           + (f"<p>Promoted picks judged at the reference's recipe only:</p><ul>{moved}</ul>"
                              if moved else ""))


SECTIONS = (history, importances, size_vs_f, per_class, curves, pruning, second_rung, fidelity)
STYLE = ("body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}img{max-width:100%}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}")


def write_report(study: optuna.Study, out: Path, progress: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    df = study.trials_dataframe(attrs=("number", "value", "state", "duration", "params", "user_attrs"))
    df.to_csv(out / "trials.csv", index=False)
    sections = []
    for make in tqdm(SECTIONS, desc="report", disable=None if progress else True):
        section = make(study, out)
        if section is not None:
            sections.append(section)
    body = "".join(f"<h2>{html.escape(t)}</h2>\n{b}\n" for t, b in sections)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>facenas: {html.escape(study.study_name)}"
            f"</title><style>{STYLE}</style></head><body><h1>Study {html.escape(study.study_name)}</h1>"
            f"<p>{len(study.trials)} trials; data: {html.escape(str(study.user_attrs.get('data', '?')))}; "
            f"<a href='trials.csv'>trials.csv</a></p>{body}</body></html>")
    (out / "index.html").write_text(page)
    return out / "index.html"


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m analysis.report", __doc__, epilog="Details: docs/analysis.md.")
    g = p.add_argument_group("study and output")
    g.add_argument("--study", required=True, help="study name")
    g.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage URL or journal file path")
    g.add_argument("--out", type=Path, default=None, help="output folder (default studies/<study>/report)")
    args = p.parse_args(argv)
    try:
        study = load_existing_study(args.storage, args.study)
        path = write_report(study, args.out or Path("studies") / args.study / "report")
    except (StorageError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
