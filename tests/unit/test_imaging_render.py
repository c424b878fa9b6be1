"""Rendered pixels (before JPEG encoding) against values computed here, independently, from
the same stored values: exact rational arithmetic for the windows of PS3.3 C.11.2.1.2,
plain numpy for LUTs and colour. pydicom's bundled test files only."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from fractions import Fraction as F
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pixel_array

from libs.imaging.decode import decode_frame, default_frames, read_header
from libs.imaging.jobs import RenderRequest, render_file
from libs.imaging.jpeg import encode_jpeg
from libs.imaging.render import Unrenderable, render
from libs.imaging.window import Window, preset

Array = npt.NDArray[Any]
HALF = F(1, 2)


def data(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    return Path(path)


def rendered(name: str, index: int = 0, window: Window | None = None) -> Array:
    """What the converter shows: header and frame read the way the worker reads them."""
    path = data(name)
    ds = read_header(path)
    return render(decode_frame(path, ds, index), ds, window).pixels


def stored(name: str) -> tuple[Dataset, Array]:
    """The reference decode: the whole dataset through pydicom's default path."""
    ds = dcmread(data(name))
    return ds, ds.pixel_array


def per_value(values: Array, fn: Callable[[int], int]) -> Array:
    uniq, inverse = np.unique(values, return_inverse=True)
    return np.array([fn(int(u)) for u in uniq], dtype=np.uint8)[inverse].reshape(values.shape)


def modality(ds: Dataset) -> Callable[[int], F]:
    slope = F(str(ds.get("RescaleSlope", 1)))
    intercept = F(str(ds.get("RescaleIntercept", 0)))
    return lambda v: v * slope + intercept


def half_up(y: F) -> int:
    return max(0, min(255, math.floor(y + HALF)))


def linear(c: F, w: F) -> Callable[[F], int]:  # C.11.2.1.2.1
    def f(x: F) -> int:
        if x <= c - HALF - (w - 1) / 2:
            return 0
        if x > c - HALF + (w - 1) / 2:
            return 255
        return half_up(((x - (c - HALF)) / (w - 1) + HALF) * 255)

    return f


def linear_exact(c: F, w: F) -> Callable[[F], int]:  # C.11.2.1.3.2
    def f(x: F) -> int:
        if x <= c - w / 2:
            return 0
        if x > c + w / 2:
            return 255
        return half_up(((x - c) / w + HALF) * 255)

    return f


def sigmoid(c: float, w: float) -> Callable[[F], int]:  # C.11.2.1.3.1
    return lambda x: half_up(F(255 / (1 + math.exp(-4 * (float(x) - c) / w))))


def full_range(lo: F, hi: F) -> Callable[[F], int]:
    """The automatic window: lowest value black, highest white, linear between."""
    return lambda x: half_up((x - lo) * 255 / (hi - lo))


def expected_grey(ds: Dataset, values: Array, display: Callable[[F], int]) -> Array:
    to_modality = modality(ds)
    return per_value(values, lambda v: display(to_modality(v)))


def auto(ds: Dataset, values: Array) -> Array:
    to_modality = modality(ds)
    lo, hi = to_modality(int(values.min())), to_modality(int(values.max()))
    return expected_grey(ds, values, full_range(lo, hi))


# -- greyscale windows -------------------------------------------------------------------


MR_LOSSLESS = [
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
]


@pytest.mark.parametrize("name", MR_LOSSLESS)
def test_file_window_linear_in_every_lossless_encoding(name: str) -> None:
    ds, values = stored("MR_small.dcm")  # the uncompressed original is the reference
    assert (ds.WindowCenter, ds.WindowWidth) == (600, 1600)
    expected = expected_grey(ds, values, linear(F(600), F(1600)))
    got = rendered(name)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)
    assert 0 < np.count_nonzero(expected == 255) < expected.size  # the window clips


def test_signed_ct_with_rescale_and_no_window_gets_its_full_range() -> None:
    ds, values = stored("CT_small.dcm")
    assert ds.PixelRepresentation == 1 and ds.RescaleIntercept == -1024
    assert "WindowCenter" not in ds
    np.testing.assert_array_equal(rendered("CT_small.dcm"), auto(ds, values))


@pytest.mark.parametrize(
    ("name", "center", "width"),
    [("lung", -600, 1500), ("bone", 400, 1800), ("brain", 40, 80), (None, 40, 400)],
)
def test_presets_and_explicit_window_on_hounsfield_units(
    name: str | None, center: int, width: int
) -> None:
    ds, values = stored("CT_small.dcm")
    window = preset(name) if name else Window(center, width)
    expected = expected_grey(ds, values, linear(F(center), F(width)))
    np.testing.assert_array_equal(rendered("CT_small.dcm", window=window), expected)


def test_first_of_several_windows() -> None:
    ds, values = stored("examples_overlay.dcm")
    assert list(ds.WindowCenter) == [450, 200] and list(ds.WindowWidth) == [790, 443]
    expected = expected_grey(ds, values, linear(F(450), F(790)))
    np.testing.assert_array_equal(rendered("examples_overlay.dcm"), expected)


def test_jpeg2000_ct_with_rescale_and_file_window() -> None:
    ds, values = stored("693_J2KI.dcm")
    expected = expected_grey(ds, values, linear(F(40), F(100)))
    np.testing.assert_array_equal(rendered("693_J2KI.dcm"), expected)


@pytest.mark.parametrize(
    "name",
    [
        "JPEG2000.dcm",  # JPEG 2000 lossy, signed
        "JPGExtended.dcm",  # JPEG extended, 12 bits
        "JPEGLSNearLossless_08.dcm",
        "JPEGLSNearLossless_16.dcm",
        "liver_1frame.dcm",  # 1 bit per pixel (segmentation)
    ],
)
def test_compressed_and_odd_depths_without_window(name: str) -> None:
    ds, values = stored(name)
    np.testing.assert_array_equal(rendered(name), auto(ds, values))


def mr_with(**changes: Any) -> tuple[Dataset, Array]:
    ds, values = stored("MR_small.dcm")
    ds = copy.deepcopy(ds)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds, values


def test_voi_lut_function_linear_exact() -> None:
    ds, values = mr_with(VOILUTFunction="LINEAR_EXACT")
    expected = expected_grey(ds, values, linear_exact(F(600), F(1600)))
    np.testing.assert_array_equal(render(values, ds).pixels, expected)


def test_voi_lut_function_sigmoid() -> None:
    ds, values = mr_with(VOILUTFunction="SIGMOID")
    expected = expected_grey(ds, values, sigmoid(600.0, 1600.0))
    np.testing.assert_array_equal(render(values, ds).pixels, expected)


def test_monochrome1_is_inverted() -> None:
    ds, values = mr_with(PhotometricInterpretation="MONOCHROME1")
    expected = 255 - expected_grey(ds, values, linear(F(600), F(1600)))
    np.testing.assert_array_equal(render(values, ds).pixels, expected)


def lut_item(entries: int, first: int, bits: int, table: list[int]) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [entries, first, bits])  # LUTDescriptor
    item.add_new(0x00283006, "US", table)  # LUTData (US, not the ambiguous OW)
    return item


@pytest.mark.parametrize("as_words", [False, True], ids=["US", "OW"])
def test_voi_lut_sequence_when_there_is_no_window(as_words: bool) -> None:
    ds, values = mr_with(WindowCenter=None, WindowWidth=None)
    rng = np.random.default_rng(7)
    first, entries = 100, 2048
    table = sorted(int(v) for v in rng.integers(0, 4096, entries))
    item = lut_item(entries, first, 12, table)
    if as_words:  # OW: 16-bit words in the dataset's (little endian) byte order
        item.add_new(0x00283006, "OW", np.asarray(table, dtype="<u2").tobytes())
    ds.VOILUTSequence = [item]

    def through_lut(v: int) -> int:
        return half_up(F(table[min(max(v - first, 0), entries - 1)]) * 255 / 4095)

    np.testing.assert_array_equal(render(values, ds).pixels, per_value(values, through_lut))


def test_modality_lut_sequence_of_12_bits() -> None:
    ds, values = mr_with()
    table = [(i * 3) % 4096 for i in range(4096)]
    ds.ModalityLUTSequence = [lut_item(4096, 0, 12, table)]

    def through_lut(v: int) -> int:
        return linear(F(600), F(1600))(F(table[min(max(v, 0), 4095)]))

    np.testing.assert_array_equal(render(values, ds).pixels, per_value(values, through_lut))


def test_window_bounds() -> None:
    with pytest.raises(ValueError, match="width"):
        Window(40, 0.5)  # LINEAR needs w >= 1
    with pytest.raises(ValueError, match="width"):
        Window(40, 0, "SIGMOID")
    with pytest.raises(ValueError, match="unknown preset"):
        preset("kidney-stone")


# -- multi-frame ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rtdose.dcm", "rtdose_rle.dcm", "rtdose_expb.dcm"])
def test_multiframe_middle_frame(name: str) -> None:
    ds, values = stored(name)
    assert default_frames(read_header(data(name))) == [0, 7]
    np.testing.assert_array_equal(rendered(name, 7), auto(ds, values[7]))
    np.testing.assert_array_equal(rendered(name, 0), auto(ds, values[0]))


# -- colour --------------------------------------------------------------------------------


def test_palette_colour_through_its_lookup_tables() -> None:
    ds, values = stored("examples_palette.dcm")
    channels = []
    for colour in ("Red", "Green", "Blue"):
        entries, first, bits = ds[f"{colour}PaletteColorLookupTableDescriptor"].value
        lut = ds[f"{colour}PaletteColorLookupTableData"].value
        table = np.frombuffer(lut, dtype="<u2").astype(np.float64)
        assert bits == 16
        index = np.clip(values.astype(np.int64) - first, 0, (entries or 65536) - 1)
        channels.append(np.floor(table[index] * 255 / 65535 + 0.5).astype(np.uint8))
    np.testing.assert_array_equal(rendered("examples_palette.dcm"), np.stack(channels, -1))


def test_rgb_is_shown_as_stored() -> None:
    _, values = stored("examples_rgb_color.dcm")
    np.testing.assert_array_equal(rendered("examples_rgb_color.dcm"), values)


def test_16_bit_rgb_scaled_to_8_bits() -> None:
    _, values16 = stored("SC_rgb_rle_16bit.dcm")
    _, values8 = stored("SC_rgb_rle.dcm")
    expected = np.floor(values16.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    got = rendered("SC_rgb_rle_16bit.dcm")
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, values8)  # the same picture, stored with 8 bits


def test_planar_configuration_1_renders_like_interleaved(tmp_path: Path) -> None:
    ds, values = stored("examples_rgb_color.dcm")
    ds.PixelData = np.ascontiguousarray(values.transpose(2, 0, 1)).tobytes()
    ds.PlanarConfiguration = 1
    ds.save_as(tmp_path / "planar.dcm")
    path = tmp_path / "planar.dcm"
    header = read_header(path)
    np.testing.assert_array_equal(render(decode_frame(path, header, 0), header).pixels, values)


def ybr_full_to_rgb(ybr: Array) -> Array:
    """PS3.3 C.7.6.3.1.2 (YBR_FULL), ITU-R BT.601 full range."""
    y, cb, cr = (ybr[..., i].astype(np.float64) for i in range(3))
    rgb = np.stack(
        [
            y + 1.402 * (cr - 128),
            y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
            y + 1.772 * (cb - 128),
        ],
        -1,
    )
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def test_ybr_full_422_converted_to_rgb() -> None:
    name = "SC_ybr_full_422_uncompressed.dcm"
    ds = dcmread(data(name))
    raw = pixel_array(ds, raw=True)  # still YBR, subsampling undone
    expected = ybr_full_to_rgb(raw)
    got = rendered(name).astype(np.int16)
    assert np.abs(got - expected).max() <= 1  # rounding of the conversion only
    assert got.std() > 10  # a picture, not a flat field


def test_jpeg_baseline_ybr_multiframe_middle_frame() -> None:
    ds, values = stored("examples_ybr_color.dcm")
    assert ds.NumberOfFrames == 30
    np.testing.assert_array_equal(rendered("examples_ybr_color.dcm", 15), values[15])


def test_jpeg2000_ybr_rct_colour() -> None:
    _, values = stored("examples_jpeg2k.dcm")
    np.testing.assert_array_equal(rendered("examples_jpeg2k.dcm"), values)


# -- what cannot be rendered, and the JPEGs ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("rtplan.dcm", "no pixel data"),
        ("MR_truncated.dcm", "cannot be decoded"),
        ("JPEG-lossy.dcm", "cannot be decoded"),  # a non-conformant JPEG stream
        ("no_meta.dcm", "not readable as DICOM"),
    ],
)
def test_unrenderable_objects_say_why(name: str, reason: str) -> None:
    with pytest.raises(Unrenderable, match=reason):
        render_file(str(data(name)), RenderRequest())


def test_not_dicom_at_all(tmp_path: Path) -> None:
    (tmp_path / "x.dcm").write_bytes(b"hello, not an image" * 10)
    with pytest.raises(Unrenderable, match="not readable as DICOM"):
        render_file(str(tmp_path / "x.dcm"), RenderRequest())


def test_preview_and_thumbnail_jpegs_decode_back_to_the_rendered_pixels() -> None:
    import io

    from PIL import Image

    result = render_file(str(data("693_J2KI.dcm")), RenderRequest(quality=95))
    assert result.frames == 1
    assert [(i.frame, i.kind, i.width, i.height) for i in result.images] == [
        (0, "preview", 512, 512),
        (0, "thumbnail", 256, 256),
    ]
    preview = np.asarray(Image.open(io.BytesIO(result.images[0].jpeg)), dtype=np.int16)
    expected = rendered("693_J2KI.dcm").astype(np.int16)
    assert np.abs(preview - expected).mean() < 2.0
    data_, width, height = encode_jpeg(np.zeros((100, 400), np.uint8), quality=80, max_side=64)
    assert (width, height) == (64, 16) and data_[:2] == b"\xff\xd8"


def test_a_malformed_lut_is_unrenderable_not_a_crash(tmp_path: Path) -> None:
    ds, _ = stored("MR_small.dcm")
    del ds.WindowCenter, ds.WindowWidth
    ds.VOILUTSequence = [lut_item(4096, 0, 12, [1, 2, 3])]  # 3 entries, 4096 declared
    ds.save_as(tmp_path / "bad-lut.dcm")
    with pytest.raises(Unrenderable, match="cannot render: ValueError: LUT has 3 entries"):
        render_file(str(tmp_path / "bad-lut.dcm"), RenderRequest())
