"""fashionlens.images, the one decoder: formats, the pixel limit, truncation, EXIF, draft mode.

The same file through every door (readers, Predictor, server) is in tests/test_reliability.py; this
file proves the decoder's own rules on real photos and files built from them.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image, ImageFile

from fashionlens import images
from fashionlens.errors import DataError

REAL_JPEG = "clothing-attributes/images/000002.jpg"  # 213 x 320


@pytest.fixture(scope="module")
def real_jpeg(shared_data: Path) -> bytes:
    return (shared_data / REAL_JPEG).read_bytes()


def declare_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its frame header (SOF) claiming ``width`` x ``height`` pixels."""
    position = 2
    while position < len(jpeg):
        assert jpeg[position] == 0xFF, "walked off the marker chain"
        marker = jpeg[position + 1]
        length = struct.unpack(">H", jpeg[position + 2:position + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            return jpeg[:position + 5] + struct.pack(">HH", height, width) + jpeg[position + 9:]
        position += 2 + length
    raise AssertionError("no SOF marker")


def cut_scan(jpeg: bytes, fraction: float = 0.5) -> bytes:
    """The JPEG cut inside its scan data and closed with an end-of-image marker (EOI)."""
    return jpeg[: int(len(jpeg) * fraction)] + b"\xff\xd9"


def _encode(image: Image.Image, kind: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


# ---------------------------------------------------------------- the pixel limit


def test_a_tiny_jpeg_declaring_9000x9000_is_refused_without_decoding(real_jpeg: bytes,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = declare_size(real_jpeg, 9000, 9000)
    assert len(bomb) == len(real_jpeg) < 20_000
    assert Image.open(io.BytesIO(bomb)).size == (9000, 9000)  # what the header says
    assert 9000 * 9000 < Image.MAX_IMAGE_PIXELS  # Pillow alone would decode it: 81 M pixels, 243 MB

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(DataError) as caught:
        images.decode_image(bomb, "bomb.jpg")
    assert str(caught.value) == ("bomb.jpg: image too large to decode safely: the header says 9000x9000 = 81000000 "
                                 "pixels, more than the limit of 40000000 (possible decompression bomb)")


def test_the_limit_is_ours_or_pillows_whichever_is_lower(real_jpeg: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    assert images.pixel_limit() == images.MAX_PIXELS == 40_000_000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60_000)  # 213 x 320 = 68160
    # Pillow's own check only warns at 1x its limit; we refuse there.
    with pytest.warns(Image.DecompressionBombWarning), \
            pytest.raises(DataError, match="68160 pixels, more than the limit of 60000"):
        images.decode_image(real_jpeg)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    monkeypatch.setattr(images, "MAX_PIXELS", 70_000)
    assert images.decode_image(real_jpeg).image.size == (213, 320)


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("kind", images.ACCEPTED_FORMATS)
def test_every_accepted_format_decodes_to_the_same_photo(real_jpeg: bytes, kind: str) -> None:
    photo = Image.open(io.BytesIO(real_jpeg)).convert("RGB")
    stored = photo.convert("P") if kind == "GIF" else photo  # GIF holds a 256-colour palette
    options = {"quality": 95} if kind == "JPEG" else {"lossless": True} if kind == "WEBP" else {}
    data = _encode(stored, kind, **options)
    assert images.sniff_format(data[:16]) == kind
    decoded = images.decode_image(data, f"photo.{kind.lower()}")
    assert decoded.format == kind and decoded.image.mode == "RGB" and decoded.image.size == (213, 320)
    difference = np.abs(np.asarray(decoded.image, np.int16) - np.asarray(stored.convert("RGB"), np.int16))
    assert difference.mean() < 2 if kind == "JPEG" else difference.max() == 0  # lossless: the same pixels


def test_eps_never_reaches_pillows_postscript_plugin(real_jpeg: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    eps = _encode(Image.open(io.BytesIO(real_jpeg)).convert("RGB"), "EPS")
    assert eps.startswith(b"%!PS-Adobe")
    calls = []

    def spy(self, *args, **kwargs):  # EpsImageFile._open: where Pillow would go on to run Ghostscript
        calls.append(self)
        raise AssertionError("the EPS plugin was invoked")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", spy)
    with pytest.raises(DataError) as caught:
        images.decode_image(eps, "drawing.jpg")
    assert calls == []
    assert str(caught.value) == ("drawing.jpg: not an image: expected JPEG, PNG, WebP, GIF, BMP or TIFF data, "
                                 "found a PostScript/EPS file")


@pytest.mark.parametrize("head, found", [
    (b"%PDF-1.7\n", "a PDF file"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00", "a HEIC file"),
    (b"hello, not a photo\n", "text"),
    (b"\x00\x01\x02\x03\xfe", "unrecognised data starting with 00 01 02 03 fe 00 00 00"),
])
def test_refused_formats_are_named(head: bytes, found: str) -> None:
    with pytest.raises(DataError, match=f"not an image: expected JPEG, PNG, WebP, GIF, BMP or TIFF data, found {found}$"):
        images.decode_image(head + b"\x00" * 64, "upload")


# ---------------------------------------------------------------- truncation


def test_a_jpeg_whose_scan_is_cut_short_is_refused_not_filled_grey(real_jpeg: bytes) -> None:
    cut = cut_scan(real_jpeg)
    # What Pillow alone does with it: no error, the lower half silently mid-grey.
    filled = np.asarray(Image.open(io.BytesIO(cut)).convert("RGB"))
    assert (filled[-100:] == 128).all()
    for fraction in (0.2, 0.5, 0.9, 0.99):
        with pytest.raises(DataError, match="corrupt or truncated image .the JPEG scan data ends early"):
            images.decode_image(cut_scan(real_jpeg, fraction), "cut.jpg")
    # Cut without the marker: Pillow's own truncation error, the same wording.
    with pytest.raises(DataError, match="cut.jpg: corrupt or truncated image .image file is truncated"):
        images.decode_image(real_jpeg[: len(real_jpeg) // 2], "cut.jpg")


def test_a_complete_photo_ending_in_mid_grey_is_not_mistaken_for_a_cut_one(real_jpeg: bytes) -> None:
    photo = np.asarray(Image.open(io.BytesIO(real_jpeg)).convert("RGB")).copy()
    photo[-40:, -40:] = 128  # the fill colour, really in the photo
    data = _encode(Image.fromarray(photo), "JPEG", quality=95)
    decoded = images.decode_image(data)
    assert np.asarray(decoded.image)[-1, -1].tolist() == [128, 128, 128]  # so the closer look ran
    with pytest.raises(DataError, match="scan data ends early"):
        images.decode_image(cut_scan(data, 0.97))


def test_decoding_refuses_to_run_with_pillows_truncated_images_switch_on(real_jpeg: bytes,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError, match="LOAD_TRUNCATED_IMAGES is True in this process"):
        images.decode_image(real_jpeg[: len(real_jpeg) // 2], "cut.jpg")


def test_a_fifo_named_like_a_photo_is_refused_without_opening_it(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)  # opening it would block until a writer came
    with pytest.raises(DataError, match="not a regular file"):
        images.decode_image(fifo)


# ---------------------------------------------------------------- EXIF


def _with_exif(jpeg: bytes, tiff: bytes) -> bytes:
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def exif_block(orientation: tuple[int, bytes] | None, *extra: tuple[int, int, int, bytes]) -> bytes:
    """A big-endian EXIF IFD0 with an orientation entry (type, 4 value bytes) and ``extra`` entries."""
    entries = ([(0x0112, orientation[0], 1, orientation[1])] if orientation else []) + list(extra)
    body = b"MM\x00\x2a" + struct.pack(">IH", 8, len(entries))
    for tag, kind, count, value in entries:
        body += struct.pack(">HHI", tag, kind, count) + value
    return body + b"\x00\x00\x00\x00"


SHORT, ASCII, RATIONAL = 3, 2, 5
# SubIFDs (0x014A) stored as a RATIONAL: Pillow reads it, but ImageOps.exif_transpose cannot write it back.
JUNK_SUBIFDS = (0x014A, RATIONAL, 1, b"\x00\x00\x00\x1a")


@pytest.mark.parametrize("name, block, turned", [
    ("orientation 6", exif_block((SHORT, b"\x00\x06\x00\x00")), True),
    ("orientation 6 and a junk tag", exif_block((SHORT, b"\x00\x06\x00\x00"), JUNK_SUBIFDS), True),
    ("orientation 99", exif_block((SHORT, b"\x00\x63\x00\x00")), False),
    ("orientation as text", exif_block((ASCII, b"6\x00\x00\x00")), False),
    ("an IFD pointing past the end", b"MM\x00\x2a\x7f\xff\xff\xff", False),
    ("no TIFF header at all", b"junk" * 8, False),
])
def test_exif_is_applied_when_valid_and_ignored_when_junk(real_jpeg: bytes, name: str, block: bytes,
                                                          turned: bool) -> None:
    decoded = images.decode_image(_with_exif(real_jpeg, block), name)
    assert decoded.image.size == ((320, 213) if turned else (213, 320))
    assert decoded.full_size == decoded.image.size
    # Turned once: handing the result to the decoder's EXIF step again changes nothing.
    assert images.upright(decoded.image).size == decoded.image.size


# ---------------------------------------------------------------- draft mode


def test_draft_decodes_a_large_jpeg_at_reduced_scale_keeping_at_least_draft_side(real_jpeg: bytes) -> None:
    large = _encode(Image.open(io.BytesIO(real_jpeg)).convert("RGB").resize((2130, 3200)), "JPEG", quality=90)
    full = images.decode_image(large)
    assert (full.image.size, full.full_size, full.scale) == ((2130, 3200), (2130, 3200), 1)
    reduced = images.decode_image(large, draft_side=1024)
    assert (reduced.image.size, reduced.full_size, reduced.scale) == ((1065, 1600), (2130, 3200), 2)
    assert max(images.decode_image(large, draft_side=700).image.size) == 800  # 1/4: still >= 700
    # The same picture, at half the resolution.
    halved = np.asarray(full.image.resize((1065, 1600), Image.Resampling.BOX), np.int16)
    assert np.abs(np.asarray(reduced.image, np.int16) - halved).mean() < 3
    # draft_side is a floor: a photo under twice it is decoded in full.
    assert images.decode_image(real_jpeg, draft_side=1024).image.size == (213, 320)
    # Another format is decoded in full, then box-averaged 3 x 3 (Image.reduce) as it is converted, in strips.
    png = _encode(full.image, "PNG", compress_level=1)
    reduced = images.decode_image(png, draft_side=1024)
    assert (reduced.image.size, reduced.full_size, reduced.scale) == ((710, 1067), (2130, 3200), 3)
    assert reduced.image.tobytes() == images.decode_image(png).image.reduce(3).tobytes()


# --- image bombs under the pixel limit (issue 27 item 5) ------------------------------------------------------


def test_decoded_bytes_are_bounded_not_only_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_PIXELS", 40_000)  # 120,000 decoded bytes: an RGB photo of 40,000 pixels
    for mode, dtype in (("F", np.float32), ("I", np.int32)):  # 4 bytes a pixel: 32,000 pixels are too many
        tiff = _encode(Image.fromarray(np.zeros((160, 200), dtype=dtype), mode=mode), "TIFF",
                       compression="tiff_adobe_deflate")
        with pytest.raises(DataError) as error:
            images.decode_image(tiff, "bomb.tif")
        assert str(error.value) == (f"bomb.tif: image too large to decode safely: the header says 200x160 pixels of "
                                    f"mode {mode} = 128000 bytes decoded, more than the limit of 120000 (possible "
                                    f"decompression bomb)")
    assert images.decode_image(_encode(Image.new("RGB", (200, 200)), "PNG")).image.size == (200, 200)
    # 8-bit images are bounded by their pixels alone: a CMYK print file at the pixel limit (160,000 bytes) is fine.
    assert images.decode_image(_encode(Image.new("CMYK", (200, 200)), "JPEG")).image.size == (200, 200)
    grey16 = Image.fromarray(np.full((200, 200), 65535, dtype=np.uint16))
    assert images.decode_image(_encode(grey16, "PNG")).image.getextrema() == ((255, 255),) * 3


def test_a_16_bit_grey_png_is_converted_in_strips_without_full_size_float_copies() -> None:
    import tracemalloc

    # 1000 x 1000 16-bit grey, a 2 KB file: whole-image float64 arithmetic held 3 x 8 MB at once.
    bomb = _encode(Image.fromarray(np.arange(1_000_000, dtype=np.uint32).reshape(1000, 1000).astype(np.uint16)),
                   "PNG")
    tracemalloc.start()
    try:
        decoded = images.decode_image(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000  # numpy's share: a few strips of 2^18 pixels
    expected = np.floor(np.arange(1_000_000).reshape(1000, 1000) % 65536 / 65535 * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(np.asarray(decoded.image)[..., 1], expected)


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "LA", "RGBA", "P", "L", "CMYK", "1"])
def test_conversion_in_strips_gives_the_pixels_of_the_whole_image(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (37, 53, 4), dtype=np.uint8), mode="RGBA")
    values = rng.integers(0, 65536, (37, 53))
    if mode in ("I;16", "I", "F"):  # Pillow's modes of these arrays; F in 0..1
        image = Image.fromarray({"I;16": values.astype(np.uint16), "I": values.astype(np.int32),
                                 "F": (values / 65535).astype(np.float32)}[mode])
        assert image.mode == mode
    elif mode == "P":
        image = rgba.convert("RGB").quantize(64)
        image.info["transparency"] = 3
    else:
        image = rgba.convert(mode)
    whole = images.pil_to_rgb(image, "x")
    monkeypatch.setattr(images, "STRIP_PIXELS", 100)  # strips of one row (53 pixels wide)
    assert images.pil_to_rgb(image, "x").tobytes() == whole.tobytes()
    assert images.pil_to_rgb(image, "x", reduce=4).tobytes() == whole.reduce(4).tobytes()


def test_a_gif_declaring_a_huge_width_is_reduced_by_the_server_and_memory_given_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    frame = Image.new("P", (20_000, 30), 0)
    frame.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    gif = _encode(frame, "GIF", transparency=1)
    assert len(gif) < 3_000
    released = []
    monkeypatch.setattr(images, "LARGE_DECODE_BYTES", 500_000)
    monkeypatch.setattr(images, "release_memory", lambda: released.append(True))
    decoded = images.decode_image(gif, draft_side=1024)
    assert (decoded.image.size, decoded.full_size, decoded.scale) == ((1053, 2), (20_000, 30), 19)
    assert decoded.image.getpixel((0, 0)) == (255, 0, 0) and released == [True]
    images.decode_image(_encode(Image.new("RGB", (64, 64)), "PNG"))
    assert released == [True]  # small decodes do not call it
