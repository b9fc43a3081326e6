"""Imports follow the one-way flow of data (docs: README's layout): space -> train -> search/final -> analysis."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def offenders(folder: str, banned: tuple[str, ...], allow: tuple[str, ...] = ()) -> list[str]:
    return [f"{p.relative_to(REPO)} imports {m}" for p in sorted((REPO / folder).glob("*.py"))
            if p.name not in allow for m in sorted(imports(p)) if m.split(".")[0] in banned or m in banned]


def test_space_knows_nothing_downstream_and_only_sampling_imports_optuna():
    assert offenders("space", ("train", "search", "analysis")) == []
    # sample.py holds every suggest_*; report.py samples the space through it (a report on the sampler itself)
    assert offenders("space", ("optuna",), allow=("sample.py", "report.py")) == []


def test_the_training_core_never_imports_optuna_or_the_search():
    core = ("data.py", "augment.py", "losses.py", "metric.py", "loop.py", "infer.py", "classes.py", "synthetic.py")
    assert [o for o in offenders("train", ("optuna", "search")) if o.split("/")[1].split(" ")[0] in core] == []


def test_analysis_does_not_import_train_final():
    assert offenders("analysis", ("train.final",)) == []
