"""The committed benchmarks still import and parse their arguments: they call the package's
functions by name, and a renamed one (or a setting the package now refuses at import) was
found only by the next person to rerun them. tests/search/test_pruning.py replays the
pruner evidence itself; the rest are minutes long and run by hand (BENCHMARKS.md)."""

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted(p.stem for p in (Path(__file__).parents[1] / "benchmarks").glob("*.py")
                    if p.stem not in ("__init__", "common"))


def test_the_benchmarks_are_found():
    assert {"pruning_replay", "time_to_quality", "report"} <= set(BENCHMARKS)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_imports_and_its_help_parses(name, monkeypatch, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    if name == "report":  # no arguments: it writes BENCHMARKS.md from the results
        assert callable(module.main)
        return
    monkeypatch.setattr(sys, "argv", [f"benchmarks.{name}", "--help"])
    with pytest.raises(SystemExit) as done:
        module.main()
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out
