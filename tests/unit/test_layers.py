"""The package's layers point one way: shared machinery below, methods above it, the Snakemake
adapter and the command line on top. A module that imports upward fails here, naming the import."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "groundflow"
METHODS = ("cvc", "cings", "tsst", "gwys")
# Above the methods: they may import anything below them, nothing imports them but each other.
TOP = ("pipeline", "demo", "cli", "trace", "preflight")
SHARED = ("io", "models", "generate", "embed", "judge", "vision", "train", "report", "evaluate", "config", "prompts")


def groundflow_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `groundflow.*` import in a file, function-level imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("groundflow")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("groundflow"):
            found.append((node.lineno, node.module))
    return found


def top_part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def test_the_layer_check_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from groundflow.cings.fixture import x\n")
    assert groundflow_imports(sample) == [(2, "groundflow.cings.fixture")]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    layer = layer_of(path)
    upward = []
    for line, module in groundflow_imports(path):
        target = top_part(module)
        if layer in SHARED and (target in METHODS or target in TOP):
            upward.append((line, module))
        elif layer in METHODS and target in TOP:
            upward.append((line, module))
        elif layer in METHODS and target in METHODS and target != layer:
            upward.append((line, module))
    assert not upward, f"{path.relative_to(PACKAGE)} imports above its layer: {upward}"
