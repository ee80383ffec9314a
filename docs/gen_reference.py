"""The reference pages, generated from the code: every study YAML key from the typed
settings (asl_sweep/settings), every command and flag from the CLI's parser, every environment
variable from asl_sweep/runtime/environment.py. Run it after changing any of them; tests/test_docs.py fails while the committed pages differ from what this
writes.

    .venv/bin/python docs/gen_reference.py
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from asl_sweep.cli import build_parser
from asl_sweep.runtime.environment import VARIABLES
from asl_sweep.settings.spec import Choice, ConfirmConfig, FloatRange, IntRange, StudyConfig

HERE = Path(__file__).parent

CONSTRAINTS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"),
               ("min_length", "at least"), ("max_length", "at most"))


def _type(annotation) -> str:
    """A type as a person reads it: int, float, list of int, one of 'a' | 'b', ... or null."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(a).replace("'", "") for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type(a) for a in args)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin in (list, tuple):
        inner = _type(args[0]) if args else "any"
        return f"list of {inner}" if origin is list else f"pair of {inner}"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation)).replace("Path", "path")


def _range(info) -> str:
    """The field's bounds, from pydantic's constraint metadata."""
    parts = [f"{word} {getattr(m, attr)}" for m in info.metadata for attr, word in CONSTRAINTS
             if getattr(m, attr, None) is not None]
    parts += [f"matches `{m.pattern}`" for m in info.metadata if getattr(m, "pattern", None)]
    return ", ".join(parts)


def _default(info) -> str:
    if info.is_required():
        return "required"
    value = info.default
    if value is PydanticUndefined:
        return ""
    if isinstance(value, BaseModel):
        return "(its keys' defaults)"
    if value is None:
        return "null"
    if value == "":
        return '`""`'
    return f"`{value}`"


def _section(model: type[BaseModel]) -> type[BaseModel] | None:
    """The settings class a field holds (a section), if any."""
    def find(annotation):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        for arg in typing.get_args(annotation):
            found = find(arg)
            if found is not None:
                return found
        return None
    return find(model)


def settings_rows(model: type[BaseModel], prefix: str = "") -> list[list[str]]:
    rows = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        rows.append([f"`{key}`", _type(info.annotation), _default(info), _range(info),
                     (info.description or "").replace("|", "\\|")])
        inner = _section(info.annotation)
        if inner is not None:
            list_of = typing.get_origin(info.annotation) is list
            rows += settings_rows(inner, f"{key}[].") if list_of else \
                settings_rows(inner, f"{key}.")
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_settings() -> str:
    head = ["key", "type", "default", "range", "what it does"]
    out = ["# Study YAML reference", "",
           "Generated from the typed settings (`asl_sweep/settings/`) by "
           "`docs/gen_reference.py`; every key is checked when a study loads, and a bad one "
           "stops with one line naming the file and the key path (exit 2). `--set KEY=VALUE` "
           "takes the same key paths.", "",
           "## The study", "", _table(head, settings_rows(StudyConfig)), "",
           "## A searched setting (`stages[].space.KEY`)", "",
           "A list is a choice among its values; a mapping with `low` and `high` is a range "
           "(an integer range when both ends are integers); `{choices: [...], when: ...}` is "
           "a conditional choice.", ""]
    for kind, model in (("float range", FloatRange), ("int range", IntRange),
                        ("choice", Choice)):
        out += [f"### {kind}", "", _table(head, settings_rows(model)), ""]
    out += ["## Confirmation (`stages[].confirm`)", "",
            (ConfirmConfig.__doc__ or "").strip().replace("\n    ", "\n"), ""]
    return "\n".join(out)


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.dest.upper()}`" + (" ..." if action.nargs in ("+", "*") else "")
    return ", ".join(f"`{o}`" for o in action.option_strings)


def render_cli() -> str:
    # The defaults as a fresh shell has them: an ASL_SWEEP_HOME set here would be written in
    # as --home's default (and the committed page said stale by the tests elsewhere).
    for name in [n for n in os.environ if n.startswith("ASL_SWEEP_")]:
        del os.environ[name]
    parser = build_parser()
    out = ["# Command reference", "",
           "Generated from the CLI's own parser (`asl_sweep/cli.py`) by "
           "`docs/gen_reference.py`. Every command also answers `--help`. Exit codes: 0 "
           "done; 1 a bug (its traceback) or a file `predict` could not read; 2 an error you "
           "can fix (one line saying what and where); 3 a stage gate that stopped the run; "
           "130 stopped by Ctrl-C, SIGTERM or a closed terminal (rerun the same command: a search resumes where it "
           "stopped).", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    for name, command in sub.choices.items():
        out += [f"## asl-sweep {name}", "", helps.get(name, "") + ".", ""]
        rows = []
        for action in command._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            default = action.default
            shown = "" if default in (None, [], False) or not action.option_strings \
                else f"`{default}`"
            choices = f" (one of {', '.join(map(str, action.choices))})" if action.choices \
                else ""
            rows.append([_flags(action), shown, ((action.help or "") + choices)
                         .replace("|", "\\|")])
        out += [_table(["argument", "default", "what it does"], rows), ""]
    return "\n".join(out)


def render_environment() -> str:
    rows = [[f"`{v.name}`", f"`{v.default}`" if v.default else "", v.meaning.replace("|", "\\|")]
            for v in VARIABLES]
    return "\n".join(["# Environment variables", "",
                      "Generated from `asl_sweep/runtime/environment.py` by "
                      "`docs/gen_reference.py`. Every command reads them when it starts; a "
                      "number that is not one stops it in one line naming the variable "
                      "(exit 2). A flag given on the command line wins over its variable.", "",
                      _table(["variable", "default", "what it does"], rows), ""])


PAGES = {"settings.md": render_settings, "cli.md": render_cli,
         "environment.md": render_environment}


def main() -> None:
    for name, render in PAGES.items():
        (HERE / "reference" / name).write_text(render() + "\n")
        print(f"wrote docs/reference/{name}")


if __name__ == "__main__":
    main()
