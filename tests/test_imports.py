"""Imports point down (docs/architecture.md, "Import direction"): data, models and evaluation
never import training; training never imports the report; the config's schema ships with the
package. Read from the source's syntax tree, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ssrl.config import SCHEMA

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ssrl"


def imported_modules(file: Path, root: Path = REPO) -> set[str]:
    """Every module `file` (under `root`) imports: absolute names, relative imports resolved."""
    parts = file.relative_to(root).with_suffix("").parts
    package = parts[:-1] if parts[-1] != "__init__" else parts
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + (base,)).strip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _files(*folders: str) -> list[Path]:
    return sorted(f for folder in folders for f in (PACKAGE / folder).rglob("*.py"))


#: (the modules under these folders or files, may not import a module starting with this)
RULES = [
    (("data", "evaluation", "models"), "ssrl.training"),
    (("data", "evaluation", "models", "training"), "ssrl.report"),
    (("data", "evaluation", "models", "training"), "ssrl.cli"),
    (("runtime.py", "files.py", "config.py"), "ssrl.training"),
]


@pytest.mark.parametrize("owners, forbidden", RULES)
def test_imports_point_down(owners, forbidden):
    files = [PACKAGE / o for o in owners if o.endswith(".py")] + _files(
        *(o for o in owners if not o.endswith(".py")))
    assert files
    bad = {str(f.relative_to(REPO)): sorted(m for m in imported_modules(f)
                                            if m == forbidden or m.startswith(forbidden + "."))
           for f in files}
    assert not {f: m for f, m in bad.items() if m}, f"imports of {forbidden}"


def test_the_rule_reader_sees_lazy_and_relative_imports(tmp_path):
    """The check itself: an import inside a function and a relative import both count."""
    probe = tmp_path / "ssrl" / "data" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    from ssrl.training.loop import train\n"
                     "from ..training import kmeans\n")
    found = imported_modules(probe, tmp_path)
    assert "ssrl.training.loop" in found and "ssrl.training.kmeans" in found


def test_no_module_but_the_cli_decides_about_progress_bars():
    """Whether to draw progress bars is the CLI's choice (a terminal or not); steps take a flag."""
    users = [str(f.relative_to(REPO)) for f in _files(".")
             if "progress_bars" in imported_modules(f) or any(
                 m.endswith(".progress_bars") for m in imported_modules(f))]
    assert users == ["ssrl/cli.py"]


def test_the_schema_is_package_data_and_the_workflow_links_to_it():
    assert SCHEMA.is_file() and SCHEMA.is_relative_to(PACKAGE)
    link = REPO / "workflow" / "schemas" / "config.schema.yaml"
    assert link.is_symlink() and link.resolve() == SCHEMA.resolve()
    assert "workflow" not in (PACKAGE / "config.py").read_text().split("SCHEMA =")[1].split("\n")[0]
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'ssrl = ["schema/*.yaml"]' in pyproject
