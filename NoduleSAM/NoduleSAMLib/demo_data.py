"""The demo CT: ``lung1_image.nrrd`` from the pyradiomics 3.0.1 source archive on PyPI.

A real 512x512x48 chest CT with a small lung lesion (labelled in ``lung1_label.nrrd``). pip
fetches the archive (so any PyPI mirror the machine is set up for works) in hash-checking mode:
pip verifies the archive against the pinned SHA-256 as soon as it is downloaded, before it
prepares the sdist's metadata (which runs its ``setup.py``), so no code from an altered archive
ever runs. The archive is verified again, and the two files are extracted and cached.
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .errors import NoduleSAMError
from .models import cache_dir, verify_file

ARCHIVE = "pyradiomics-3.0.1.tar.gz"
ARCHIVE_SHA256 = "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5"
MEMBERS = ("lung1_image.nrrd", "lung1_label.nrrd")


def demo_ct(folder: Path | None = None, pip_options: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Paths of the cached demo CT and its lesion label, fetching them on first use.

    pip_options: extra ``pip download`` options (e.g. ``--index-url``)."""
    folder = Path(folder or cache_dir() / "demo")
    image, label = (folder / name for name in MEMBERS)
    if image.is_file() and label.is_file():
        return image, label
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        print(f"fetching the demo CT ({ARCHIVE}, 34 MB) from PyPI ...", file=sys.stderr)
        requirement = Path(scratch) / "requirement.txt"
        requirement.write_text(f"pyradiomics==3.0.1 --hash=sha256:{ARCHIVE_SHA256}\n")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
                   "--no-binary", ":all:", "--require-hashes", "-r", str(requirement),
                   "-d", scratch, *pip_options]
        run = subprocess.run(command, capture_output=True, text=True)
        archive = Path(scratch) / ARCHIVE
        if run.returncode != 0 or not archive.is_file():
            output = run.stderr or run.stdout
            if "DO NOT MATCH THE HASHES" in output:
                reason = (f"the {ARCHIVE} that pip fetched does not match its pinned SHA-256; "
                          "nothing from it was run or kept")
            else:
                reason = (output.strip().splitlines()[-1:] or ["no output"])[0].strip()
            raise NoduleSAMError(f"could not fetch the demo CT with pip ({reason}); run "
                                 "`nodulesam segment YOUR_CT` on a CT of your own instead")
        verify_file(archive, ARCHIVE_SHA256)
        with tarfile.open(archive) as tar:
            for name in MEMBERS:
                member = tar.getmember(f"pyradiomics-3.0.1/data/{name}")
                with tar.extractfile(member) as source:
                    partial = folder / f".{name}.partial"
                    partial.write_bytes(source.read())
                    partial.replace(folder / name)
    return image, label
