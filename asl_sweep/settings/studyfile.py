"""A study file from disk: YAML (safe loader only), `--set` overrides, `--data`, `--trials`,
validated into a StudyConfig once. Every failure is one ConfigError naming the file, the key
path or the value, and what to do."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from asl_sweep.runtime.errors import ConfigError
from asl_sweep.settings.config import get_path, set_path
from asl_sweep.settings.spec import MAX_TRIALS, StudyConfig, format_validation_error

MAX_STUDY_BYTES = 1 << 20  # a study file is a page of YAML, not a data set
STUDY_SUFFIXES = (".yaml", ".yml")


def is_study_file(path: str | Path) -> bool:
    """Whether a path names a study YAML (by its suffix), where a command also takes models."""
    return Path(path).suffix.lower() in STUDY_SUFFIXES


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-5` as a float (YAML 1.1 wants `1.0e-5`) and refuses a
    key given twice in one mapping, where YAML would keep the last silently (two `base:`
    blocks, the second a copy being edited)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base class says so
                    continue
                if first is not key_node:
                    raise _KeyTwice(f"key {key!r} given twice in one mapping (lines "
                                    f"{first.start_mark.line + 1} and "
                                    f"{key_node.start_mark.line + 1}); keep one")
        return super().construct_mapping(node, deep=deep)


class _KeyTwice(yaml.YAMLError):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_scalar(text: str) -> Any:
    """`--set` values are YAML scalars or flow collections: 5, 1e-3, true, [256, 64]."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def study_named(path: Path) -> Path | None:
    """The study file a missing path most likely meant: the same path with .yaml (or .yml),
    the other of the two (quick.yml for quick.yaml), or a bare study name's file in sweeps/
    (`asl-sweep status quick`)."""
    tries = [path.with_name(path.name + ext) for ext in (".yaml", ".yml")]
    if path.suffix.lower() in (".yaml", ".yml"):
        tries += [path.with_suffix(ext) for ext in (".yaml", ".yml")]
    if path.parent == Path("."):
        tries += [Path("sweeps") / (path.name + ext) for ext in ("", ".yaml", ".yml")]
    return next((t for t in tries if t.is_file()), None)


def read_yaml(path: Path) -> Any:
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give a study YAML file, e.g. sweeps/quick.yaml")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        near = study_named(path)
        raise ConfigError(f"{path}: no such study file"
                          + (f" ({near} is one: give its path)" if near else "")) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e}); check its "
                          "permissions") from None
    if len(data) > MAX_STUDY_BYTES:
        raise ConfigError(f"{path}: {len(data):,} bytes is not a study file (at most "
                          f"{MAX_STUDY_BYTES:,})")
    # UTF-16 with its byte-order mark: what Windows PowerShell's `>` writes (cat quick.yaml >
    # mine.yaml); UTF-8 with one: what Notepad writes
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (a study is UTF-8 YAML): save it as UTF-8"
                          if b"\x00" not in data else
                          f"{path}: not a text file (a study is UTF-8 YAML)") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: not a text file (a study is UTF-8 YAML)")
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except _KeyTwice as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a study file") from None


# The fields of a searched range or choice, as a --set path's last name.
_SEARCHED_FIELDS = ("low", "high", "log", "step", "choices", "when")


def _keys(raw: dict, key: str) -> list[str]:
    """A --set key path as names: a stage's `space`, `fixed` and seed trials are keyed by
    dotted trainer paths (`cnn.kernel`), so below them the rest is one name (`--set
    stages.0.space.cnn.kernel=[3, 5]` was `space: {cnn: {kernel: ...}}`), less a range's field
    at its end (`stages.0.space.lr.low=1e-4`); a name the mapping already has is matched
    first, the longest."""
    keys = key.split(".")
    if len(keys) < 4 or keys[0] != "stages" or keys[2] not in ("space", "fixed", "seed_trials"):
        return keys
    head = keys[:4] if keys[2] == "seed_trials" else keys[:3]
    rest = keys[len(head):]
    if not rest:
        return keys
    node = get_path(raw, ".".join(head))
    known = node if isinstance(node, dict) else {}
    for n in range(len(rest), 0, -1):
        if ".".join(rest[:n]) in known:
            return [*head, ".".join(rest[:n]), *rest[n:]]
    if keys[2] == "space" and len(rest) > 1 and rest[-1] in _SEARCHED_FIELDS:
        return [*head, ".".join(rest[:-1]), rest[-1]]
    return [*head, ".".join(rest)]


def apply_set(raw: dict, item: str) -> tuple[str, ...]:
    """One `--set key.path=value`; a bad value is blamed on the value, a bad path on the key.
    The key path it set, as names."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    if "" in key.split("."):
        raise ConfigError(f"--set {item!r}: {key} has an empty name between dots (or at an "
                          "end); write names joined by single dots, e.g. base.lr")
    try:
        parsed = parse_scalar(value)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"--set {item!r}: the value {value!r} is not valid YAML ({first}); "
                          "quote strings, write lists as [1, 2]") from None
    keys = _keys(raw, key)
    try:
        set_path(raw, keys, parsed, pad=False)
    except IndexError as e:
        raise ConfigError(f"--set {item!r}: {e}") from None
    except KeyError:
        raise ConfigError(f"--set {item!r}: {key} is not a settable key path") from None
    return tuple(keys)


def _set_by(given: list[tuple[tuple[str, ...], str]]) -> Callable[[str], str | None]:
    """For a failing key path, the --set that gave its value (the last one at or above it),
    so that the error names the command line, not the file, as where to fix it."""

    def origin(path: str) -> str | None:
        found = [item for keys, item in given
                 if f"{path}.".startswith(".".join(keys) + ".")]
        return f"--set {found[-1]!r}" if found else None

    return origin


def load_study(path: str | Path, overrides: list[str] | None = None,
               data_root: str | Path | None = None, trials: int | None = None,
               epochs: int | None = None) -> StudyConfig:
    """Read, override and validate a study YAML. Raises ConfigError naming file and key path.
    `trials` sets every stage's budget; `epochs` sets base.epochs and every stage's fixed
    epochs (a quick look at a whole study)."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study file must be a mapping with study, data, base, stages")
    return build_study(raw, str(path), overrides, data_root, trials, epochs)


def build_study(raw: dict, source: str, overrides: list[str] | None = None,
                data_root: str | Path | None = None, trials: int | None = None,
                epochs: int | None = None) -> StudyConfig:
    """A study's settings from its YAML's tree (`source` names where it came from in the
    errors: the file, or the copy a study's record keeps), with load_study's overrides."""
    for flag, value in (("--trials", trials), ("--epochs", epochs)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: must be at least 1 (it sets every stage's "
                              f"{flag[2:]}; {source} is unchanged)")
    if trials is not None and trials > MAX_TRIALS:
        raise ConfigError(f"--trials {trials}: at most {MAX_TRIALS} (a stage queues its budget "
                          "in the Optuna store first); give fewer, or a stage timeout")
    raw = copy.deepcopy(raw)
    given = [(apply_set(raw, item), item) for item in overrides or []]
    if data_root is not None and isinstance(raw.get("data") or {}, dict):
        raw["data"] = {**(raw.get("data") or {}), "root": str(data_root)}
    for stage in raw.get("stages") or []:
        if not isinstance(stage, dict):
            continue
        if trials is not None:
            stage["trials"] = trials
        fixed = stage.get("fixed")
        if epochs is not None and isinstance(fixed, dict) and "epochs" in fixed:
            stage["fixed"]["epochs"] = epochs
    if epochs is not None and isinstance(raw.get("base") or {}, dict):
        raw["base"] = {**(raw.get("base") or {}), "epochs": epochs}
    try:
        cfg = StudyConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e, _set_by(given))}") from None
    if cfg.data.root is not None and not cfg.data.root.is_absolute():
        # Relative data roots are relative to where the user runs the command.
        cfg.data.root = cfg.data.root.resolve()
    return cfg


def dump_resolved(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
