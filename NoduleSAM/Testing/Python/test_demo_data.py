"""The demo CT download runs no code from an archive that fails its pinned hash."""
import subprocess
import sys
import tarfile

import pytest

from NoduleSAMLib.demo_data import demo_ct
from NoduleSAMLib.errors import NoduleSAMError


def _evil_index(tmp_path, marker):
    """A local package index holding a pyradiomics 3.0.1 sdist whose setup.py leaves a marker."""
    source = tmp_path / "src" / "pyradiomics-3.0.1"
    source.mkdir(parents=True)
    (source / "setup.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from setuptools import setup\nsetup(name='pyradiomics', version='3.0.1')\n")
    index = tmp_path / "index"
    index.mkdir()
    with tarfile.open(index / "pyradiomics-3.0.1.tar.gz", "w:gz") as tar:
        tar.add(source, arcname="pyradiomics-3.0.1")
    return index


def test_an_altered_demo_archive_is_refused_before_its_setup_py_runs(tmp_path):
    marker = tmp_path / "setup_py_ran"
    index = _evil_index(tmp_path, marker)
    offline = ("--no-index", "--find-links", str(index))
    # the control: a plain pip download of that sdist does run its setup.py
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
                    "--no-binary", ":all:", "pyradiomics==3.0.1", "-d", str(tmp_path / "plain"),
                    *offline], capture_output=True, check=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(NoduleSAMError, match="does not match its pinned SHA-256"):
        demo_ct(tmp_path / "cache", offline)
    assert not marker.exists()
    assert not any((tmp_path / "cache").glob("*.nrrd"))
