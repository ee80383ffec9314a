"""The documentation stays true to the code: the reference pages are what
docs/gen_reference.py makes from the settings and the CLI today, every setting has a
description, the code map names every module of the package, and every command line the
docs show names real flags."""

import importlib.util
import inspect
import re
from pathlib import Path

import pydantic

from asl_sweep.settings import config, spec

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"


def _generator():
    loaded = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


def test_the_reference_pages_are_generated_from_todays_code(monkeypatch):
    for name in ("ASL_SWEEP_HOME", "ASL_SWEEP_WORKERS"):  # defaults the parser reads
        monkeypatch.delenv(name, raising=False)
    gen = _generator()
    for page, render in gen.PAGES.items():
        committed = (DOCS / "reference" / page).read_text()
        assert committed == render() + "\n", (
            f"docs/reference/{page} is stale: run .venv/bin/python docs/gen_reference.py")


def test_every_setting_has_a_description():
    missing = [f"{cls.__name__}.{name}"
               for module in (config, spec) for cls in vars(module).values()
               if inspect.isclass(cls) and issubclass(cls, pydantic.BaseModel)
               and cls.__module__ == module.__name__
               for name, info in cls.model_fields.items() if not info.description]
    assert not missing, f"settings without a description (Field(description=...)): {missing}"


def test_every_command_and_flag_has_help():
    import argparse

    from asl_sweep.cli import build_parser

    sub = next(a for a in build_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    missing = [name for name in sub.choices if not helps.get(name)]
    for name, command in sub.choices.items():
        missing += [f"{name} {a.option_strings or a.dest}" for a in command._actions
                    if not a.help and not isinstance(a, argparse._HelpAction)]
    assert not missing, f"commands or flags without help: {missing}"


def test_the_code_map_names_every_module():
    page = (DOCS / "reference" / "code-map.md").read_text()
    named = set(re.findall(r"`(\w+)`", page))
    package = ROOT / "asl_sweep"
    modules = {p.stem for p in package.rglob("*.py") if p.parent != package}
    modules.discard("__init__")
    assert not modules - named, f"modules missing from docs/reference/code-map.md: " \
                                f"{sorted(modules - named)}"


def test_the_search_front_door_names_its_modules():
    import asl_sweep.search as search

    doc = search.__doc__
    modules = {p.stem for p in (ROOT / "asl_sweep" / "search").glob("*.py")} - {"__init__"}
    assert not {m for m in modules if f"`{m}`" not in doc}, "search/__init__ must name " \
        "every module of search/"
    for name in search.__all__:  # every name the front door offers is there
        assert getattr(search, name) is not None


def _code(text: str) -> list[str]:
    """The code in a Markdown page: fenced blocks and inline spans."""
    blocks = re.findall(r"```.*?\n(.*?)```", text, flags=re.S)
    rest = re.sub(r"```.*?```", "", text, flags=re.S)
    return blocks + re.findall(r"`([^`\n]+)`", rest) + [
        line for line in rest.splitlines() if line.startswith("    ")]  # indented blocks


def test_every_command_the_docs_show_has_the_flags_they_give_it():
    """A command line in the README or the docs names a real command and only flags that
    command takes (a renamed or retired flag would otherwise live on in the docs)."""
    import argparse

    from asl_sweep.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = {name: {o for a in command._actions for o in a.option_strings}
             for name, command in sub.choices.items()}
    wrong, seen = [], 0
    for page in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        for code in _code(page.read_text()):
            for command, rest in re.findall(r"asl-sweep ([a-z][\w-]*)((?: +[^\s|;&)`]+)*)",
                                            code):
                seen += 1
                if command not in flags:
                    wrong.append(f"{page.name}: asl-sweep {command}: no such command")
                    continue
                wrong += [f"{page.name}: asl-sweep {command} {flag}: no such flag"
                          for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest)
                          if flag not in flags[command]]
    assert seen > 20 and not wrong, wrong
