"""The one image decoder: every door (dataset readers, the Predictor and `predict`, the HTTP server)
turns a file or an upload into pixels here, so one file gets one answer everywhere.

Each step happens before the next one costs anything:

1. The format is sniffed from the first bytes and must be one of :data:`ACCEPTED_FORMATS`; Pillow is
   then asked to try only those plugins, so a PostScript file never reaches Ghostscript and an
   unknown format is "not an image", whatever its name says.
2. Pillow reads the header only (size and mode, no pixel data).
3. ``width x height`` is checked against :func:`pixel_limit` (:data:`MAX_PIXELS`, or Pillow's own
   limit when that is lower) explicitly, and, for more than 8 bits a sample, the decoded bytes
   (pixels x bands x bytes per sample: a float or 32-bit TIFF costs four times a grey photo of its
   size) against :func:`byte_limit`.
   The checks do not go through warning filters: those are process-wide and
   ``warnings.catch_warnings`` is not thread-safe, so under concurrent requests a filter set by one
   thread could be undone by another and let a bomb through.
4. A JPEG may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, ``Image.draft``) when the
   caller says how many pixels it needs (``draft_side``); other formats cannot be decoded at reduced
   size and are reduced (``Image.reduce``, a box average) a strip at a time as they are converted in
   step 7. Only the server does: the readers decode every pixel (draft would change the pixels a
   model is trained on) and so do the Predictor and `predict`, whose landmarks and image sizes are
   in the photo's own pixels.
5. The pixels are decoded. A file that ends early is an error (Pillow's
   ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay False; decoding refuses to run when something in
   the process has switched it on). A JPEG whose scan data stops short but is still closed by an
   end-of-image marker is decoded by libjpeg with the missing blocks filled grey and only a warning
   that Pillow does not pass on; :func:`_jpeg_scan_ends_early` finds it (see there) and it is refused
   the same way.
6. The EXIF orientation is applied when it is a valid one (an integer 1-8). EXIF that Pillow cannot
   parse, or an orientation outside 1-8, is ignored: the photo is used as stored, never refused.
7. Any mode becomes 8-bit RGB (:func:`pil_to_rgb`), a strip of rows at a time, so that a large
   16-bit, float, transparent or palette image costs its decoded bytes and the RGB result, not
   several full-size float or RGBA copies (a 70 KB 16-bit grey PNG of 6000 x 6000 used about 0.9 GB).
   After a large decode the freed memory is handed back to the system (glibc's ``malloc_trim``).

Every refusal is a :class:`~fashionlens.errors.DataError` naming the file (or upload).
"""

from __future__ import annotations

import ctypes
import io
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageMode, UnidentifiedImageError

from fashionlens.errors import DataError

# Pillow format names, in the order of the user-facing list. MPO (a JPEG with extra pictures, as
# phones write them) is opened by Pillow's JPEG plugin and is a JPEG here.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
ACCEPTED_TEXT = "JPEG, PNG, WebP, GIF, BMP or TIFF"
_JPEG_FORMATS = ("JPEG", "MPO")

# The project's own decompression-bomb limit: the models take 224-448 px inputs, so 40 megapixels
# (a 7700 x 5200 photo, 120 MB as RGB) is far more than any of them uses, and far below Pillow's
# 89 M default.
MAX_PIXELS = 40_000_000
# Decoded bytes (pixels x bands x bytes per sample) of an image with more than 8 bits a sample: at most
# an 8-bit RGB photo at the pixel limit. A 16-bit grey image may have as many pixels, a float or 32-bit
# integer one three quarters of them. 8-bit images (RGBA and CMYK print files too) are bounded by pixels.
BYTES_PER_PIXEL_LIMIT = 3
# Converted to RGB this many pixels at a time (step 7); decodes past LARGE_DECODE_BYTES give their
# freed memory back to the system afterwards.
STRIP_PIXELS = 1 << 18
LARGE_DECODE_BYTES = 64 << 20

# Where the server decodes JPEGs at reduced scale: never below this many pixels on the long side,
# which is at least twice the largest model input (448 px).
SERVER_DRAFT_SIDE = 1024

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"WEBP", 8, "WEBP"),  # after b"RIFF" and the chunk size, checked below
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"II+\x00", 0, "TIFF"),  # BigTIFF
    (b"MM\x00+", 0, "TIFF"),
)
# Formats people send that we do not decode, named in the refusal so the user knows what to convert.
_REFUSED_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"%!PS", 0, "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", 0, "EPS"),
    (b"%PDF", 0, "PDF"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypheix", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"ftypavif", 4, "AVIF"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000"),
    (b"8BPS", 0, "Photoshop (PSD)"),
    (b"\x00\x00\x01\x00", 0, "Windows icon (ICO)"),
    (b"<svg", 0, "SVG"),
    (b"<?xml", 0, "XML/SVG"),
)
_SNIFF_BYTES = 16
# Pillow's names of the refused formats above, for images a caller opened with Pillow itself.
_PILLOW_NAMES = {"EPS": "PostScript/EPS", "JPEG2000": "JPEG 2000", "PSD": "Photoshop (PSD)",
                 "ICO": "Windows icon (ICO)"}

# EXIF orientation -> the transpose that shows the photo upright (EXIF 2.3, tag 0x0112).
_ORIENTATION_TAG = 0x0112
_UPRIGHT = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}

# What can go wrong inside Pillow's plugins on bad data (struct.error and IndexError come from
# malformed headers of some formats).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError,
                  ZeroDivisionError)

Source = str | Path | bytes


@dataclass(frozen=True)
class DecodedImage:
    """An upright 8-bit RGB photo and the size it has at full resolution.

    ``full_size`` differs from ``image.size`` only when the photo was decoded (JPEG) or reduced (other
    formats) at ``scale`` (``draft_side``); a decoded pixel ``(x, y)`` is then the photo's
    ``((x + 0.5) * scale - 0.5, ...)``.
    """

    image: Image.Image
    full_size: tuple[int, int]
    scale: int = 1
    format: str = ""


def pixel_limit() -> int:
    """The largest ``width * height`` decoded: :data:`MAX_PIXELS`, or Pillow's limit if lower."""
    pillow = Image.MAX_IMAGE_PIXELS
    return MAX_PIXELS if pillow is None else min(MAX_PIXELS, int(pillow))


def byte_limit() -> int:
    """The most decoded bytes (pixels x bands x bytes per sample) of an image of more than 8 bits a sample:
    an 8-bit RGB photo at :func:`pixel_limit`."""
    return BYTES_PER_PIXEL_LIMIT * pixel_limit()


def decoded_bytes(image: Image.Image) -> int:
    """What decoding ``image`` holds: pixels x bands x bytes per sample of its mode (from the header)."""
    mode = ImageMode.getmode(image.mode)
    return image.size[0] * image.size[1] * len(mode.bands) * int(mode.typestr[2:])


def release_memory() -> None:
    """Hand freed heap memory back to the system. Pillow allocates an image in 16 MB blocks that glibc
    keeps in its arenas once freed (a server that decoded 16 large images at once stayed at 2.2 GB)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None)  # the C library this process runs on (glibc has malloc_trim)
except OSError:  # pragma: no cover - no C library to load (Windows)
    _LIBC = None


def sniff_format(head: bytes) -> str | None:
    """The accepted format these first bytes start (a Pillow format name), or None."""
    for magic, offset, name in _MAGIC:
        if head[offset:offset + len(magic)] == magic and (name != "WEBP" or head[:4] == b"RIFF"):
            return name
    return None


def _describe_refused(head: bytes) -> str:
    for magic, offset, name in _REFUSED_MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return f"a {name} file"
    stripped = head.lstrip()
    if stripped and all(32 <= byte < 127 or byte in (9, 10, 13) for byte in stripped):
        return "text"
    return "unrecognised data starting with " + (head[:8].hex(" ") or "nothing")


def _refuse_unless_accepted(head: bytes, name: str) -> str:
    found = sniff_format(head)
    if found is None:
        raise DataError(f"not an image: expected {ACCEPTED_TEXT} data, found {_describe_refused(head)}",
                        path=name)
    return found


def _check_truncation_is_an_error(name: str) -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise DataError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, so a truncated file "
                        "would decode as a silently grey-filled image; fashionlens decodes only with it False "
                        "(set it back where it was switched on)", path=name)


def _stat_regular_file(path: Path) -> int:
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise DataError(f"image file not found: a symbolic link to {os.readlink(path)}, which does not exist",
                            path=path) from None
        raise DataError("image file not found (no such file)", path=path) from None
    except PermissionError:
        raise DataError("permission denied", path=path) from None
    except OSError as error:
        raise DataError(f"cannot read the image file ({error.strerror or error})", path=path) from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError("not a regular file: expected an image file", path=path)
    return info.st_size


def open_header(source: Source, name: str | Path | None = None) -> Image.Image:
    """Open ``source`` (a path or encoded bytes) and read its header only: steps 1-3 of the module.

    Returns a lazily loaded Pillow image whose pixels are not decoded yet; the caller decodes it
    (``load()``) or closes it. Raises DataError naming ``name`` (default: the path, or "<upload>").
    """
    stream: BinaryIO
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = str(name) if name is not None else "<upload>"
        if len(source) == 0:
            raise DataError("empty file (0 bytes): expected image data", path=name)
        stream = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        name = str(name) if name is not None else str(path)
        if _stat_regular_file(path) == 0:
            raise DataError("empty file (0 bytes): expected image data", path=name)
        try:
            stream = open(path, "rb")  # noqa: SIM115 - handed to Pillow, closed by decode_image() or Image.close()
        except PermissionError:
            raise DataError("permission denied", path=name) from None
        except OSError as error:
            raise DataError(f"cannot read the image file ({error.strerror or error})", path=name) from None
    try:
        head = stream.read(_SNIFF_BYTES)
        stream.seek(0)
        kind = _refuse_unless_accepted(head, name)
        try:
            image = Image.open(stream, formats=[kind])
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            # Pillow's own check, when its limit was set lower than ours (2x it raises, 1x it warns,
            # which only reaches here where warnings are errors).
            raise DataError(f"image too large to decode safely ({error}); the limit is {pixel_limit()} pixels",
                            path=name) from None
        except UnidentifiedImageError:
            raise DataError(f"not an image: the data starts like {kind} but Pillow cannot read it as one "
                            f"(corrupt or truncated header)", path=name) from None
        except _DECODE_ERRORS as error:
            raise DataError(f"corrupt or truncated image ({error})", path=name) from None
    except BaseException:
        stream.close()
        raise
    try:
        _check_size(image, name)
    except DataError:
        image.close()
        raise
    return image


def _check_size(image: Image.Image, name: str | Path) -> None:
    width, height = image.size
    limit = pixel_limit()
    if width * height > limit:
        raise DataError(f"image too large to decode safely: the header says {width}x{height} = {width * height} "
                        f"pixels, more than the limit of {limit} (possible decompression bomb)", path=name)
    if width <= 0 or height <= 0:
        raise DataError(f"corrupt image: the header says {width}x{height} pixels", path=name)
    size = decoded_bytes(image)
    if int(ImageMode.getmode(image.mode).typestr[2:]) > 1 and size > byte_limit():
        raise DataError(f"image too large to decode safely: the header says {width}x{height} pixels of mode "
                        f"{image.mode} = {size} bytes decoded, more than the limit of {byte_limit()} (possible "
                        f"decompression bomb)", path=name)


def _draft(image: Image.Image, draft_side: int | None) -> int:
    """Ask libjpeg for a reduced-scale decode keeping at least ``draft_side`` px on the long side."""
    if draft_side is None or image.format not in _JPEG_FORMATS:
        return 1
    width, height = image.size
    long_side = max(width, height)
    if long_side < 2 * draft_side:
        return 1
    wanted = (max(1, -(-width * draft_side // long_side)), max(1, -(-height * draft_side // long_side)))
    result = image.draft(None, wanted)
    if result is None:
        return 1
    _, box = result
    return max(1, round(width / box[2]))


def _reduction(size: tuple[int, int], draft_side: int | None) -> int:
    """The box-average factor (``Image.reduce``) keeping at least ``draft_side`` px on the long side."""
    long_side = max(size)
    return 1 if draft_side is None or long_side < 2 * draft_side else long_side // draft_side


def load_pixels(image: Image.Image, name: str | Path, source: Source | None = None) -> None:
    """Decode an image from :func:`open_header` (steps 5): DataError if its data is cut short or corrupt.

    ``source`` (the path or bytes it was opened from) lets a suspicious JPEG be re-checked; without
    it a JPEG whose scan ends early goes undetected.
    """
    name = str(name)
    _check_truncation_is_an_error(name)
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"image too large to decode safely ({error}); the limit is {pixel_limit()} pixels",
                        path=name) from None
    except MemoryError:
        raise DataError(f"not enough memory to decode this {image.size[0]}x{image.size[1]} image",
                        path=name) from None
    except _DECODE_ERRORS as error:
        raise DataError(f"corrupt or truncated image ({error})", path=name) from None
    if image.format in _JPEG_FORMATS and source is not None and _grey_last_block(image):
        data = source if isinstance(source, (bytes, bytearray, memoryview)) else _read_bytes(Path(source), name)
        if _jpeg_scan_ends_early(bytes(data)):
            raise DataError("corrupt or truncated image (the JPEG scan data ends early: libjpeg would fill the "
                            "rest of the picture with grey)", path=name)


def load_opened(image: Image.Image, name: str | Path) -> None:
    """Decode a PIL image that its caller opened but did not load yet, with the checks of a file.

    An image in memory (already loaded, or made with ``Image.new``/``fromarray``) is left alone.
    """
    if not isinstance(image, ImageFile.ImageFile) or not image.tile:
        return
    if image.format not in ACCEPTED_FORMATS + _JPEG_FORMATS:
        found = _PILLOW_NAMES.get(image.format, image.format)
        raise DataError(f"not an image: expected {ACCEPTED_TEXT} data, found a {found} file", path=name)
    _check_size(image, name)
    filename = getattr(image, "filename", None)
    load_pixels(image, name, filename if isinstance(filename, str) and filename else None)


def _read_bytes(path: Path, name: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read the image file ({error.strerror or error})", path=name) from None


def _grey_last_block(image: Image.Image) -> bool:
    """Whether the bottom-right pixel is the mid-grey libjpeg fills missing blocks with.

    A block whose data never arrived decodes with all coefficients zero: 128 in every channel
    (127 or 128 after the inversion of Adobe CMYK). The last block is always one of them when the
    scan stops early, so only photos with this exact pixel there need the closer look.
    """
    pixel = image.getpixel((image.width - 1, image.height - 1))
    values = pixel if isinstance(pixel, tuple) else (pixel,)
    return all(value in (127, 128) for value in values)


def _end_of_last_scan(data: bytes) -> int | None:
    """Byte offset where the entropy-coded data of the JPEG's last scan stops (at the next marker)."""
    position, size, end = 2, len(data), None
    while position + 1 < size:
        if data[position] != 0xFF:
            return end
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker == 0xD9:  # end of image
            return end
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            position += 2
            continue
        if position + 4 > size:
            return end
        segment_end = position + 2 + int.from_bytes(data[position + 2:position + 4], "big")
        if marker != 0xDA:
            position = segment_end
            continue
        scan = segment_end  # start of scan: entropy-coded data up to the next real marker
        while True:
            scan = data.find(b"\xff", scan)
            if scan < 0 or scan + 1 >= size:
                return size
            following = data[scan + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7:  # stuffed 0xFF or a restart marker
                scan += 2
            elif following == 0xFF:
                scan += 1
            else:
                break
        end = position = scan
    return end


# Bits with no long run of zeros or ones: fed to the Huffman decoder they give non-zero DC values.
_SENTINEL = bytes([0x5A, 0xA5, 0x3C, 0xC3]) * 64


def _jpeg_scan_ends_early(data: bytes) -> bool:
    """Whether libjpeg ran out of scan data before the last block of a JPEG.

    libjpeg only warns when the entropy-coded data stops before the picture is complete, and Pillow
    does not pass the warning on. So the file is decoded twice at 1/8 scale (cheap: DC only):
    as it is, and with sentinel bytes inserted where its last scan stops. A complete scan never
    reads them, so both decodes are identical; a scan that stopped early decodes them as the
    missing blocks, which then differ from the grey fill.
    """
    end = _end_of_last_scan(data)
    if end is None:
        return False
    patched = data[:end] + _SENTINEL + data[end:]
    try:
        as_is, with_sentinel = (_small_decode(blob) for blob in (data, patched))
    except _DECODE_ERRORS:
        return True
    return as_is != with_sentinel


def _small_decode(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data), formats=list(_JPEG_FORMATS)) as image:
        image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
        return image.tobytes()


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of ``image``; 1 when there is none or it is not a valid one."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - any EXIF Pillow cannot parse is ignored, by design (module doc, step 6)
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
        return 1
    return value


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned by its EXIF orientation (a valid one only; junk EXIF leaves it as stored).

    A turned image is a new one without the EXIF and XMP metadata (which still hold the
    orientation), so turning it again is a no-op: a photo read by one door and handed to another
    (``read_image`` then the Predictor) is never turned twice.
    """
    methods = _UPRIGHT.get(exif_orientation(image), ())
    if not methods:
        return image
    for method in methods:
        image = image.transpose(method)
    for key in ("exif", "xmp", "XML:com.adobe.xmp"):
        image.info.pop(key, None)
    return image


def pil_to_rgb(image: Image.Image, source: str | Path, reduce: int = 1) -> Image.Image:
    """Any PIL mode as 8-bit RGB. Transparent pixels are put on white (product photos' background).

    PIL's own ``convert("RGB")`` clips 16-bit images to white and drops alpha, keeping whatever
    colour hides under transparent pixels; this gives the readers and the Predictor the same pixels.
    ``reduce``: a box average over ``reduce x reduce`` pixels of the RGB result (``Image.reduce``).
    Converted a strip of rows at a time: each pixel's result depends on that pixel alone (and the
    reduction's boxes start at strip boundaries), so the strips give what the whole image would.
    """
    if image.mode == "RGB":
        return image.reduce(reduce) if reduce > 1 else image
    peak = _peak(image)
    width, height = image.size
    rows = max(reduce, STRIP_PIXELS // width // reduce * reduce)
    if rows >= height and reduce == 1:
        return _strip_to_rgb(image, source, peak)
    out = Image.new("RGB", (-(-width // reduce), -(-height // reduce)))
    for top in range(0, height, rows):
        strip = _strip_to_rgb(image.crop((0, top, width, min(height, top + rows))), source, peak)
        out.paste(strip.reduce(reduce) if reduce > 1 else strip, (0, top // reduce))
    return out


def _peak(image: Image.Image) -> float:
    """The value that becomes 255 for a 16-bit, 32-bit or float image (none for other modes)."""
    if image.mode.startswith("I;16"):
        return 65535.0
    if image.mode == "I":
        return 65535.0 if image.getextrema()[1] > 255 else 255.0
    if image.mode == "F":
        highest = np.nan
        for top in range(0, image.height, max(1, STRIP_PIXELS // image.width)):
            strip = np.asarray(image.crop((0, top, image.width, top + max(1, STRIP_PIXELS // image.width))))
            highest = np.fmax(highest, np.fmax.reduce(strip, axis=None))
        return 1.0 if float(highest) <= 1.0 else 255.0
    return 255.0


def _strip_to_rgb(image: Image.Image, source: str | Path, peak: float) -> Image.Image:
    if image.mode.startswith("I;16"):  # v / 65535 * 255 = v / 257, rounded: in integers (a quarter of the time)
        grey = ((np.asarray(image).astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode in ("I", "F"):
        array = np.asarray(image).astype(np.float64)
        grey = np.clip(np.nan_to_num(array) / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise DataError(f"cannot convert image mode {image.mode!r} to RGB ({error})", path=source) from error


def _close_file(image: Image.Image) -> None:
    """Close the file behind ``image`` but keep its decoded pixels (``Image.close`` drops them)."""
    stream = getattr(image, "fp", None)
    if stream is not None:
        stream.close()
        image.fp = None


def decode_image(source: Source, name: str | Path | None = None, draft_side: int | None = None) -> DecodedImage:
    """Decode a path or encoded bytes to an upright RGB photo (every step of the module docstring).

    ``draft_side``: decode a large JPEG at reduced scale, keeping at least this many pixels on its
    long side (None: every pixel). Raises DataError naming ``name`` (default: the path, or "<upload>").
    """
    if name is None:
        name = "<upload>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    name = str(name)
    image = open_header(source, name)
    try:
        full_width, full_height = image.size
        kind = image.format or ""
        scale = _draft(image, draft_side)
        load_pixels(image, name, source)
        large = decoded_bytes(image) >= LARGE_DECODE_BYTES
        reduce = 1 if kind in _JPEG_FORMATS else _reduction(image.size, draft_side)
        orientation = exif_orientation(image)
        rgb = pil_to_rgb(upright(image), name, reduce)
        scale *= reduce
    finally:
        _close_file(image)
    if rgb is not image:
        image.close()  # its pixels: the RGB result is a new image
    if large:
        release_memory()
    if orientation in (5, 6, 7, 8):
        full_width, full_height = full_height, full_width
    return DecodedImage(rgb, (full_width, full_height), scale, kind)
