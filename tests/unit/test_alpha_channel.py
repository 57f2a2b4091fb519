"""Transparency in raster images: a PNG or TIFF whose background was made transparent over a
white stored colour used to be scored as if the background were white (only the colour
channels were kept), with no word of the alpha channel.

The rule (``raster.to_grayscale``): an alpha channel that is fully opaque everywhere says
nothing and is dropped in silence; otherwise the picture is composited onto black, as a
viewer on black shows it (a mammogram's background is black), with an ``alpha`` note giving
the transparent pixel counts; nothing visible, or partly transparent pixels on more than a
tenth of the visible ones (the picture itself seen through, not an anti-aliased rim), is
refused as ``unexpected_channels``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from shared.enums import ErrorCode
from shared.errors import UnexpectedChannelsError
from shared.imaging.model_input import ModelInputSource, load_model_input
from shared.imaging.readers import decode
from shared.synthetic import synth_mammogram
from tests.unit.test_readers_tiff_planar import _tiff
from worker.decoding import input_notes

BIG = 10**8


@pytest.fixture
def grey() -> np.ndarray:
    """An 8-bit synthetic mammogram whose background is exactly black."""
    picture = (synth_mammogram(np.random.default_rng(5), size=(128, 96), lesion=True)
               >> 4).astype(np.uint8)
    return np.where(picture <= 2, 0, picture).astype(np.uint8)


def _alpha_note(notes: dict[str, str], transparent: int, total: int, partly: int) -> None:
    note = notes["alpha"]
    assert note.startswith(f"transparency: {transparent:,} of {total:,} pixels ("), note
    assert f"fully transparent, {partly:,} partly: composited onto black" in note, note


def _rgba_png(path: Path, colour: np.ndarray, alpha: np.ndarray) -> Path:
    Image.fromarray(np.dstack([colour, colour, colour, alpha]), "RGBA").save(path)
    return path


def _png(path: Path, pixels: np.ndarray, colour_type: int,
         chunks: tuple[tuple[bytes, bytes], ...] = ()) -> Path:
    """A PNG written byte by byte: any colour type, 8 or 16 bits, extra chunks before IDAT."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))
    rows, columns = pixels.shape[:2]
    stored = pixels.astype(pixels.dtype.newbyteorder(">"))
    raw = b"".join(b"\0" + stored[row].tobytes() for row in range(rows))
    header = struct.pack(">IIBBBBB", columns, rows, pixels.dtype.itemsize * 8, colour_type,
                         0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + b"".join(chunk(kind, body) for kind, body in chunks)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


# --- a background made transparent --------------------------------------------------------

def test_a_transparent_background_stored_white_is_read_as_black_and_noted(
        tmp_path: Path, grey: np.ndarray) -> None:
    background = grey == 0
    hidden_white = np.where(background, 255, grey).astype(np.uint8)
    path = _rgba_png(tmp_path / "cut_out.png", hidden_white,
                     np.where(background, 0, 255).astype(np.uint8))

    decoded = decode(path, max_pixels=BIG)

    np.testing.assert_array_equal(decoded.pixels, grey)
    _alpha_note(decoded.notes, int(background.sum()), grey.size, 0)
    assert "alpha" in input_notes(decoded.notes)  # kept on the prediction


def test_it_gives_the_model_the_input_of_the_same_image_stored_opaque(
        tmp_path: Path, grey: np.ndarray) -> None:
    """What the probe found: b13 (transparent, white underneath) scored unlike b03."""
    background = grey == 0
    transparent = _rgba_png(tmp_path / "cut_out.png", np.where(background, 255, grey),
                            np.where(background, 0, 255).astype(np.uint8))
    plain = tmp_path / "plain.png"
    cv2.imwrite(str(plain), grey)

    def model_input(path: Path) -> np.ndarray:
        return load_model_input(ModelInputSource(str(path), None, None, (64, 64), BIG)).tensor

    np.testing.assert_array_equal(model_input(transparent), model_input(plain))


@pytest.mark.parametrize("depth", [np.uint8, np.uint16])
def test_grey_plus_alpha_png_is_composited_and_not_called_colour(
        tmp_path: Path, grey: np.ndarray, depth: type[np.unsignedinteger]) -> None:
    scale = 257 if depth is np.uint16 else 1
    top = np.iinfo(depth).max
    background = grey == 0
    stored = np.where(background, 255, grey).astype(depth) * scale
    alpha = np.where(background, 0, top).astype(depth)
    path = _png(tmp_path / "la.png", np.dstack([stored, alpha]), 4)

    decoded = decode(path, max_pixels=BIG)

    np.testing.assert_array_equal(decoded.pixels, grey.astype(depth) * scale)
    _alpha_note(decoded.notes, int(background.sum()), grey.size, 0)
    assert "colour" not in decoded.notes


def test_a_grey_value_made_transparent_by_a_trns_chunk_is_background(
        tmp_path: Path, grey: np.ndarray) -> None:
    background = grey == 0
    stored = np.where(background, 255, np.minimum(grey, 254)).astype(np.uint8)
    path = _png(tmp_path / "trns.png", stored, 0, ((b"tRNS", struct.pack(">H", 255)),))

    decoded = decode(path, max_pixels=BIG)

    np.testing.assert_array_equal(decoded.pixels, np.where(background, 0, stored))
    _alpha_note(decoded.notes, int(background.sum()), grey.size, 0)


def test_colour_under_transparent_pixels_is_not_judged(tmp_path: Path,
                                                       grey: np.ndarray) -> None:
    background = grey == 0
    rgba = np.dstack([grey, grey, grey, np.where(background, 0, 255)]).astype(np.uint8)
    rgba[background, 0] = 255  # red under the transparency: unseen
    path = tmp_path / "red_under.png"
    Image.fromarray(rgba, "RGBA").save(path)

    np.testing.assert_array_equal(decode(path, max_pixels=BIG).pixels, grey)


# --- opaque alpha: no alarm ---------------------------------------------------------------

@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_a_fully_opaque_alpha_is_dropped_without_a_note(tmp_path: Path, grey: np.ndarray,
                                                        mode: str) -> None:
    path = tmp_path / f"{mode}.png"
    Image.fromarray(grey).convert(mode).save(path)

    decoded = decode(path, max_pixels=BIG)

    np.testing.assert_array_equal(decoded.pixels, grey)
    assert "alpha" not in decoded.notes
    # A grey+alpha PNG is grey as stored: OpenCV's BGRA expansion is not "colour".
    assert ("colour" in decoded.notes) is (mode == "RGBA")


# --- partial transparency -----------------------------------------------------------------

def test_an_anti_aliased_rim_is_composited_onto_black(tmp_path: Path,
                                                      grey: np.ndarray) -> None:
    alpha = np.full(grey.shape, 255, np.uint8)
    alpha[:, :2] = 0
    alpha[:, 2] = 128  # one column of 96 half transparent: about 1 % of the visible pixels
    path = _rgba_png(tmp_path / "rim.png", np.full(grey.shape, 200, np.uint8), alpha)

    decoded = decode(path, max_pixels=BIG)

    assert (decoded.pixels[:, :2] == 0).all() and (decoded.pixels[:, 2] == 100).all()
    assert (decoded.pixels[:, 3:] == 200).all()
    _alpha_note(decoded.notes, 2 * grey.shape[0], grey.size, grey.shape[0])


def test_a_picture_seen_through_partial_transparency_is_refused(tmp_path: Path,
                                                                grey: np.ndarray) -> None:
    alpha = np.where(grey == 0, 255, 128).astype(np.uint8)  # the breast at half opacity
    path = _rgba_png(tmp_path / "half.png", grey, alpha)

    with pytest.raises(UnexpectedChannelsError) as refused:
        decode(path, max_pixels=BIG)

    assert refused.value.code is ErrorCode.UNEXPECTED_CHANNELS
    assert "half.png is partly transparent over" in refused.value.message
    assert "Export it again without transparency" in refused.value.message


def test_a_fully_transparent_image_is_refused(tmp_path: Path, grey: np.ndarray) -> None:
    path = _rgba_png(tmp_path / "clear.png", grey, np.zeros_like(grey))

    with pytest.raises(UnexpectedChannelsError, match=r"clear\.png is fully transparent"):
        decode(path, max_pixels=BIG)


# --- TIFF: what its ExtraSamples tag says the fourth sample is ------------------------------

def test_an_8_bit_rgba_tiff_is_not_darkened_twice(tmp_path: Path, grey: np.ndarray) -> None:
    """OpenCV reads 8-bit TIFF through libtiff's RGBA reader, which premultiplies alpha."""
    alpha = np.full(grey.shape, 255, np.uint8)
    alpha[:, :2] = 0
    alpha[:, 2] = 128
    path = tmp_path / "rgba8.tif"
    colour = np.full(grey.shape, 200, np.uint8)
    Image.fromarray(np.dstack([colour, colour, colour, alpha]), "RGBA").save(path)

    decoded = decode(path, max_pixels=BIG)

    assert (decoded.pixels[:, :2] == 0).all() and (decoded.pixels[:, 3:] == 200).all()
    assert (np.abs(decoded.pixels[:, 2].astype(int) - 100) <= 1).all()
    _alpha_note(decoded.notes, 2 * grey.shape[0], grey.size, grey.shape[0])


def test_a_16_bit_tiff_with_unassociated_alpha_is_composited(tmp_path: Path,
                                                             grey: np.ndarray) -> None:
    background = grey == 0
    stored = np.where(background, 65535, grey.astype(np.uint16) * 257).astype(np.uint16)
    alpha = np.where(background, 0, 65535).astype(np.uint16)
    path = _tiff(tmp_path / "rgba16.tif", [stored] * 3 + [alpha], planar=1, alpha=True)

    decoded = decode(path, max_pixels=BIG)

    np.testing.assert_array_equal(decoded.pixels, grey.astype(np.uint16) * 257)
    _alpha_note(decoded.notes, int(background.sum()), grey.size, 0)


def test_a_tiff_extra_sample_of_unspecified_meaning_is_not_opacity(
        tmp_path: Path, grey: np.ndarray) -> None:
    stored = grey.astype(np.uint16) * 257
    path = _tiff(tmp_path / "extra.tif", [stored] * 3 + [np.zeros_like(stored)], planar=1)

    decoded = decode(path, max_pixels=BIG)

    np.testing.assert_array_equal(decoded.pixels, stored)
    assert "alpha" not in decoded.notes
