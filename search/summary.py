"""What a search says when it ends: the study's counts, its top trials, the second rung and its verdict, the FLOPs
cap's share, and the commands to browse and retrain; the same text goes into the study's dashboard note."""

from __future__ import annotations

import optuna

from search.rung import MINUTES_ATTR, name_of, proxy_text, redirect_notes, reference_number, rung_records, verdict
from search.settings import Settings
from search.storage import DEFAULT_STORAGE
from search.timebudget import plan_lines
from space.config import BUDGET


def describe(t: optuna.trial.FrozenTrial) -> str:
    p = t.params
    stages = "-".join(f"{p.get(f's{i}_block')}{p.get(f's{i}_depth')}" for i in range(p.get("n_stages", 0)))
    return (f"#{t.number:<4} F={t.value:.4f} params={t.user_attrs.get('params', 0):>9,} "
            f"stages={stages} os={p.get('output_stride')} ctx={p.get('context')} "
            f"skips={''.join(k for k in '842' if p.get(f'skip{k}')) or '-'} detail={p.get('detail_width')}")


def summary(study: optuna.Study, s: Settings) -> str:
    states = [t.state for t in study.trials]
    counts = {st.name.lower(): states.count(st) for st in optuna.trial.TrialState if states.count(st)}
    done = sorted((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE),
                  key=lambda t: t.value, reverse=True)
    lines = [f"study {s.study!r}: " + ", ".join(f"{v} {k}" for k, v in counts.items())]
    rung = rung_records(study)
    if done:
        lines.append("top trials:")
        lines += ["  " + describe(t) + (f" rung2_F={rung[t.number]['f']:.4f}" if t.number in rung else "")
                  for t in done[:5]]
    if rung:
        ref, limit = reference_number(study, rung), study.user_attrs.get(MINUTES_ATTR)
        lines.append(f"second rung ({len(rung)} trials), train.final predicted at {s.final_schedule}"
                     + (f", picks over {limit:.3g} min left out" if limit is not None else "") + ":")
        lines += [f"  {name_of(study.trials[n])}: proxy F {proxy_text(r['proxy_f'])} -> rung-2 F {r['f']:.4f}, "
                  + (f"{r['final_minutes']:.0f} min" if r.get("final_minutes") else "time not recorded")
                  + (" (the reference)" if n == ref else "")
                  for n, r in sorted(rung.items(), key=lambda item: -item[1]["f"])]
        lines += ["  " + note for note in redirect_notes(study)]
        lines.append(f"{verdict(study)}; train.final --study best takes it")
    lines += plan_lines(study)
    over = [t.user_attrs.get("draws_over_cap", 0) for t in study.trials
            if "draws_over_cap" in t.user_attrs and "portfolio" not in t.user_attrs]  # proposals, not entries
    if over and s.flops_cap:
        lines.append(f"FLOPs cap: {sum(over)} of {sum(over) + len(over)} draws were over it and drawn again "
                     f"({sum(over) / (sum(over) + len(over)):.0%}); no trial was created for them")
    lines += ["", f"browse:  optuna-dashboard {s.storage} --artifact-dir {s.artifact_dir}",
              "retrain: python -m train.final --study best"
              + ("" if s.storage == DEFAULT_STORAGE else f" --storage {s.storage}")]
    return "\n".join(lines)


def save_dashboard_note(study: optuna.Study, s: Settings, text: str) -> None:
    """A markdown note on the study's dashboard page: data, proxy settings, best trials, commands."""
    import optuna_dashboard

    note = (f"# facenas study `{s.study}`\n\n- data: `{s.data}`\n- proxy: {s.proxy_size} px, {s.proxy_epochs} epochs, "
            f"{s.subset:.0%} of train, scored by {s.signal}, device {s.device}; sampler {s.sampler}, "
            f"pruner {s.pruner}\n"
            f"- budget: fewer than {BUDGET:,} parameters\n\n```\n{text}\n```\n\n"
            f"Each complete trial has a prediction grid artifact (input, ground truth, prediction).\n")
    optuna_dashboard.save_note(study, note)
