"""The package's layers import only downward, model code touches no files or clocks, no imports hide in functions.

Layers (docs/architecture.md): errors -> io, data, models, flops -> train, runs, timing, distill -> cpcnn, mscnn (method
code) -> pipelines -> experiments -> cli; report/ only renders (it may import errors, io, flops and itself).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dynacnn"
LAYERS = [
    ("dynacnn", "dynacnn.errors"),
    ("dynacnn.io", "dynacnn.data", "dynacnn.models", "dynacnn.flops", "dynacnn.distributed", "dynacnn.runtime"),
    ("dynacnn.train", "dynacnn.runs", "dynacnn.timing", "dynacnn.distill", "dynacnn.report"),
    ("dynacnn.cpcnn", "dynacnn.mscnn"),
    (
        "dynacnn.cpcnn.pipeline",
        "dynacnn.mscnn.pipeline",
        "dynacnn.cpcnn.discover",
        "dynacnn.baseline",
        "dynacnn.sources",
        "dynacnn.export",
    ),
    ("dynacnn.experiments",),
    ("dynacnn.cli", "dynacnn.__main__"),
]
REPORT_MAY_IMPORT = ("dynacnn.errors", "dynacnn.io", "dynacnn.flops", "dynacnn.report")
MODEL_CODE = ("dynacnn.cpcnn.model", "dynacnn.cpcnn.policy", "dynacnn.mscnn.model", "dynacnn.mscnn.policies")
FILES_AND_CLOCKS = ("time", "pathlib", "os", "shutil", "dynacnn.io", "dynacnn.runs", "dynacnn.timing")
LAZY_IMPORTS_ALLOWED = ("dynacnn.cli", "dynacnn.cli.options", "dynacnn.cli.cpcnn", "dynacnn.cli.deploy")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(name: str) -> int:
    """The layer of the longest matching prefix (a pipeline module is above its method package)."""
    best, best_len = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{name} is in no layer; add it to LAYERS and docs/architecture.md"
    return best


def imports(name: str, source: str | None = None) -> list[tuple[str, bool]]:
    """(imported module, imported inside a function?) for every import in module `name` (or in `source`)."""
    is_package = name in MODULES and MODULES[name].name == "__init__.py"
    tree = ast.parse(MODULES[name].read_text() if source is None else source)
    package = name if is_package else name.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{parent}.{base}" if base else parent
                found.extend(
                    (f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base, in_function)
                    for alias in child.names
                )
            visit(child, nested)

    visit(tree, False)
    return found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_only_downward(name):
    """A package's __init__ may re-export from its own subpackage (the public API); nothing else looks up."""
    own = layer(name)
    facade = MODULES[name].name == "__init__.py"
    upward = [
        target
        for target, _ in imports(name)
        if target.startswith("dynacnn") and layer(target) > own and not (facade and target.startswith(name + "."))
    ]
    assert not upward, f"{name} (layer {own}) imports from higher layers: {upward}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("dynacnn.report")))
def test_report_only_renders(name):
    wrong = [t for t, _ in imports(name) if t.startswith("dynacnn") and not t.startswith(REPORT_MAY_IMPORT)]
    assert not wrong, f"{name} is a renderer but imports {wrong}"


@pytest.mark.parametrize("name", MODEL_CODE)
def test_model_code_touches_no_files_or_clocks(name):
    wrong = [t for t, _ in imports(name) if t.split(".")[0] in FILES_AND_CLOCKS or t.startswith(FILES_AND_CLOCKS[4:])]
    assert not wrong, f"{name} is model code but imports {wrong}"
    assert "open(" not in MODULES[name].read_text(), f"{name} opens files"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n not in LAZY_IMPORTS_ALLOWED))
def test_no_function_local_imports_of_the_package(name):
    hidden = [t for t, local in imports(name) if local and t.startswith("dynacnn")]
    assert not hidden, f"{name} imports {hidden} inside functions (an import cycle to break instead)"


def test_the_checker_sees_upward_and_function_local_imports():
    source = (
        "from dynacnn.cpcnn.pipeline import convert\n\ndef f():\n    from .clustering import HyperClassClustering\n"
    )
    found = imports("dynacnn.cpcnn.model", source)
    assert found == [("dynacnn.cpcnn.pipeline", False), ("dynacnn.cpcnn.clustering", True)]
    assert (
        layer("dynacnn.cpcnn.pipeline") > layer("dynacnn.cpcnn.model") > layer("dynacnn.train") > layer("dynacnn.data")
    )
    assert layer("dynacnn.cli") > layer("dynacnn.experiments.demo") > layer("dynacnn.baseline")
