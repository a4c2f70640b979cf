"""The dependency rules of docs/architecture.md, checked on the source with ``ast``.

Every import counts: module level, inside functions (lazy) and under
``TYPE_CHECKING``. A lower part never imports a higher one; the only
exceptions are the ones listed (and explained) in ``EXCEPTIONS`` and in
docs/architecture.md. The core never imports Airflow.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pipelines"

#: Lowest first. A part may import its own layer and any layer below it, never one above.
LAYERS: list[tuple[str, frozenset[str]]] = [
    ("foundation", frozenset({"pipelines", "config", "errors", "layout", "state", "connections", "memory"})),
    ("registry", frozenset({"registry"})),
    ("domain", frozenset({"data", "model", "gate"})),
    ("notify", frozenset({"notify"})),
    ("release", frozenset({"release", "scoring"})),
    ("stages", frozenset({"stages", "demo", "reproduce"})),
    ("entry", frozenset({"cli", "experiment", "orchestration", "models_view", "__main__"})),
]
LEVEL = {part: level for level, (_, parts) in enumerate(LAYERS) for part in parts}

#: (importing module, imported module) -> why it is allowed for now (see docs/architecture.md).
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("pipelines.data.quality", "pipelines.notify.alerts"): (
        "an undecodable file is quarantined and alerted from the quality module itself; "
        "the alert belongs in stages.validate like the other data-quality alerts"
    ),
    ("pipelines.data.quality", "pipelines.notify.run_context"): (
        "type only: the run's links reach the unreadable-file alert above"
    ),
    ("pipelines.model.tuning", "pipelines.release.deploy"): (
        "warm start reads the champion from the bucket (checksum-verified); stages should hand it in"
    ),
}

#: Modules allowed to import Airflow: the orchestration layer and the Models view's login bridge.
AIRFLOW_ALLOWED = ("pipelines.orchestration", "pipelines.models_view.airflow_auth")


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted (for "from pipelines import x": pipelines.x)
    line: int
    kind: str  # "top", "lazy" (inside a function) or "type" (under TYPE_CHECKING)


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports_of(path: Path) -> list[Import]:
    return imports_in(ast.parse(path.read_text(), filename=str(path)), module_name(path))


def imports_in(tree: ast.AST, source: str) -> list[Import]:
    found: list[Import] = []

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            child_kind = kind
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                child_kind = "lazy"
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                child_kind = "type"
            if isinstance(child, ast.Import):
                found.extend(Import(source, alias.name, child.lineno, child_kind) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                # "from pipelines.notify import alerts" imports the module pipelines.notify.alerts
                targets = {_submodule(child.module, alias.name) for alias in child.names}
                found.extend(Import(source, target, child.lineno, child_kind) for target in sorted(targets))
            visit(child, child_kind)

    visit(tree, "top")
    return found


def _submodule(package: str, name: str) -> str:
    """``package.name`` when that is a module of ours, else ``package`` (``name`` is a class or function)."""
    candidate = ROOT.joinpath(*package.split("."), name)
    if package.split(".", maxsplit=1)[0] == "pipelines" and (
        candidate.with_suffix(".py").exists() or candidate.is_dir()
    ):
        return f"{package}.{name}"
    return package


def part_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "pipelines":
        return None
    return parts[1] if len(parts) > 1 else "pipelines"


def all_imports() -> list[Import]:
    return [imp for path in sorted(PACKAGE.rglob("*.py")) for imp in imports_of(path)]


def upward_imports(imports: list[Import]) -> list[Import]:
    """Imports from a lower part into a higher one."""
    wrong = []
    for imp in imports:
        src, dst = part_of(imp.source), part_of(imp.target)
        if dst is None or src == dst:
            continue
        assert src in LEVEL, f"{imp.source} is in no layer: add its part to LAYERS and docs/architecture.md"
        assert dst in LEVEL, f"{imp.target} is in no layer: add its part to LAYERS and docs/architecture.md"
        if LEVEL[dst] > LEVEL[src]:
            wrong.append(imp)
    return wrong


def test_every_part_of_the_package_has_a_layer():
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    parts = packages | modules
    assert parts - set(LEVEL) == set(), "new part: give it a layer in LAYERS and docs/architecture.md"


def test_no_lower_part_imports_a_higher_one():
    wrong = [imp for imp in upward_imports(all_imports()) if (imp.source, imp.target) not in EXCEPTIONS]
    assert wrong == [], "\n".join(
        f"{imp.source}:{imp.line} ({LAYERS[LEVEL[part_of(imp.source) or '']][0]}) imports {imp.target} "
        f"({LAYERS[LEVEL[part_of(imp.target) or '']][0]}), a higher part [{imp.kind}]"
        for imp in wrong
    )


def test_every_listed_exception_still_exists_and_is_documented():
    """An exception that was fixed is removed from the list (and from the docs), so it cannot come back silently."""
    upward = {(imp.source, imp.target) for imp in upward_imports(all_imports())}
    assert set(EXCEPTIONS) <= upward, f"fixed, remove from EXCEPTIONS: {set(EXCEPTIONS) - upward}"
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for source, target in EXCEPTIONS:
        assert f"`{source}` → `{target}`" in doc, f"docs/architecture.md does not explain {source} -> {target}"


def test_the_check_sees_lazy_and_type_only_imports():
    """The rule is not fooled by an import hidden in a function or under TYPE_CHECKING."""
    code = (
        "from typing import TYPE_CHECKING\n"
        "from pipelines.errors import RegistryError\n"
        "if TYPE_CHECKING:\n    from pipelines.gate.promotion import RuleResult\n"
        "def f():\n    from pipelines import stages\n    import pipelines.cli\n"
    )
    found = imports_in(ast.parse(code), "pipelines.registry.probe")
    assert {(imp.target, imp.kind) for imp in found} >= {
        ("pipelines.errors", "top"),
        ("pipelines.gate.promotion", "type"),
        ("pipelines.stages", "lazy"),
        ("pipelines.cli", "lazy"),
    }
    assert {imp.target for imp in upward_imports(found)} == {
        "pipelines.gate.promotion",
        "pipelines.stages",
        "pipelines.cli",
    }


@pytest.mark.parametrize("tree", ["pipelines", "dags", "plugins"])
def test_the_core_never_imports_airflow(tree):
    """Airflow is imported only by pipelines/orchestration and the Models view's login bridge.

    DAG files and plugins are Airflow's side already; in them the rule is only that
    they reach the library through the orchestration layer, never a stage directly
    (the settings and the process's memory settings, `pipelines.memory`, are no stage).
    """
    wrong = []
    for path in sorted((ROOT / tree).rglob("*.py")):
        for imp in imports_of(path):
            if tree == "pipelines":
                if imp.target.split(".")[0] == "airflow" and not imp.source.startswith(AIRFLOW_ALLOWED):
                    wrong.append(f"{imp.source}:{imp.line} imports {imp.target} [{imp.kind}]")
            elif part_of(imp.target) not in (None, "orchestration", "models_view", "config", "memory", "pipelines"):
                wrong.append(f"{imp.source}:{imp.line} imports {imp.target} [{imp.kind}]")
    assert wrong == []
