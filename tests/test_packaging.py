"""Packaging: `pip install .` declares everything `ssrl` imports, and the lock (what `make`
and the conda environment install) pins every declared package at a version in its range."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def _canonical(name: str) -> str:
    """PEP 503 name: `PyYAML` and `pyyaml`, `scikit_learn` and `scikit-learn` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "envs" / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"requirements.lock: not an exact pin: {line!r}"
            pins[_canonical(name)] = version.strip()
    return pins


def _third_party_imports() -> dict[str, str]:
    """Top-level module of every absolute import under ssrl/ that is neither the standard
    library nor ssrl itself -> a file that imports it."""
    found: dict[str, str] = {}
    for path in sorted((REPO / "ssrl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("ssrl", "__future__"):
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_dependencies_cover_every_import():
    declared = {_canonical(Requirement(r).name) for r in _project()["dependencies"]}
    dists = importlib.metadata.packages_distributions()  # import name -> distributions
    imports = _third_party_imports()
    assert {"torch", "numpy", "sklearn", "yaml", "kaldiio"} <= set(imports)  # the scan works
    missing = {f"{module} ({where})": dists.get(module, ["?"]) for module, where in
               imports.items()
               if not {_canonical(d) for d in dists.get(module, [])} & declared}
    assert not missing, f"imported but not in pyproject's dependencies: {missing}"


def test_the_lock_pins_every_declared_package_inside_its_range():
    project = _project()
    lock = _lock()
    requirements = [Requirement(r) for r in project["dependencies"]]
    for reqs in project["optional-dependencies"].values():
        requirements += [Requirement(r) for r in reqs if not r.startswith("ssrl[")]
    for req in requirements:
        name = _canonical(req.name)
        assert name in lock, f"{req.name}: declared in pyproject.toml but not pinned in the lock"
        assert lock[name] in req.specifier, (f"{req.name}: the lock pins {lock[name]}, outside "
                                             f"pyproject's {req.specifier}")


def test_top_level_pins_and_conda_follow_the_lock():
    lock = _lock()
    for line in (REPO / "envs" / "requirements.in").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert lock.get(_canonical(name)) == version.strip(), (
                f"requirements.in pins {line!r}, the lock {lock.get(_canonical(name))}")
    conda = (REPO / "envs" / "conda.yaml").read_text()
    assert "- -r requirements.lock" in conda and "python=3.11" in conda
