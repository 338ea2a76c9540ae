"""Imports run one way, with no exception: a module never imports a layer above its own.

Every `import jaxmodels.X` / `from jaxmodels.X import ...` in every module counts, including the
ones inside functions (a lazy import is still a dependency).
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxmodels"

# Lowest first. A module may import its own layer and the layers below it.
LAYERS = [
    {"errors", "registry", "files", "runtime"},
    {"models"},
    {"config"},
    {"data", "parallel"},
    {"accounting"},
    {"training"},
    {"api", "generate", "orchestration", "scaling", "catalog", "interop"},
    {"cli", "__init__"},
]
# Within-rank rules the table cannot say.
FORBIDDEN = {"data": {"models", "parallel"}, "parallel": {"data"}, "models": {"config"}}


def _rank(top: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def _top(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "jaxmodels" and len(parts) > 1:
                yield node.lineno, parts[1]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_top_level_part_has_a_layer():
    tops = {_top(p) for p in MODULES}
    assert tops <= set().union(*LAYERS), tops - set().union(*LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_import(path):
    me = _top(path)
    bad = []
    for line, target in _imports(path):
        if target not in set().union(*LAYERS):
            continue  # a name, not a subpackage (from jaxmodels import config is 'config')
        if _rank(target) > _rank(me) or target in FORBIDDEN.get(me, ()):
            bad.append(f"line {line}: imports jaxmodels.{target}")
    assert not bad, f"{path.relative_to(PACKAGE)} ({me}) imports upward: {bad}"
