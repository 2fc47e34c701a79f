"""Imports run downward (DESIGN.md, Layout): the library never builds a command line or imports
the commands, inference never reaches into training, the model knows nobody who controls it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "viewdiff"

# (importing part, imported part): part is the first folder (or module) under viewdiff/.
FORBIDDEN = {
    ("inference", "training"): "inference reaches the model through viewdiff.prior",
    ("sds", "training"): "score distillation reaches the model through viewdiff.prior",
    ("editing", "training"): "editing reaches the model through viewdiff.prior",
    ("trame", "training"): "TrAME reaches the model through viewdiff.prior",
    ("prior", "training"): "the export format is read without the training package",
    ("model", "trame"): "the model knows attention control by its Protocol only",
    ("model", "editing"): "the model knows attention control by its Protocol only",
    ("data", "model"): "data code never imports model code",
}


def _part(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in a file, type-only ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _library_files() -> list[Path]:
    """Every module of viewdiff/ but the command lines and ``python -m`` entry points."""
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if _part(path) != "commands" and path.name != "__main__.py"
    ]


def test_the_scan_sees_the_package() -> None:
    """The checks below read real files (an empty scan would pass anything)."""
    parts = {_part(path) for path in _library_files()}
    assert {"model", "prior", "training", "inference", "trame", "sds", "scene"} <= parts


def _wrong_imports(path: Path, part: str) -> list[str]:
    """What ``path``, a module of ``part``, imports against the layering, one line each."""
    wrong = []
    for line, module in _imports(path):
        name = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE) else path.name
        where = f"{name}:{line} imports {module}"
        if module == "argparse" or module.startswith("argparse."):
            wrong.append(f"{where}: command lines belong in viewdiff/commands/")
        if module.startswith("viewdiff.commands"):
            wrong.append(f"{where}: the library never imports the commands")
        if module.startswith("viewdiff."):
            imported = module.split(".")[1]
            if (part, imported) in FORBIDDEN:
                wrong.append(f"{where}: {FORBIDDEN[part, imported]}")
    return wrong


def test_library_modules_import_downward() -> None:
    """No argparse and no commands in the library; no forbidden package pairs."""
    files = _library_files()
    wrong = [line for path in files for line in _wrong_imports(path, _part(path))]
    assert not wrong, "\n".join(wrong)


def test_a_wrong_import_is_found(tmp_path: Path) -> None:
    """The check reads type-only and function-level imports too."""
    module = PACKAGE / "inference" / "x.py"
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import argparse\n"
    source += "def f():\n    from viewdiff.training.step import x\n"
    path = tmp_path / "x.py"
    path.write_text(source)
    wrong = _wrong_imports(path, _part(module))
    assert [line.split(":")[1] for line in wrong] == [
        "3 imports argparse",
        "5 imports viewdiff.training.step",
    ]


def test_entry_points_only_call_the_commands() -> None:
    """``python -m`` entry points hold no code of their own: they start a command."""
    for path in PACKAGE.rglob("__main__.py"):
        modules = [module for _, module in _imports(path)]
        assert modules and all(m.startswith("viewdiff.commands.") for m in modules), path
