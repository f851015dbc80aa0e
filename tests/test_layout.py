"""The packages have the shape of the data flow, and imports run along it only.

Read from the sources (ast), so the check covers lazy imports inside functions too:
cvpipe's extractor face -> datasets -> shards -> (the trainer) data -> models -> train ->
analysis, each command line on top. A module may import its own stage and earlier ones,
never a later one; `trainer.config`, which every stage of the trainer reads, may import
only the name lists it checks values against and its TOML loader (trainer.typed_toml).
The trainer imports nothing of cvpipe but the shard format (schema, codec, listing). No circle of module-level imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Stage of a module: the longest listed prefix of its name.
STAGES = {
    "cvpipe": 0, "cvpipe.datasets": 1, "cvpipe.shards": 2, "cvpipe.cli": 9,
    "trainer": 3, "trainer.data": 3, "trainer.models": 4, "trainer.train": 5, "trainer.analysis": 6,
    "trainer.cli": 9,
}
CONFIG = "trainer.config"
CONFIG_MAY_IMPORT = {"trainer.typed_toml", "trainer.data.contract", "trainer.models.networks", "trainer.models.resnet",
                     "trainer.train.pkd"}
TRAINER_MAY_IMPORT_FROM_CVPIPE = {"cvpipe", "cvpipe.shards", "cvpipe.shards.schema", "cvpipe.shards.codec",
                                  "cvpipe.shards.listing"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for package in ("cvpipe", "trainer") for p in sorted((ROOT / package).rglob("*.py"))}


def _resolve(name: str) -> str:
    """The project module an imported name lives in (`from trainer.train import checkpoint`
    names the module trainer.train.checkpoint; `from cvpipe.video import open` cvpipe.video)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported project module, at module level) for every import outside
    `if TYPE_CHECKING:` blocks."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            found.extend((_resolve(alias.name), top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.extend((_resolve(f"{node.module}.{alias.name}"), top) for alias in node.names)
        inner = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), True)
    return [(name, top) for name, top in found if name]


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _stage(module: str) -> int:
    prefix = max((p for p in STAGES if module == p or module.startswith(p + ".")), key=len)
    return STAGES[prefix]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_run_along_the_data_flow(module):
    if module == CONFIG:
        extra = {name for name, _ in GRAPH[module]} - CONFIG_MAY_IMPORT
        assert not extra, f"{module} imports {sorted(extra)}: only the name lists it checks values against"
        return
    backwards = sorted({name for name, _ in GRAPH[module] if name != CONFIG and _stage(name) > _stage(module)})
    assert not backwards, f"{module} (stage {_stage(module)}) imports later stages: {backwards}"
    if module.startswith("trainer"):
        cvpipe = sorted({n for n, _ in GRAPH[module] if n.startswith("cvpipe")} - TRAINER_MAY_IMPORT_FROM_CVPIPE)
        assert not cvpipe, f"{module} imports {cvpipe}: the trainer reads shards through the shard format (schema, codec, listing) only"


def test_no_circle_of_module_level_imports():
    edges = {m: {n for n, top in imports if top and n != m} for m, imports in GRAPH.items()}
    # A package's __init__ runs before its submodules; that edge is Python's, not a circle.
    edges = {m: {n for n in targets if not m.startswith(n + ".")} for m, targets in edges.items()}
    state: dict[str, str] = {}

    def walk(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                pytest.fail("import circle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                walk(target, path + [target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])
