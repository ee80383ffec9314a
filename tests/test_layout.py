"""The package's layout stays true: one folder a layer, imports only downward, no circles.

Every `import` and `from ... import` in the package is read (lazy ones inside functions
included), so a shortcut taken in a function body is caught as surely as one at the top."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "asl_sweep"

# Lowest first. A module may import its own layer and the layers before it, never one after.
LAYERS = ["runtime", "settings", "data", "models", "training", "tracking", "search", "results",
          "cli"]


def _layer(module: str) -> str:
    """'asl_sweep.search.study' -> 'search'; 'asl_sweep.cli' -> 'cli'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "asl_sweep"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """The asl_sweep modules a file imports, as full dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("asl_sweep"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.startswith("asl_sweep"):
            for alias in node.names:  # `from asl_sweep.runtime import signals` names a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py")
                          .exists() else node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; write asl_sweep.<layer>.<module>")
    return found


def graph() -> dict[str, set[str]]:
    return {_module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_lives_in_a_layer_folder():
    stray = [m for m in graph() if _layer(m) not in LAYERS and m != "asl_sweep"]
    assert not stray, f"modules outside the layer folders {LAYERS}: {stray}"
    for layer in LAYERS[:-1]:
        doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
        assert doc and "import" in doc, f"{layer}/__init__.py must say what it may import"


def test_imports_run_only_downward():
    upward = []
    for module, imported in graph().items():
        if module == "asl_sweep":
            continue
        own = LAYERS.index(_layer(module))
        for target in imported:
            if target == "asl_sweep":
                continue
            if _layer(target) not in LAYERS:
                upward.append(f"{module} -> {target} (no such layer)")
            elif LAYERS.index(_layer(target)) > own:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that run upward or nowhere:\n" + "\n".join(sorted(upward))


def test_no_import_circles():
    g = graph()
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for t in sorted(g.get(m, ())):
            if seen.get(t) == 1:
                cycle = path[path.index(t):] + [t] if t in path else [m, t]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if t in g and t not in seen:
                visit(t, path + [t])
        seen[m] = 2

    for module in g:
        if module not in seen:
            visit(module, [module])


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule can fail: a lazy import of the search from the trainer is caught."""
    bad = tmp_path / "train.py"
    bad.write_text("def f():\n    from asl_sweep.search.study import run_study\n")
    assert imports_of(bad) == {"asl_sweep.search.study"}
    assert LAYERS.index(_layer("asl_sweep.search.study")) > LAYERS.index("training")


def _third_party(path: Path) -> set[str]:
    """The top-level packages outside asl_sweep a file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - {"asl_sweep"}


def test_the_search_flow_talks_to_mlflow_only_through_its_mirror():
    """search/ in three rooms: the flow (study, trial) reaches MLflow only through the
    record's module (mirror); besides it only session (which opens the MLflow store) and
    evaluation (which downloads checkpoints to score) import the tracking layer."""
    g = graph()
    for flow in ("asl_sweep.search.study", "asl_sweep.search.trial"):
        assert "mlflow" not in _third_party(PACKAGE / "search" / f"{flow.rsplit('.', 1)[1]}.py")
        assert not {m for m in g[flow] if _layer(m) == "tracking"}, flow
    talks = sorted(m for m, imported in g.items() if _layer(m) == "search"
                   and any(_layer(t) == "tracking" for t in imported))
    assert talks == ["asl_sweep.search.evaluation", "asl_sweep.search.mirror",
                     "asl_sweep.search.session"], talks


def test_only_the_adapter_reaches_inside_optuna():
    private = re.compile(r"\._storage\b|\._study_id\b|\._trial_id\b|\._cached_frozen_trial\b|"
                         r"optuna\.\w+\._\w+")
    found = [f"{p.relative_to(PACKAGE)}:{n}" for p in PACKAGE.rglob("*.py")
             if p.name != "optuna_api.py"
             for n, line in enumerate(p.read_text().splitlines(), 1) if private.search(line)]
    assert not found, f"Optuna's private API outside search/optuna_api.py: {found}"


def test_cli_and_results_use_the_search_front_door():
    """cli.py and results/ import the search layer through asl_sweep.search alone."""
    g = graph()
    behind = sorted(f"{m} -> {t}" for m, imported in g.items()
                    if _layer(m) in ("results", "cli") for t in imported
                    if _layer(t) == "search" and t != "asl_sweep.search")
    assert not behind, "past the front door:\n" + "\n".join(behind)
