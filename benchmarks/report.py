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


def main() -> None:
    lines = ["# Benchmarks", "",
             "Written by `python -m benchmarks.report` from `benchmarks/results/*.json`; rerun the",
             "benchmarks (see README, Speed) to refresh. Each figure sits beside the plain way.", ""]
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        machine = result.pop("machine")
        lines += [f"## {path.stem}", "",
                  "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), ""]
        for key, value in result.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                lines += ["", f"**{key}**", "", *_table(value)]
            elif isinstance(value, dict):
                lines += ["", f"**{key}**", "", *_table([value])]
            else:
                lines.append(f"- {key}: {value}")
        lines.append("")
    notes = Path(__file__).parent / "notes.md"
    if notes.exists():  # the reading of the figures: targets, misses and their profiles
        lines += [notes.read_text()]
    OUT.write_text("\n".join(lines))
    print(f"written {OUT}")


if __name__ == "__main__":
    main()
