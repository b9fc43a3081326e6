"""The command lines (issue 38): grouped flags, real defaults only, short help texts, one name per meaning, and old
spellings that still work with a one-line note."""

from __future__ import annotations

import argparse
import importlib

import pytest
from conftest import run_main

COMMANDS = ["search.run", "train.final", "train.export", "train.predict", "train.demo", "analysis.report",
            "analysis.compare", "analysis.fidelity", "train.submission"]


def parser_of(module: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser `module`'s main builds, caught as it parses."""
    seen = []

    def capture(self, args=None, namespace=None):
        seen.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        importlib.import_module(module).main([])
    return seen[0]


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_groups_its_flags_and_shows_only_real_defaults(module, monkeypatch):
    p = parser_of(module, monkeypatch)
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if subs:  # a command of subcommands: each of them
        p, = subs[0].choices.values()
    titled = [g for g in p._action_groups if g.title not in ("options", "positional arguments")]
    assert titled and all(g._group_actions for g in titled), [g.title for g in p._action_groups]
    text = p.format_help()
    assert "(default: None)" not in text and "(default: [])" not in text and "(default: False)" not in text
    for action in p._actions:
        if action.help and action.help != argparse.SUPPRESS:
            assert len(action.help.split()) <= 40, (action.option_strings, len(action.help.split()))


def test_search_run_groups_by_purpose(monkeypatch):
    p = parser_of("search.run", monkeypatch)
    groups = {g.title: {a.dest for a in g._group_actions} for g in p._action_groups}
    for title in ("data and storage", "proxy trials", "sampler and pruner", "second rung", "time", "parallel"):
        assert title in groups
    assert {"workers", "heartbeat"} <= groups["parallel"] and "final_minutes" in groups["time"]


@pytest.mark.parametrize("old, new, argv", [
    ("--output", "--out", ["train.predict", "--weights", "missing.pth", "--input", "x", "--output", "o"]),
    ("--workers", "--loader-workers", ["train.final", "--preset", "dw_unet", "--workers", "0", "--size", "0"]),
    ("--size", "--input-size", ["train.export", "--weights", "missing.pth", "--size", "64"]),
    ("--runs", "--repeats", ["train.export", "--weights", "missing.pth", "--runs", "3"]),
])
def test_old_spellings_still_work_with_a_note(old, new, argv, tmp_path):
    """Each run stops on another error after parsing: what matters is that the old flag was taken (no argparse error)
    with a note naming the new one."""
    res = run_main(*argv, cwd=tmp_path)
    assert f"note: {old} is renamed {new}" in res.stderr and "unrecognized arguments" not in res.stderr, res.stderr
    assert res.returncode == 2 and "error:" in res.stderr


def test_renamed_flags_land_where_the_new_ones_do():
    import train.export as export
    import train.final as final

    assert final.parse_args(["--workers", "3"]).loader_workers == 3
    assert final.parse_args(["--loader-workers", "2"]).loader_workers == 2
    old = export.parse_args(["--weights", "w", "--size", "64", "--runs", "5"])
    assert (old.input_size, old.repeats) == (64, 5)
    assert export.parse_args(["--weights", "w"]).repeats == 10


def test_a_zero_default_is_shown_and_a_none_default_is_not(monkeypatch):
    text = parser_of("train.final", monkeypatch).format_help()
    seed = text.split("\n  --seed SEED")[1].split("\n  --")[0]
    assert "(default: 0)" in " ".join(seed.split())
