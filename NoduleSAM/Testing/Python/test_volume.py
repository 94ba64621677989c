"""Reading CTs: the real LIDC DICOM series against SimpleITK, and every bad input we refuse."""
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import (MPEG4HP41, JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless,
                         RLELossless)

from NoduleSAMLib.errors import NoduleSAMError
from NoduleSAMLib.volume import CTVolume, check_ct, read_ct, window


def test_dicom_series_matches_simpleitk(ct_0001, series_0001, lidc_dir):
    import json

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series_0001)))
    image = reader.Execute()
    assert ct_0001.hu.shape == (133, 512, 512)
    np.testing.assert_array_equal(ct_0001.hu, sitk.GetArrayFromImage(image).astype(np.float32))
    np.testing.assert_allclose(ct_0001.spacing_ijk_mm, image.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(ct_0001.origin_lps_mm, image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ct_0001.direction_lps.ravel(), image.GetDirection(), atol=1e-6)
    reference = json.loads((lidc_dir / "scans" / "LIDC-IDRI-0001.reference.json").read_text())
    slice_z = ct_0001.zyx_to_lps(np.column_stack([np.arange(133), np.zeros(133), np.zeros(133)]))[:, 2]
    np.testing.assert_allclose(slice_z, reference["slice_z_lps_mm"], atol=1e-4)  # ascending z
    # the reference nodule's mean HU, as the data README gives it
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(lidc_dir / "scans" /
                                                       "LIDC-IDRI-0001.consensus50.nii.gz")))
    assert ct_0001.hu[labels == 1].mean() == pytest.approx(-77.4, abs=0.5)


def copy_slices(series, folder, count=6, start=60):
    folder.mkdir()
    files = sorted(series.glob("*.dcm"), key=lambda f: float(pydicom.dcmread(
        f, stop_before_pixels=True).ImagePositionPatient[2]))[start:start + count]
    for file in files:
        shutil.copy(file, folder / file.name)
    return sorted(folder.glob("*.dcm"), key=lambda f: float(pydicom.dcmread(
        f, stop_before_pixels=True).ImagePositionPatient[2]))


def test_small_series_reads_in_position_order(series_0001, tmp_path):
    files = copy_slices(series_0001, tmp_path / "s")
    for index, file in enumerate(reversed(files)):  # file names no longer follow position
        file.rename(file.with_name(f"{index:03d}.dcm"))
    volume = read_ct(tmp_path / "s")
    z = volume.zyx_to_lps(np.column_stack([np.arange(6), np.zeros(6), np.zeros(6)]))[:, 2]
    assert np.all(np.diff(z) > 0)


def expect_error(path, *fragments):
    with pytest.raises(NoduleSAMError) as error:
        read_ct(path)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_wrong_modality(series_0001, tmp_path):
    for file in copy_slices(series_0001, tmp_path / "mr"):
        ds = pydicom.dcmread(file)
        ds.Modality = "MR"
        ds.save_as(file)
    expect_error(tmp_path / "mr", "modality is 'MR'", "CT only")


def test_missing_slice_is_refused(series_0001, tmp_path):
    files = copy_slices(series_0001, tmp_path / "gap")
    files[3].unlink()
    expect_error(tmp_path / "gap", "unevenly spaced", "missing")


def test_two_series_in_one_folder(series_0001, tmp_path):
    files = copy_slices(series_0001, tmp_path / "two")
    for file in files[:3]:
        ds = pydicom.dcmread(file)
        ds.SeriesInstanceUID = "1.2.3.4"
        ds.save_as(file)
    expect_error(tmp_path / "two", "holds 2 series", "1.2.3.4", "--series")
    assert read_ct(tmp_path / "two", series_uid="1.2.3.4").hu.shape[0] == 3


def test_broken_pixel_data(series_0001, tmp_path):
    files = copy_slices(series_0001, tmp_path / "broken")
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) - 200_000])
    expect_error(tmp_path / "broken", files[2].name, "broken DICOM")


def edit_slice(file, **values):
    """Rewrite one DICOM file with attributes changed (None deletes one)."""
    ds = pydicom.dcmread(file)
    for keyword, value in values.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    ds.save_as(file)


@pytest.mark.parametrize("keyword", ["PixelSpacing", "ImageOrientationPatient",
                                     "ImagePositionPatient", "Rows", "Columns", "RescaleSlope",
                                     "RescaleIntercept"])
def test_missing_geometry_tag_is_one_line_error(series_0001, tmp_path, keyword):
    files = copy_slices(series_0001, tmp_path / "s")
    # the last slice: without its position it used to be dropped silently (5 slices read)
    edit_slice(files[-1], **{keyword: None})
    expect_error(tmp_path / "s", files[-1].name, f"has no {keyword}", "Export the series again")


def test_empty_or_non_numeric_geometry_is_one_line_error(series_0001, tmp_path):
    files = copy_slices(series_0001, tmp_path / "empty")
    edit_slice(files[2], PixelSpacing="")
    expect_error(tmp_path / "empty", files[2].name, "has no PixelSpacing")
    files = copy_slices(series_0001, tmp_path / "two")
    edit_slice(files[2], ImagePositionPatient=[-166.0, -171.7])
    expect_error(tmp_path / "two", files[2].name, "ImagePositionPatient is", "not 3 number(s)")
    files = copy_slices(series_0001, tmp_path / "text")
    data = files[2].read_bytes()  # pydicom refuses to write a non-number into a DS attribute
    assert data.count(b"0.703125\\0.703125 ") == 1
    files[2].write_bytes(data.replace(b"0.703125\\0.703125 ", b"abc\\0.703125      "))
    expect_error(tmp_path / "text", files[2].name, "PixelSpacing is", "not 2 number(s)")


def test_mixed_orientations_are_refused(series_0001, tmp_path):
    files = copy_slices(series_0001, tmp_path / "s")
    tilt = np.radians(5)
    edit_slice(files[3], ImageOrientationPatient=[1, 0, 0, 0, np.cos(tilt), np.sin(tilt)])
    expect_error(tmp_path / "s", "not all oriented alike", files[3].name, "one series")


def test_gantry_tilt_is_refused(series_0001, tmp_path):
    files = copy_slices(series_0001, tmp_path / "tilt")
    for k, file in enumerate(files):  # a 15 deg tilt about x: each slice 2.5 * tan(15) mm further
        ds = pydicom.dcmread(file)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + k * 2.5 * np.tan(np.radians(15)), z]
        ds.save_as(file)
    expect_error(tmp_path / "tilt", "gantry tilt of about 15.0 deg", "Acquisition geometry "
                 "regularization")
    files = copy_slices(series_0001, tmp_path / "rounding")
    for k, file in enumerate(files):  # positions rounded differently: far below a pixel
        ds = pydicom.dcmread(file)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + 0.004 * (k % 2), y, z]
        ds.save_as(file)
    assert read_ct(tmp_path / "rounding").hu.shape == (6, 512, 512)


def write_volume(path, hu_zyx, spacing_ijk, origin_lps, direction_lps):
    image = sitk.GetImageFromArray(np.ascontiguousarray(hu_zyx))
    image.SetSpacing([float(s) for s in spacing_ijk])
    image.SetOrigin([float(o) for o in origin_lps])
    image.SetDirection(np.asarray(direction_lps, float).ravel().tolist())
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def axial_block(ct_0001):
    """A real 12 x 40 x 56 block of LIDC-IDRI-0001 (axial, identity direction in LPS)."""
    from NoduleSAMLib.geometry import apply_matrix

    hu = ct_0001.hu[60:72, 300:340, 250:306].astype(np.int16)
    ijk_to_ras = ct_0001.ijk_to_ras.copy()
    ijk_to_ras[:3, 3] = apply_matrix(ct_0001.ijk_to_ras, [250, 300, 60])
    return CTVolume(hu.astype(np.float32), ijk_to_ras, "block")


def test_coronal_and_sagittal_volumes_are_reoriented_exactly(axial_block, tmp_path):
    """The block written as a coronal and as a sagittal acquisition (the slice axes of DICOM's
    conventions) reads back as the same axial voxels at the same places."""
    hu, (sx, sy, sz), origin = axial_block.hu, axial_block.spacing_ijk_mm, axial_block.origin_lps_mm
    nz, ny, nx = hu.shape
    top = origin + [0, 0, (nz - 1) * sz]
    # coronal: i = +x, j = -z (top row first), k = +y; array [k, j, i] = [y, nz-1-z, x]
    coronal = np.transpose(hu, (1, 0, 2))[:, ::-1, :].astype(np.int16)
    write_volume(tmp_path / "coronal.nrrd", coronal, (sx, sz, sy), top,
                 np.column_stack([[1, 0, 0], [0, 0, -1], [0, 1, 0]]))
    # sagittal: i = +y, j = -z, k = -x; array [k, j, i] = [nx-1-x, nz-1-z, y]
    sagittal = np.transpose(hu, (2, 0, 1))[::-1, ::-1, :].astype(np.int16)
    write_volume(tmp_path / "sagittal.nii.gz", sagittal, (sy, sz, sx), top + [(nx - 1) * sx, 0, 0],
                 np.column_stack([[0, 1, 0], [0, 0, -1], [-1, 0, 0]]))
    for name, plane in (("coronal.nrrd", "coronal"), ("sagittal.nii.gz", "sagittal")):
        volume = read_ct(tmp_path / name)
        np.testing.assert_array_equal(volume.hu, hu)
        np.testing.assert_allclose(volume.ijk_to_ras, axial_block.ijk_to_ras, atol=1e-4)
        assert volume.warnings[0].startswith(f"reoriented from {plane} to axial slices")
        image = sitk.ReadImage(str(tmp_path / name))  # as stored: what Slicer would hold
        as_stored = CTVolume.from_lps(sitk.GetArrayFromImage(image), image.GetSpacing(),
                                      image.GetOrigin(), np.reshape(image.GetDirection(), (3, 3)))
        with pytest.raises(NoduleSAMError, match=f"slices are {plane}, not axial.*Orient Scalar"):
            check_ct(as_stored)
    axial = read_ct(write_volume(tmp_path / "axial.nrrd", hu.astype(np.int16), (sx, sy, sz),
                                 origin, np.eye(3)))
    assert axial.warnings == [] and np.array_equal(axial.hu, hu)


def rotation_about_x(degrees):
    a = np.radians(degrees)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def test_oblique_volumes_warned_or_refused(axial_block, tmp_path):
    hu = axial_block.hu.astype(np.int16)
    slight = read_ct(write_volume(tmp_path / "slight.nrrd", hu, (0.7, 0.7, 2.5), (0, 0, 0),
                                  rotation_about_x(12)))
    assert slight.warnings == ["slices are 12 deg from axial: diameters are measured in the "
                               "slice plane"]
    expect_error(write_volume(tmp_path / "oblique.nrrd", hu, (0.7, 0.7, 2.5), (0, 0, 0),
                              rotation_about_x(40)), "40 deg from axial", "Resample")
    # 70 deg from axial is 20 deg from coronal: reoriented, then warned
    steep = read_ct(write_volume(tmp_path / "steep.nrrd", hu, (0.7, 0.7, 2.5), (0, 0, 0),
                                 rotation_about_x(70)))
    assert steep.warnings[0].startswith("reoriented from coronal")
    assert steep.warnings[1].startswith("slices are 20 deg from axial")


def test_ct_without_its_rescale_is_refused(ct_0001, tmp_path):
    """The stored values of LIDC-IDRI-0001 (HU + 1024): the fill outside the field of view is
    still at -1024, which fooled a check on the minimum; air and lung are not below -500."""
    stored = (ct_0001.hu[40:60] + 1024).astype(np.int16)
    expect_error(write_image(tmp_path / "stored.nrrd", stored), "(1 % below",
                 "do not look like a CT in Hounsfield units", "rescale")
    assert read_ct(write_image(tmp_path / "hu.nrrd", ct_0001.hu[40:60].astype(np.int16)))


def test_thick_slices_are_warned(axial_block, tmp_path):
    volume = read_ct(write_volume(tmp_path / "thick.nrrd", axial_block.hu.astype(np.int16),
                                  (0.7, 0.7, 5.0), (0, 0, 0), np.eye(3)))
    assert volume.warnings == ["slices are 5.0 mm apart: nodules smaller than that may be "
                               "missed and volumes are coarse"]
    check_ct(volume)  # a second check adds nothing
    assert len(volume.warnings) == 1


LOSSLESS = [RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1]
ENCODER = {JPEGLSLossless: "jpeg_ls", JPEG2000Lossless: "openjpeg"}  # pyjpegls, pylibjpeg-openjpeg


def compress(file, uid):
    """Re-encode a DICOM file's pixel data losslessly: with pydicom's encoders where it has one
    (RLE natively, JPEG-LS and JPEG 2000 through the test extras), with GDCM for JPEG Lossless."""
    if uid == JPEGLosslessSV1:
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
    else:
        if uid in ENCODER:
            pytest.importorskip(ENCODER[uid], reason=f"no {uid.name} encoder (pip install "
                                                      "'nodulesam[test]')")
        ds = pydicom.dcmread(file)
        ds.compress(uid)
        ds.save_as(file)


@pytest.mark.parametrize("uid", LOSSLESS, ids=lambda uid: uid.name.split()[0])
def test_lossless_compressed_series_reads_as_uncompressed(series_0001, tmp_path, uid):
    files = copy_slices(series_0001, tmp_path / "s", count=4)
    plain = read_ct(tmp_path / "s")
    for file in files:
        compress(file, uid)
    assert {pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID
            for f in files} == {uid}
    volume = read_ct(tmp_path / "s")
    np.testing.assert_array_equal(volume.hu, plain.hu)
    np.testing.assert_array_equal(volume.ijk_to_ras, plain.ijk_to_ras)


def test_compressed_without_decoder_names_the_transfer_syntax(series_0001, tmp_path):
    files = copy_slices(series_0001, tmp_path / "jpeg", count=3)
    for file in files:
        compress(file, JPEGLosslessSV1)
    # only GDCM (or the GPL libjpeg, not a dependency) decodes JPEG Lossless: hide both, as on a
    # machine where they are not installed
    script = ("import sys; sys.modules['gdcm'] = sys.modules['libjpeg'] = None\n"
              "from NoduleSAMLib.errors import NoduleSAMError\n"
              "from NoduleSAMLib.volume import read_ct\n"
              "try:\n    read_ct(sys.argv[1])\nexcept NoduleSAMError as err:\n    print(err)")
    message = subprocess.run([sys.executable, "-c", script, str(tmp_path / "jpeg")], check=True,
                             capture_output=True, text=True).stdout.strip()
    assert "JPEG Lossless, Non-Hierarchical, First-Order Prediction" in message
    assert "(1.2.840.10008.1.2.4.70): no decoder installed" in message
    assert "pip install python-gdcm" in message and len(message.splitlines()) == 1
    # a transfer syntax no plugin of pydicom decodes at all (video)
    files = copy_slices(series_0001, tmp_path / "video", count=3)
    for file in files:
        ds = pydicom.dcmread(file)
        ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])
        ds.file_meta.TransferSyntaxUID = MPEG4HP41
        ds.save_as(file, enforce_file_format=True)
    expect_error(tmp_path / "video", "MPEG-4 AVC/H.264 High Profile / Level 4.1",
                 f"({MPEG4HP41})", "convert the series")


def test_one_slice_and_empty_folder(series_0001, tmp_path):
    copy_slices(series_0001, tmp_path / "one", count=1)
    expect_error(tmp_path / "one", "one slice")
    (tmp_path / "empty").mkdir()
    expect_error(tmp_path / "empty", "no DICOM image slices")
    expect_error(tmp_path / "nothing-here", "no such file")


def write_image(path, array, spacing=(0.7, 0.7, 2.5)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing[: image.GetDimension()])
    sitk.WriteImage(image, str(path))
    return path


def test_image_files_round_trip_and_bad_content(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 400, size=(4, 16, 16)).astype(np.int16)
    for suffix in (".nrrd", ".nii.gz", ".mha"):
        volume = read_ct(write_image(tmp_path / f"ct{suffix}", hu))
        np.testing.assert_array_equal(volume.hu, hu)
        np.testing.assert_allclose(volume.spacing_zyx_mm, (2.5, 0.7, 0.7))
    expect_error(write_image(tmp_path / "slice.nrrd", hu[0]), "2D image")
    expect_error(write_image(tmp_path / "thin.nrrd", hu[:1]), "2D image")
    expect_error(write_image(tmp_path / "flat.mha", np.full((4, 8, 8), -1000, np.int16)), "constant")
    mr_like = rng.integers(0, 3000, size=(4, 16, 16)).astype(np.int16)
    expect_error(write_image(tmp_path / "mr.nrrd", mr_like), "Hounsfield", "another modality")
    (tmp_path / "notes.txt").write_text("x")
    expect_error(tmp_path / "notes.txt", "not a DICOM folder")
    (tmp_path / "garbage.nrrd").write_bytes(b"NRRD0004\nnonsense")
    expect_error(tmp_path / "garbage.nrrd", "cannot read")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_refused(tmp_path, suffix, bad):
    """ITK's NIfTI reader turns NaN and infinity into 0 (checked here), so the file itself is
    read; NRRD and MHA keep them and check_ct sees them."""
    hu = np.random.default_rng(0).integers(-1024, 400, size=(4, 16, 16)).astype(np.float32)
    hu[1, 2, 3] = bad
    path = write_image(tmp_path / f"ct{suffix}", hu)
    through_itk = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert np.isfinite(through_itk[1, 2, 3]) == suffix.startswith(".nii")
    expect_error(path, "1 voxel(s) are NaN or infinite", "Fill them")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_image_file_is_refused(tmp_path, suffix):
    """ITK's NIfTI reader reads half a file without a word (checked here); NRRD and MHA fail."""
    hu = np.random.default_rng(0).integers(-1024, 400, size=(20, 64, 64)).astype(np.int16)
    image = sitk.GetImageFromArray(hu)
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(image, str(path), useCompression=True)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    if suffix.startswith(".nii"):
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).shape == hu.shape
    expect_error(path, "cannot read the image")


def test_nifti_written_by_nibabel_with_nan(tmp_path):
    import nibabel

    hu = np.full((16, 16, 4), -1000, np.float64)  # nibabel's axes are (i, j, k)
    hu[:8] = 40
    hu[3, 4, 1] = hu[5, 5, 2] = np.nan
    nibabel.save(nibabel.Nifti1Image(hu, np.diag([-0.7, -0.7, 2.5, 1])), tmp_path / "ct.nii.gz")
    expect_error(tmp_path / "ct.nii.gz", "2 voxel(s) are NaN")
    hu[3, 4, 1] = hu[5, 5, 2] = -1000
    nibabel.save(nibabel.Nifti1Image(hu.astype(np.int16), np.diag([-0.7, -0.7, 2.5, 1])),
                 tmp_path / "int.nii.gz")
    assert read_ct(tmp_path / "int.nii.gz").hu.shape == (4, 16, 16)


def test_check_ct_rejects_empty_and_window():
    with pytest.raises(NoduleSAMError, match="empty|2D"):
        check_ct(CTVolume(np.zeros((0, 4, 4), np.float32), np.eye(4)))
    np.testing.assert_allclose(window(np.array([-2000.0, -600.0, 500.0]), -1350, 150), [0, 0.5, 1])
