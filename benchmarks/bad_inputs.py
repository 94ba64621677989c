"""Bad inputs: the real ``nodulesam segment`` command on generated and mutated real inputs.

Every input is made from LIDC-IDRI-0001 (40 of its slices, around its nodule) in a scratch folder:
DICOM series truncated, shuffled, duplicated, mixed, tilted, oblique, compressed or stripped of
tags; NRRD/NIfTI/MHA volumes with NaN or infinity, 2D, 4D, constant, not in HU, coronal or
oblique; bad boxes and points JSON; unwritable outputs; tampered checkpoints. Each case records
one outcome:

- clear error: a non-zero exit with one ``nodulesam: error:`` line on stderr and no traceback;
- correct result: exit 0 and a result checked to be right (the reference run's segmentation
  voxel for voxel, or the reference nodule found);
- traceback: a Python traceback on stderr;
- wrong result: exit 0 where the input should have been refused, a result that is wrong, or a
  valid input refused.

It also checks (SHA-256 before and after) that no input file changed. Writes
``benchmarks/results/bad_inputs.json`` and prints a Markdown table. LIDC-IDRI-0001 and the bundled
models are the only data; nothing here measures accuracy.

    python benchmarks/bad_inputs.py [--only SUBSTRING ...] [--keep]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
NODULESAM = Path(sys.executable).with_name("nodulesam")
RESULTS = REPO / "benchmarks" / "results" / "bad_inputs.json"
MODELS = REPO / "NoduleSAM" / "Resources" / "Models"
FIRST_SLICE, SLICES = 70, 40  # of LIDC-IDRI-0001 in position order; its nodule is at 86-93
NODULE_BOX = [15, 25, 338, 393, 294, 341]  # [z0, z1, y0, y1, x0, x1] of the crop, around it
NODULE_CLICK = [20, 365, 317]  # [z, y, x]
OUTCOMES = ("clear error", "correct result", "traceback", "wrong result")


@dataclass
class Case:
    name: str
    group: str
    input: Path
    expect: str  # "error" or "result"
    args: list[str] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)  # other input files/folders (JSON, models)
    output: str = "out.seg.nrrd"  # relative to the case's folder, or absolute
    check: str = "reference"  # "reference" (same voxels), "nodule" (the nodule found)
    warning: str | None = None  # a stderr line fragment a correct result must show
    unprivileged: bool = False  # run root without its right to write anywhere


def sha256_tree(paths) -> dict[str, str]:
    digests = {}
    for path in paths:
        path = Path(path)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            digests[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return digests


# ---------------------------------------------------------------------------------------------
# inputs
def lidc_series() -> Path:
    lidc = Path(os.environ.get("NODULESAM_LIDC_DIR", REPO.parent / "shared" / "data" / "lidc"))
    scans = lidc / "scans" / "LIDC-IDRI-0001"
    if not scans.is_dir():
        sys.exit(f"bad_inputs: LIDC-IDRI-0001 not found under {lidc} (set NODULESAM_LIDC_DIR)")
    return next(scans.rglob("*.dcm")).parent


def by_position(files) -> list[Path]:
    return sorted(files, key=lambda f: float(pydicom.dcmread(
        f, stop_before_pixels=True).ImagePositionPatient[2]))


def edit(file: Path, **values) -> None:
    ds = pydicom.dcmread(file)
    for keyword, value in values.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    ds.save_as(file)


def compress(file: Path, syntax: str) -> None:
    from pydicom.uid import JPEGLosslessSV1

    if syntax == JPEGLosslessSV1:  # pydicom has no JPEG Lossless encoder; GDCM has
        import gdcm

        reader = gdcm.ImageReader()
        reader.SetFileName(str(file))
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        assert change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        writer.SetFileName(str(file))
        assert writer.Write()
        return
    ds = pydicom.dcmread(file)
    ds.compress(syntax)
    ds.save_as(file)


class Inputs:
    """Builds each case's input in its own folder of ``work``."""

    def __init__(self, work: Path):
        self.work = work
        series = lidc_series()
        self.crop = work / "crop"
        self.crop.mkdir()
        for file in by_position(series.glob("*.dcm"))[FIRST_SLICE:FIRST_SLICE + SLICES]:
            shutil.copy(file, self.crop / file.name)
        self.other_series = next((series.parents[2] / "LIDC-IDRI-0003").rglob("*.dcm")).parent
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(self.crop)))
        self.image = reader.Execute()  # ITK's own read, for the volume files
        self.hu = sitk.GetArrayFromImage(self.image).astype(np.int16)
        self.nrrd = self.volume_file("crop.nrrd", self.hu)

    def folder(self, name: str) -> Path:
        """A new folder for one case's input (numbered: names repeat across groups)."""
        self.made = getattr(self, "made", 0) + 1
        folder = self.work / f"{self.made:02d}-{name}"
        folder.mkdir()
        return folder

    def dicom(self, name: str) -> tuple[Path, list[Path]]:
        """A copy of the crop's slices (in position order)."""
        folder = self.folder(name) / "series"
        shutil.copytree(self.crop, folder)
        return folder, by_position(folder.glob("*.dcm"))

    def volume_file(self, name: str, array, spacing=None, origin=None, direction=None,
                    vector=False) -> Path:
        image = sitk.GetImageFromArray(array, isVector=vector)
        if image.GetDimension() == 3:
            image.SetSpacing(spacing or self.image.GetSpacing())
            image.SetOrigin(origin or self.image.GetOrigin())
            image.SetDirection(direction or self.image.GetDirection())
        path = self.folder(name) / name
        sitk.WriteImage(image, str(path))
        return path

    def text(self, name: str, content: str | bytes) -> Path:
        path = self.folder(name) / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def model_copy(self, name: str, model: str) -> Path:
        folder = self.folder(name) / model
        shutil.copytree(MODELS / model, folder)
        return folder


def flip_byte(path: Path, offset_fraction=0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * offset_fraction)] ^= 0xFF
    path.write_bytes(bytes(data))


def rotation_about_x(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def dicom_cases(make: Inputs) -> list[Case]:
    from pydicom.uid import (MPEG4HP41, JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless,
                             RLELossless)

    cases = [Case("dicom: the 40-slice crop (reference)", "DICOM", make.crop, "result",
                  check="nodule")]

    folder, files = make.dicom("shuffled")
    names = [f.name for f in files]
    random.Random(0).shuffle(names)
    for file, name in zip(files, names):
        file.rename(file.with_name("tmp-" + name))
    for file in folder.glob("tmp-*"):
        file.rename(file.with_name(file.name[4:]))
    cases.append(Case("dicom: file names shuffled", "DICOM", folder, "result"))

    folder, files = make.dicom("truncated")
    files[20].write_bytes(files[20].read_bytes()[: files[20].stat().st_size // 2])
    cases.append(Case("dicom: one slice truncated", "DICOM", folder, "error"))

    folder, files = make.dicom("duplicated")
    shutil.copy(files[10], folder / "copy-of-a-slice.dcm")
    cases.append(Case("dicom: one slice duplicated", "DICOM", folder, "error"))

    folder, files = make.dicom("missing")
    files[20].unlink()
    cases.append(Case("dicom: one slice missing", "DICOM", folder, "error"))

    folder, files = make.dicom("mixed")
    for file in by_position(make.other_series.glob("*.dcm"))[:3]:
        shutil.copy(file, folder / f"other-{file.name}")
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    cases += [Case("dicom: two series in one folder", "DICOM", folder, "error"),
              Case("dicom: two series, --series UID", "DICOM", folder, "result",
                   ["--series", uid])]

    folder, files = make.dicom("tilted")
    for k, file in enumerate(files):
        x, y, z = (float(v) for v in pydicom.dcmread(file).ImagePositionPatient)
        edit(file, ImagePositionPatient=[x, y + k * 2.5 * np.tan(np.radians(15)), z])
    cases.append(Case("dicom: gantry tilt 15 deg", "DICOM", folder, "error"))

    folder, files = make.dicom("orientations")
    edit(files[7], ImageOrientationPatient=[1, 0, 0, 0, np.cos(np.radians(5)),
                                            np.sin(np.radians(5))])
    cases.append(Case("dicom: one slice oriented differently", "DICOM", folder, "error"))

    folder, files = make.dicom("oblique")
    rotation = rotation_about_x(40)
    first = np.array(pydicom.dcmread(files[0]).ImagePositionPatient, float)
    for k, file in enumerate(files):  # consistent oblique slices: 40 deg about x
        edit(file, ImageOrientationPatient=[*rotation[:, 0], *rotation[:, 1]],
             ImagePositionPatient=list(first + k * 2.5 * rotation[:, 2]))
    cases.append(Case("dicom: oblique slices (40 deg)", "DICOM", folder, "error"))

    for syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1):
        folder, files = make.dicom(f"compressed-{syntax}")
        for file in files:
            compress(file, syntax)
        cases.append(Case(f"dicom: compressed, {syntax.name}", "DICOM", folder, "result"))

    folder, files = make.dicom("video")
    for file in files:
        ds = pydicom.dcmread(file)
        ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])
        ds.file_meta.TransferSyntaxUID = MPEG4HP41
        ds.save_as(file, enforce_file_format=True)
    cases.append(Case("dicom: a transfer syntax nothing decodes (MPEG-4)", "DICOM", folder,
                      "error"))

    for keyword, which in (("PixelSpacing", "all"), ("ImageOrientationPatient", "all"),
                           ("ImagePositionPatient", "last"), ("Rows", "one"),
                           ("RescaleIntercept", "all")):
        folder, files = make.dicom("no-" + keyword)
        chosen = {"all": files, "last": files[-1:], "one": files[12:13]}[which]
        for file in chosen:
            edit(file, **{keyword: None})
        cases.append(Case(f"dicom: no {keyword} ({which} slice{'s' if which == 'all' else ''})",
                          "DICOM", folder, "error"))

    folder, files = make.dicom("text-spacing")
    data = files[5].read_bytes()
    files[5].write_bytes(data.replace(b"0.703125\\0.703125 ", b"abc\\0.703125      "))
    cases.append(Case("dicom: PixelSpacing not a number", "DICOM", folder, "error"))

    folder, files = make.dicom("mr")
    for file in files:
        edit(file, Modality="MR")
    cases.append(Case("dicom: modality MR", "DICOM", folder, "error"))

    folder = make.folder("no-images")
    (folder / "notes.txt").write_text("not DICOM")
    cases.append(Case("dicom: a folder without DICOM", "DICOM", folder, "error"))
    return cases


def volume_cases(make: Inputs) -> list[Case]:
    hu = make.hu.astype(np.float32)
    cases = []
    for name, value in (("nan.nii.gz", np.nan), ("nan.nrrd", np.nan), ("inf.mha", np.inf),
                        ("minus-inf.nii", -np.inf)):
        bad = hu.copy()
        bad[20, 200:210, 200:210] = value
        cases.append(Case(f"volume: {value} voxels, {name.split('.', 1)[1]}", "volume",
                          make.volume_file(name, bad), "error"))
    cases += [
        Case("volume: 2D (one slice)", "volume", make.volume_file("slice2d.nrrd", make.hu[20]),
             "error"),
        Case("volume: 4D", "volume", make.volume_file(
            "four-d.nrrd", np.stack([make.hu[:10], make.hu[:10]])), "error"),
        Case("volume: constant", "volume", make.volume_file(
            "constant.nrrd", np.full_like(make.hu, -1000)), "error"),
        Case("volume: not HU (no rescale, +1024)", "volume", make.volume_file(
            "not-hu.nrrd", (make.hu.astype(np.int32) + 1024).astype(np.int16)), "error"),
        Case("volume: RGB", "volume", make.volume_file(
            "rgb.mha", np.repeat(make.hu[..., None], 3, axis=-1), vector=True), "error"),
    ]
    path = make.folder("garbage") / "garbage.nii.gz"
    path.write_bytes(make.nrrd.read_bytes()[:5000])
    cases.append(Case("volume: a .nii.gz that is not NIfTI", "volume", path, "error"))
    path = make.folder("truncated-nifti") / "ct.nii.gz"
    sitk.WriteImage(make.image, str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    cases.append(Case("volume: truncated .nii.gz", "volume", path, "error"))

    # the crop stored as a coronal acquisition (i = +x, j = -z, k = +y): read back as the same
    # axial voxels, hence the reference's segmentation
    spacing, origin = make.image.GetSpacing(), np.array(make.image.GetOrigin())
    coronal = np.transpose(make.hu, (1, 0, 2))[:, ::-1, :]
    top = origin + [0, 0, (make.hu.shape[0] - 1) * spacing[2]]
    cases.append(Case("volume: coronal acquisition", "volume", make.volume_file(
        "coronal.nrrd", np.ascontiguousarray(coronal), (spacing[0], spacing[2], spacing[1]),
        tuple(top), (1, 0, 0, 0, 0, 1, 0, -1, 0)), "result", warning="reoriented from coronal"))
    cases.append(Case("volume: oblique (40 deg)", "volume", make.volume_file(
        "oblique.nrrd", make.hu, direction=tuple(rotation_about_x(40).ravel())), "error"))
    cases.append(Case("volume: slightly oblique (12 deg)", "volume", make.volume_file(
        "tilted12.nrrd", make.hu, direction=tuple(rotation_about_x(12).ravel())), "result",
        check="same voxels", warning="12 deg from axial"))
    cases.append(Case("volume: .txt file", "volume", make.text("ct.txt", "x"), "error"))
    return cases


def prompt_cases(make: Inputs) -> list[Case]:
    def boxes(name, content, expect="error", check="nodule"):
        path = make.text(name, content)
        return Case(f"boxes: {name}", "boxes/points", make.nrrd, expect, ["--boxes", str(path)],
                    [path], check=check)

    def points(name, content, expect="error"):
        path = make.text(name, content)
        return Case(f"points: {name}", "boxes/points", make.nrrd, expect, ["--points", str(path)],
                    [path], check="nodule")

    box = json.dumps({"boxes": [{"name": "Nodule 1", "ijk": NODULE_BOX}]})
    return [
        boxes("boxes-valid.json", box, "result"),
        boxes("entry-is-a-list.json", json.dumps({"boxes": [NODULE_BOX]})),
        boxes("ijk-strings.json", json.dumps({"boxes": [{"ijk": ["a"] * 6}]})),
        boxes("ijk-number.json", json.dumps({"boxes": [{"ijk": 5}]})),
        boxes("ijk-nan.json", '{"boxes": [{"ijk": [NaN, 25, 338, 393, 294, 341]}]}'),
        boxes("ijk-five-numbers.json", json.dumps({"boxes": [{"ijk": NODULE_BOX[:5]}]})),
        boxes("latin1.json", '{"boxes": [{"name": "Kn\u00f6tchen", "ijk": [15, 25, 338, 393, '
                             '294, 341]}]}'.encode("latin-1")),
        boxes("not-json.json", "boxes: 15 25"),
        boxes("no-boxes-key.json", json.dumps({"nodes": []})),
        boxes("outside.json", json.dumps({"boxes": [{"ijk": [50, 60, 0, 10, 0, 10]}]})),
        boxes("inverted.json", json.dumps({"boxes": [{"ijk": [25, 15, 338, 393, 294, 341]}]})),
        boxes("empty-list.json", json.dumps({"boxes": []})),
        points("points-valid.json",
               json.dumps({"points": [{"name": "Nodule 1", "ijk": NODULE_CLICK}]}), "result"),
        points("two-numbers.json", json.dumps({"points": [{"ijk": NODULE_CLICK[:2]}]})),
        points("lps-outside.json", json.dumps({"points": [{"lps_mm": [0, 0, 5000]}]})),
        points("neither-key.json", json.dumps({"points": [{"xyz": NODULE_CLICK}]})),
    ]


def option_and_output_cases(make: Inputs) -> list[Case]:
    box = make.text("box.json", json.dumps({"boxes": [{"ijk": NODULE_BOX}]}))
    quick = ["--boxes", str(box)]
    read_only = make.folder("read-only")
    read_only.chmod(0o555)
    a_file = make.text("a-file.txt", "x")
    existing_dir = make.folder("existing-dir")
    return [
        Case("options: --folds 0,x", "options", make.nrrd, "error", ["--folds", "0,x"]),
        Case("options: --detector missing folder", "options", make.nrrd, "error",
             ["--detector", str(make.work / "nowhere")]),
        Case("options: --series unknown UID", "options", make.crop, "error", ["--series", "1.2.3"]),
        Case("output: -o out.nrrd (not .seg.nrrd)", "output", make.nrrd, "error", quick, [box],
             output="out.nrrd"),
        Case("output: -o in a read-only folder", "output", make.nrrd, "error", quick, [box],
             output=str(read_only / "out.seg.nrrd"), unprivileged=True),
        Case("output: -o under a file", "output", make.nrrd, "error", quick, [box],
             output=str(a_file / "out.seg.nrrd")),
        Case("output: -o in /proc", "output", make.nrrd, "error", quick, [box],
             output="/proc/out.seg.nrrd"),
        Case("output: -o an existing folder", "output", make.nrrd, "error", quick, [box],
             output=str(existing_dir)),
        Case("output: --report the same file as --boxes", "output", make.nrrd, "error",
             quick + ["--report", str(box)], [box]),
        Case("output: -o in a folder not yet made", "output", make.nrrd, "result", quick, [box],
             output="new/folder/out.seg.nrrd", check="nodule"),
    ]


def checkpoint_cases(make: Inputs) -> list[Case]:
    from NoduleSAMLib.models import bundled_litemedsam_path

    cases = []
    detector = make.model_copy("detector-flipped", "nodule-detector")
    flip_byte(detector / "fold_0" / "checkpoint_final.pth")
    cases.append(Case("checkpoint: detector, one byte flipped", "checkpoint", make.nrrd, "error",
                      ["--detector", str(detector)], [detector]))
    detector = make.model_copy("detector-unpinned", "nodule-detector")
    (detector / "model.json").unlink()  # a user's own nnU-Net folder: nothing pinned
    flip_byte(detector / "fold_0" / "checkpoint_final.pth", 0.0)  # the zip's signature
    cases.append(Case("checkpoint: detector, a user's folder, header damaged", "checkpoint",
                      make.nrrd, "error", ["--detector", str(detector)], [detector]))
    fpr = make.model_copy("fpr-flipped", "nodule-fpr")
    flip_byte(fpr / "fpr.pth")
    cases.append(Case("checkpoint: classifier, one byte flipped", "checkpoint", make.nrrd, "error",
                      ["--fpr", str(fpr)], [fpr]))
    official = bundled_litemedsam_path()
    refiner = make.folder("refiner-flipped") / official.name
    shutil.copy(official, refiner)
    flip_byte(refiner)
    box = make.text("refiner-box.json", json.dumps({"boxes": [{"ijk": NODULE_BOX}]}))
    cases.append(Case("checkpoint: refiner, one byte flipped (official name)", "checkpoint",
                      make.nrrd, "error", ["--checkpoint", str(refiner), "--boxes", str(box)],
                      [refiner, box]))
    refiner = make.folder("refiner-truncated") / "mine.pth"
    refiner.write_bytes(official.read_bytes()[:100_000])
    cases.append(Case("checkpoint: refiner, truncated (own name)", "checkpoint", make.nrrd,
                      "error", ["--checkpoint", str(refiner), "--boxes", str(box)], [refiner, box]))
    return cases


# ---------------------------------------------------------------------------------------------
# running and judging
def read_seg(path: Path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), (image.GetSpacing(), image.GetOrigin(),
                                           image.GetDirection())


def dice(a, b) -> float:
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


class Judge:
    def __init__(self, make: Inputs, reference_mask: np.ndarray):
        self.make, self.reference_mask = make, reference_mask
        self.reference_seg = None  # the clean crop's result, once run

    def result(self, case: Case, output: Path, stderr: str) -> tuple[str, str]:
        if case.warning and case.warning not in stderr:
            return "wrong result", f"no warning '{case.warning}' on stderr"
        if not output.is_file():
            return "wrong result", f"exit 0 but no {output.name}"
        seg, geometry = read_seg(output)
        if case.check == "nodule":
            if seg.shape != self.make.hu.shape:
                return "wrong result", f"segmentation shape {seg.shape}"
            score = dice(seg > 0, self.reference_mask) if seg.any() else 0.0
            if case.input == self.make.crop:
                self.reference_seg = (seg, geometry)
            return (("correct result", f"{seg.max()} segment(s), Dice {score:.2f} with the readers'"
                     " nodule") if score >= 0.5 else
                    ("wrong result", f"Dice {score:.2f} with the readers' nodule"))
        if self.reference_seg is None:
            return "wrong result", "no reference segmentation to compare with"
        reference, reference_geometry = self.reference_seg
        same_voxels = seg.shape == reference.shape and np.array_equal(seg, reference)
        if not same_voxels:
            score = dice(seg > 0, reference > 0) if seg.shape == reference.shape else 0.0
            return "wrong result", f"segmentation differs from the reference (Dice {score:.3f})"
        same_place = all(np.allclose(a, b, atol=1e-4) for a, b in zip(geometry, reference_geometry))
        if case.check == "reference" and not same_place:
            return "wrong result", "same voxels but a different geometry from the reference"
        return "correct result", ("the reference's segmentation, voxel for voxel"
                                  + (" and place" if same_place else ""))


def run_case(case: Case, judge: Judge, work: Path, timeout: int) -> dict:
    folder = work / "runs" / case.name.replace(" ", "_").replace("/", "_").replace(":", "")
    folder.mkdir(parents=True, exist_ok=True)
    output = Path(case.output) if Path(case.output).is_absolute() else folder / case.output
    command = [str(NODULESAM), "segment", str(case.input), "-o", str(output), *case.args]
    if case.unprivileged and os.geteuid() == 0:  # root ignores permission bits: drop that right
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    watched = [case.input, *case.inputs]
    before = sha256_tree(watched)
    start = time.perf_counter()
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=folder)
        code, stderr = run.returncode, run.stderr
    except subprocess.TimeoutExpired:
        code, stderr = None, f"timed out after {timeout} s"
    seconds = time.perf_counter() - start
    changed = [path for path, digest in sha256_tree(watched).items() if before.get(path) != digest]
    changed += [path for path in before if not Path(path).exists()]
    errors = [line for line in stderr.splitlines() if line.startswith("nodulesam: error:")]
    if "Traceback (most recent call last)" in stderr:
        outcome, detail = "traceback", stderr.strip().splitlines()[-1]
    elif code is None:
        outcome, detail = "wrong result", stderr
    elif code == 0 and case.expect == "error":
        outcome, detail = "wrong result", "exit 0: should have refused"
    elif code == 0:
        outcome, detail = judge.result(case, output, stderr)
    elif len(errors) == 1:
        outcome = "clear error" if case.expect == "error" else "wrong result"
        detail = errors[0][len("nodulesam: error: "):]
        if case.expect != "error":
            detail = "refused a valid input: " + detail
    else:
        outcome, detail = "wrong result", f"exit {code} without one error line: {stderr[-300:]!r}"
    if changed:
        outcome, detail = "wrong result", f"input changed: {changed[:3]}; " + detail
    detail = detail.replace(f"{work}/", "")  # the scratch folder's name says nothing
    print(f"{outcome:15s} {seconds:5.1f} s  {case.name}: {detail[:160]}", flush=True)
    return {"case": case.name, "group": case.group, "expected": case.expect, "outcome": outcome,
            "exit": code, "detail": detail, "inputs_unchanged": not changed,
            "seconds": round(seconds, 1),
            "command": " ".join(command[command.index("segment") - 1:])}


def markdown(rows: list[dict]) -> str:
    lines = ["| case | expected | outcome | exit | what it said / why |", "|---|---|---|---|---|"]
    for row in rows:
        detail = row["detail"].replace("|", "\\|").replace("\n", " ")
        if len(detail) > 150:
            detail = detail[:147] + "..."
        lines.append(f"| {row['case']} | {row['expected']} | {row['outcome']} | {row['exit']} | "
                     f"{detail} |")
    counts = {outcome: sum(r["outcome"] == outcome for r in rows) for outcome in OUTCOMES}
    lines.append("")
    lines.append(f"{len(rows)} cases: " + ", ".join(f"{n} {o}" for o, n in counts.items())
                 + f"; inputs unchanged in {sum(r['inputs_unchanged'] for r in rows)} of "
                 f"{len(rows)}.")
    return "\n".join(lines)


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", help="run only the cases whose name "
                        "contains this text (repeatable; the reference run is always included)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per case")
    parser.add_argument("--out", default=str(RESULTS), help="results JSON (default: %(default)s)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nodulesam-bad-inputs-"))
    work.chmod(0o755)
    try:
        make = Inputs(work)
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(
            lidc_series().parents[2] / "LIDC-IDRI-0001.consensus50.nii.gz")))
        judge = Judge(make, labels[FIRST_SLICE:FIRST_SLICE + SLICES] > 0)
        cases = (dicom_cases(make) + volume_cases(make) + prompt_cases(make)
                 + option_and_output_cases(make) + checkpoint_cases(make))
        if args.only:
            cases = [c for i, c in enumerate(cases)
                     if i == 0 or any(text in c.name for text in args.only)]
        start = time.time()
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip()
        rows = [run_case(case, judge, work, args.timeout) for case in cases]
        report = {
            "command": "python benchmarks/bad_inputs.py" + "".join(
                f" --only {text!r}" for text in args.only or []),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "commit": commit,
            "machine": f"{cpu_name()}, {os.cpu_count()} cores",
            "data": f"LIDC-IDRI-0001 slices {FIRST_SLICE}-{FIRST_SLICE + SLICES - 1} (position "
                    "order), the bundled models",
            "seconds": round(time.time() - start),
            "counts": {o: sum(r["outcome"] == o for r in rows) for o in OUTCOMES},
            "cases": rows,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print()
        print(markdown(rows))
    finally:
        if args.keep:
            print(f"inputs kept in {work}")
        else:
            for path in work.rglob("*"):
                if path.is_dir():
                    path.chmod(0o755)
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
