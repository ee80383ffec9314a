"""benchmarks/results/*.json -> BENCHMARKS.md (each benchmark's first table, with the machine
it ran on) and benchmarks/notes/tables.md (every table)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import RESULTS

OUT = Path(__file__).parent.parent / "BENCHMARKS.md"
TABLES = Path(__file__).parent / "notes" / "tables.md"  # every table of every benchmark


DATA = {"curves"}  # recorded data other benchmarks read (pruning_replay), not figures


def _cell(value) -> str:
    """A table cell; a scored model (a dict with its `summary`, as a study's final models
    are) is its summary line, not its per-person records."""
    if isinstance(value, dict) and any(isinstance(v, dict) and "summary" in v
                                       for v in value.values()):
        return "; ".join(f"{k}: {v['summary'] if isinstance(v, dict) and 'summary' in v else v}"
                         for k, v in value.items())
    return str(value)


def _table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    keys = [k for k in rows[0] if k not in DATA]
    return ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
            *("| " + " | ".join(_cell(r.get(k, "")) for k in keys) + " |" for r in rows), ""]


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
            if scalars:  # an empty setting (no overrides) makes no table
                lines += ["", f"**{name}**", "", *_table([scalars])]
            lines += _section({k: v for k, v in value.items() if _rows(v)}, f"{name}: ")
        else:
            lines.append(f"- {name}: {value}")
    return lines


def kept_sections() -> dict[str, list[str]]:
    """The result sections the full tables have now, by name: results are not committed, so
    a benchmark not rerun on this machine keeps the section its last run wrote."""
    if not TABLES.exists():
        return {}
    sections: dict[str, list[str]] = {}
    name = None
    for line in TABLES.read_text().splitlines():
        if line.startswith("## "):
            name = line[3:].strip()
            sections[name] = [line]
        elif name is not None:
            sections[name].append(line)
    return {n: body for n, body in sections.items()
            if any(b.startswith("Machine: ") for b in body[1:3])}


def headline(body: list[str]) -> list[str]:
    """A section's title, machine and first table: what the front page shows of it."""
    head = [*body[:3], ""]
    start = next((i for i, line in enumerate(body) if line.startswith("|")), None)
    if start is None:
        return head + [line for line in body[3:] if line.startswith("- ")] + [""]
    end = next((i for i in range(start, len(body)) if not body[i].startswith("|")), len(body))
    caption = body[start - 2] if start >= 2 and body[start - 2].startswith("**") else ""
    caption = "" if caption == "**rows**" else caption
    return head + ([caption, ""] if caption else []) + body[start:end] + [""]


def main() -> None:
    sections = kept_sections()
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        machine = result.pop("machine")
        sections[path.stem] = [f"## {path.stem}", "", "Machine: " + ", ".join(
            f"{k} {v}" for k, v in machine.items()), "", *_section(result), ""]
    full = ["# Every benchmark's tables", "",
            "Written by `python -m benchmarks.report` from `benchmarks/results/*.json`, with "
            "the machine each ran on; BENCHMARKS.md shows each one's first table.", ""]
    front = ["# Benchmarks", "",
             "Today's figures: one section a benchmark, with the machine it ran on and its",
             "first table, each figure beside the plain way of doing it. Every table of each:",
             "[benchmarks/notes/tables.md](benchmarks/notes/tables.md); what each issue",
             "measured, against its goals, and why: [benchmarks/notes/](benchmarks/notes/).",
             "Written by `python -m benchmarks.report`; rerun a benchmark (docs: Speed) to",
             "refresh it.", ""]
    for name in sorted(sections):
        full += sections[name]
        front += headline(sections[name])
    TABLES.write_text("\n".join(full))
    OUT.write_text("\n".join(front))
    print(f"written {OUT} and {TABLES}")


if __name__ == "__main__":
    main()
