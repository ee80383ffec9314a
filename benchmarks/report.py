"""benchmarks/results/*.json -> BENCHMARKS.md (figures with the machine they came from)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import RESULTS

OUT = Path(__file__).parent.parent / "BENCHMARKS.md"


def _table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    keys = list(rows[0])
    return ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
            *("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows), ""]


def _rows(value) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict)


def _section(result: dict, prefix: str = "") -> list[str]:
    """Scalars as a list, lists of rows as tables, and a nested result (an arm of a
    comparison) as its own table of scalars followed by its row tables."""
    lines = []
    for key, value in result.items():
        name = f"{prefix}{key}"
        if _rows(value):
            lines += ["", f"**{name}**", "", *_table(value)]
        elif isinstance(value, dict):
            scalars = {k: v for k, v in value.items() if not _rows(v)}
            lines += ["", f"**{name}**", "", *_table([scalars])]
            lines += _section({k: v for k, v in value.items() if _rows(v)}, f"{name}: ")
        else:
            lines.append(f"- {name}: {value}")
    return lines


def kept_sections() -> dict[str, list[str]]:
    """The result sections BENCHMARKS.md has now, by name: results are not committed, so a
    benchmark not rerun on this machine keeps the section its last run wrote."""
    if not OUT.exists():
        return {}
    sections: dict[str, list[str]] = {}
    name = None
    for line in OUT.read_text().splitlines():
        if line.startswith("## "):
            name = line[3:].strip()
            sections[name] = [line]
        elif name is not None:
            sections[name].append(line)
    return {n: body for n, body in sections.items()
            if any(b.startswith("Machine: ") for b in body[1:3])}


def main() -> None:
    lines = ["# Benchmarks", "",
             "Written by `python -m benchmarks.report` from `benchmarks/results/*.json`; rerun the",
             "benchmarks (see README, Speed) to refresh. Each figure sits beside the plain way.", ""]
    sections = kept_sections()
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        machine = result.pop("machine")
        sections[path.stem] = [f"## {path.stem}", "", "Machine: " + ", ".join(
            f"{k} {v}" for k, v in machine.items()), "", *_section(result), ""]
    for name in sorted(sections):
        lines += sections[name]
    notes = Path(__file__).parent / "notes.md"
    if notes.exists():  # the reading of the figures: targets, misses and their profiles
        lines += [notes.read_text()]
    OUT.write_text("\n".join(lines))
    print(f"written {OUT}")


if __name__ == "__main__":
    main()
