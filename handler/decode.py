"""Image bytes to an upright RGB picture: identified by content, size-checked before decoding, any mode.

Used by the TorchServe handler (so it is packed into the model archive and imports only torch, torchvision,
Pillow, pillow-heif and numpy) and by the training data sets, so a photo is seen the same way in training and
in serving.

HEIC/HEIF photos (iPhones' default) are opened by pillow-heif (libheif), AVIF ones by Pillow itself. Both give
their size from the file's header boxes (``ispe``) before any pixel is decoded, so the pixel limit applies as
for every format. Colour profiles (ICC, and HEIF's nclx) are not applied, as for JPEG: the values are used as
the file stores them, converted to 8-bit RGB.

For serving, ``decode_for_model`` shrinks a large upload to the model's input size while it is still 8-bit
(a JPEG is decoded at 1/2, 1/4 or 1/8 of its size by the codec itself), so the memory an upload costs follows
the model's input, not the photo: the model would shrink it to that size anyway.

Each failure is an ``ImageError`` carrying the HTTP status and the short error code a handler answers with.
Truncated files fail: this module relies on Pillow's default ``ImageFile.LOAD_TRUNCATED_IMAGES = False``.
"""

from __future__ import annotations

import functools
import io
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import ExifTags, Image, UnidentifiedImageError

# Pillow formats we decode ("JPEG" also opens multi-picture MPO files: their first picture; "HEIF" is
# pillow-heif's, HEIC included). Everything else Pillow knows (PSD, EPS, TGA, JPEG 2000, ...) is refused with
# 415 so that serving behaves the same whatever optional codecs the machine happens to have. AVIF comes before
# HEIF: both claim files of the generic brand "mif1", and Pillow's AVIF plugin passes on HEVC-coded ones
# cleanly, while libheif here has no AV1 decoder and would fail on an AVIF only when decoding it.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO", "AVIF", "HEIF")
_ACCEPTED = ", ".join(ACCEPTED_FORMATS)  # as error messages list them

# Formats Pillow cannot open but that clients plausibly send: recognised so they get 415, not 400.
_FOREIGN_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"%PDF-", "PDF"),
    (0, b"%!PS", "PostScript"),
    (0, b"\xff\x0a", "JPEG XL"),
    (4, b"JXL ", "JPEG XL"),
    (0, b"PK\x03\x04", "ZIP"),
    (0, b"\x1f\x8b", "gzip"),
)

# An ISO base media file (HEIF, AVIF, MP4, QuickTime...) starts with an "ftyp" box: a major brand and a list of
# compatible brands. A still picture is named by the first family any of its brands belongs to (an AVIF or HEIC
# photo also lists the generic HEIF brands "mif1"/"miaf"); a file without such a brand is a video or other media.
_ISO_BMFF_STILL_FAMILIES: tuple[tuple[str, frozenset[bytes]], ...] = (
    ("AVIF", frozenset({b"avif"})),
    ("HEIC", frozenset({b"heic", b"heix", b"heim", b"heis"})),
    ("HEIF", frozenset({b"mif1", b"mif2", b"miaf"})),
)
# Major brands of image sequences (ISO/IEC 23008-12: HEVC "hevc"..., generic "msf1"; AVIF "avis"): a clip of
# inter-coded frames, an animation or a burst, not a photo, so refused like a video. (A HEIF collection of
# several stills is a still file: its primary picture is decoded, as an iPhone's photo with its extra images.)
_ISO_BMFF_SEQUENCE_BRANDS = frozenset({b"avis", b"msf1", b"hevc", b"hevx", b"hevm", b"hevs"})
_FTYP_HEADER_SIZE = 16  # box size, "ftyp", major brand, minor version; the compatible brands follow
_ISO_BMFF_HEAD_SIZE = 1024  # as much of the ftyp box as is read: its brands come long before this

_WHITE = (255, 255, 255)
_UINT16_MAX = 65535

# Pillow decodes the largest picture of an .ico file while opening it: each picture's size is read from its
# own header (PNG or BMP) first.
_ICO_SIGNATURE = b"\x00\x00\x01\x00"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ICO_HEADER_SIZE = 6  # reserved, type, picture count: 2 bytes each
_ICO_ENTRY_SIZE = 16
_BMP_CORE_HEADER_SIZE = 12

# Modes Pillow resamples as colours; others are converted first ("1" and palettes would be resized by
# nearest neighbour, 16-bit gray cannot be resized at all).
_RESAMPLED_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F"})
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageError(ValueError):
    """An upload that cannot become an image; ``status`` is the HTTP status, ``error`` a short code."""

    status: int = 400
    error: str = "bad_image"


class EmptyImageError(ImageError):
    status = 400
    error = "empty"


class NotAnImageError(ImageError):
    """Unreadable, truncated, corrupt, or not image data at all."""

    status = 400
    error = "not_an_image"


class UnsupportedImageFormatError(ImageError):
    """A recognised file format (or colour mode) that this service does not accept."""

    status = 415
    error = "unsupported_format"


class TooManyPixelsError(ImageError):
    status = 413
    error = "too_many_pixels"


@dataclass(frozen=True)
class ModelInputSize:
    """The resize rule of torchvision's detection transform (``GeneralizedRCNNTransform``): the short side
    becomes ``min_size`` unless the long side would then pass ``max_size``, which it then becomes. Its one
    derivation: decoding shrinks uploads by it, and ``Tagger`` pads thin images by it (``Tagger.input_size``)."""

    min_size: int
    max_size: int

    def scale(self, width: int, height: int) -> float:
        """The factor the model resizes a ``width`` x ``height`` image by."""
        return min(self.min_size / min(width, height), self.max_size / max(width, height))

    def shrunk(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of a ``width`` x ``height`` image shrunk to the model's size; never enlarged."""
        scale = min(1.0, self.scale(width, height))
        return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True)
class ModelImage:
    """One image for the model (``Tagger.detect``), as ``decode_for_model`` makes it from an upload.

    Args:
        pixels: ``[3, h, w]``, upright RGB, uint8 or float in [0, 1], at most the model's input size.
        width / height: the size its boxes are reported in: the upright upload's own (larger when it was shrunk).
    """

    pixels: torch.Tensor
    width: int
    height: int

    @classmethod
    def of(cls, pixels: torch.Tensor) -> ModelImage:
        """An image whose boxes are reported in its own pixels."""
        return cls(pixels=pixels, width=pixels.shape[-1], height=pixels.shape[-2])


@dataclass(frozen=True)
class _Upright:
    """``_decode``'s picture: upright, RGB; its upright upload's size, and the upright size it is shrunk to."""

    image: Image.Image
    width: int
    height: int
    shrunk: tuple[int, int]  # (width, height)


def decode_image(data: bytes | bytearray, *, max_pixels: int | None = None) -> Image.Image:
    """Decodes image bytes into an upright RGB image (EXIF orientation applied, first frame of animations).

    Args:
        data: the encoded file; its format is read from the content, never from a name.
        max_pixels: refuse images whose width*height (read from the header, before decoding) exceeds this.
            Pillow's own safety limit (2 * ``Image.MAX_IMAGE_PIXELS``) applies too, with the same error.

    Raises:
        EmptyImageError, NotAnImageError, UnsupportedImageFormatError, TooManyPixelsError.
    """
    return _decode(data, max_pixels=max_pixels, fit=None).image


def decode_for_model(
    data: bytes | bytearray, *, fit: ModelInputSize, max_pixels: int | None = None
) -> ModelImage:
    """Decodes image bytes as ``decode_image`` does, shrunk in 8 bits to the size the model resizes it to.

    A JPEG is decoded at the smallest of 1/1, 1/2, 1/4, 1/8 of its size that is still at least that size
    (Pillow's draft mode), then resized once; other formats are decoded whole, then resized once. Images the
    model would enlarge are left as they are. The EXIF orientation is applied after shrinking (for an RGB
    picture within twice the size, before its resize, which torch does: see ``_shrink_rgb``).

    Args:
        data: the encoded file.
        fit: the model's resize rule (``Tagger.input_size``).
        max_pixels: as in ``decode_image``.

    Raises:
        EmptyImageError, NotAnImageError, UnsupportedImageFormatError, TooManyPixelsError.
    """
    upright = _decode(data, max_pixels=max_pixels, fit=fit)
    pixels = TF.pil_to_tensor(upright.image)
    width, height = upright.shrunk
    if tuple(pixels.shape[-2:]) != (height, width):
        pixels = _shrink_rgb(pixels, (height, width))
    return ModelImage(pixels=pixels, width=upright.width, height=upright.height)


def _shrink_rgb(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 ``[3, H, W]`` pixels to ``size`` (height, width), as Pillow's
    BILINEAR does, in about half of Pillow's time: 1.0 against 2.3 ms for the bench's photos on one core."""
    return torch.nn.functional.interpolate(
        pixels.unsqueeze(0), size=size, mode="bilinear", antialias=True, align_corners=False
    ).squeeze(0)


def load_image_file(path: str | os.PathLike, *, max_pixels: int | None = None) -> Image.Image:
    """Reads an image file and decodes it by content (a PNG named .jpg works); see ``decode_image``.

    Args:
        path: the image file.
        max_pixels: as in ``decode_image``.
    """
    with open(path, "rb") as file:
        return decode_image(file.read(), max_pixels=max_pixels)


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Returns (width, height) of an image file as ``decode_image`` would return it, reading only the header.

    EXIF orientations 5 to 8 swap width and height, as they do after decoding.

    Args:
        path: the image file.

    Raises:
        EmptyImageError, NotAnImageError, UnsupportedImageFormatError: as ``decode_image`` would.
    """
    with open(path, "rb") as file:
        if not file.read(1):
            raise EmptyImageError("the image is empty (0 bytes)")
        file.seek(0)
        image = _open(file, max_pixels=None)
        width, height = image.size
        if _exif_orientation(image) in (5, 6, 7, 8):
            return height, width
        return width, height


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """Converts a picture to a float tensor [3, H, W] with values in 0..1 (other modes converted to RGB first).

    Args:
        image: a Pillow image, usually from ``decode_image``.
    """
    return TF.to_tensor(_to_rgb(image))


def _decode(data: bytes | bytearray, *, max_pixels: int | None, fit: ModelInputSize | None) -> _Upright:
    """The upright RGB picture. With ``fit``, it is shrunk towards the model's input size: a JPEG by the codec
    (draft mode), then by Pillow, except an RGB picture within twice that size (a drafted colour JPEG, or a
    smaller RGB PNG, WebP...): it stays as it is, and ``decode_for_model`` finishes it in torch. A picture far
    over the size (a large PNG) is shrunk here, so its full-size copy never becomes a tensor."""
    if not data:
        raise EmptyImageError("the image is empty (0 bytes)")
    image = _open(io.BytesIO(data), max_pixels=max_pixels)
    width, height = image.size
    # The size as stored; the scale depends on the short and the long side only, so turned upright (below)
    # it is the upright picture's.
    target = fit.shrunk(width, height) if fit is not None else (width, height)
    try:
        if target != image.size:
            image.draft(None, target)  # JPEG only: the codec decodes at a reduced size of at least `target`
        image.load()
        orientation = _exif_orientation(image)
        if target != image.size and (image.mode != "RGB" or max(image.size) > 2 * max(target)):
            image = _resampleable(image).resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
        if orientation in _UPRIGHT:
            image = image.transpose(_UPRIGHT[orientation])
            if orientation >= 5:
                width, height, target = height, width, target[::-1]
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise NotAnImageError(
            f"the {image.format} image is corrupt or truncated and cannot be decoded ({exc})"
        ) from None
    upright = _to_rgb(image)
    upright.info.pop("exif", None)  # the orientation is applied: nothing may apply it again
    return _Upright(image=upright, width=width, height=height, shrunk=target)


def _resampleable(image: Image.Image) -> Image.Image:
    """The image in a mode that Pillow resizes by interpolating colours (see ``_RESAMPLED_MODES``)."""
    if image.mode in _RESAMPLED_MODES:
        return image
    if image.mode.startswith("I;16"):
        return image.convert("I")  # the values stay 0..65535; ``_to_rgb`` scales them to 8 bits
    if image.mode in ("P", "PA"):
        return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    return image.convert("L" if image.mode == "1" else "RGB")


@functools.cache
def register_heif_opener() -> None:
    """Lets Pillow open HEIF/HEIC files through pillow-heif, once per process. ``_open`` calls it, so only code
    that decodes images loads libheif (7 ms and 3 MiB on first use, on a 2-core AMD EPYC VM).

    A HEIF photo's thumbnails, depth maps and auxiliary images are left unread: with thumbnails, ``draft`` would
    hand over a separately coded, smaller picture instead of the photo, which training never sees.
    """
    import pillow_heif  # here, not at the top: importing this module (for ImageError, say) loads no codec

    pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)


def _open(source: BinaryIO, *, max_pixels: int | None) -> Image.Image:
    """Identifies the format from the content and checks the pixel count; decodes no pixels."""
    if max_pixels is not None:
        _check_ico_pictures(source, max_pixels=max_pixels)
    iso_family = _iso_media_still_family(source)
    register_heif_opener()
    try:
        image = Image.open(source, formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError:
        raise TooManyPixelsError(
            f"the image has more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels (the decoder's safety limit)"
        ) from None
    except UnidentifiedImageError:
        claimed = iso_family or _accepted_format_by_signature(source)
        if claimed is not None:
            raise NotAnImageError(f"the {claimed} image header is truncated or corrupt") from None
        foreign = _identify_foreign_format(source)
        if foreign is not None:
            raise UnsupportedImageFormatError(f"{foreign} files are not supported; send one of: {_ACCEPTED}") from None
        raise NotAnImageError(f"the data is not a readable image (supported formats: {_ACCEPTED})") from None
    except Exception as exc:  # the header of a known format ends early or is damaged: OSError, EOFError, ...
        raise NotAnImageError(f"the image header is truncated or corrupt ({exc})") from None
    if image.format == "AVIF" and image.n_frames > 1:  # a sequence under a still picture's major brand ("mif1")
        raise _image_sequence_error(f"this AVIF file holds {image.n_frames} frames")
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise TooManyPixelsError(
            f"the image is {width}x{height} = {width * height:,} pixels, more than the limit of {max_pixels:,}"
        )
    return image


def _check_ico_pictures(source: BinaryIO, *, max_pixels: int) -> None:
    """Refuses an .ico file holding a picture over ``max_pixels``, before Pillow opens (and decodes) it.

    Each directory entry's own width and height are one byte each (at most 256); the PNG or BMP picture it
    points at says its real size, and that is what Pillow decodes.
    """
    source.seek(0)
    if source.read(len(_ICO_SIGNATURE)) != _ICO_SIGNATURE:
        source.seek(0)
        return
    data = _ICO_SIGNATURE + source.read()
    source.seek(0)
    if len(data) < _ICO_HEADER_SIZE:
        return  # a truncated header: Pillow refuses the file when it opens it
    (count,) = struct.unpack_from("<H", data, 4)
    for entry in range(count):
        start = _ICO_HEADER_SIZE + entry * _ICO_ENTRY_SIZE
        if start + _ICO_ENTRY_SIZE > len(data):
            return  # a truncated directory: Pillow refuses the file when it opens it
        (offset,) = struct.unpack_from("<I", data, start + 12)
        picture = data[offset : offset + 24]
        if picture.startswith(_PNG_SIGNATURE) and len(picture) == 24:
            width, height = struct.unpack_from(">II", picture, 16)  # the IHDR chunk
        elif len(picture) >= 12 and struct.unpack_from("<I", picture)[0] == _BMP_CORE_HEADER_SIZE:
            width, height = struct.unpack_from("<HH", picture, 4)
            height //= 2  # a BMP in an icon counts its transparency mask in its height
        elif len(picture) >= 12:
            width, height = (abs(v) for v in struct.unpack_from("<ii", picture, 4))
            height //= 2
        else:
            continue  # points outside the file: Pillow refuses it
        if width * height > max_pixels:
            raise TooManyPixelsError(
                f"the ICO file holds a {width}x{height} = {width * height:,} pixel picture, more than the limit "
                f"of {max_pixels:,}"
            )


def _accepted_format_by_signature(source: BinaryIO) -> str | None:
    """The accepted format whose signature the data starts with (Pillow's own check of each plugin), if any."""
    source.seek(0)
    head = source.read(16)  # as much as Pillow's signature checks read
    if len(head) < 2:  # no signature is shorter (PPM's check indexes the second byte)
        return None
    Image.init()
    for name in ACCEPTED_FORMATS:
        accept = Image.OPEN[name][1]
        if accept is not None and accept(head) is True:  # WebP's check answers a text when WebP is missing
            return name
    return None


def _identify_foreign_format(source: BinaryIO) -> str | None:
    """Names a format we do not accept found in the data: known signatures first, then Pillow's other formats."""
    source.seek(0)
    head = source.read(1024)
    for offset, signature, name in _FOREIGN_SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return name
    if _looks_like_svg(head):
        return "SVG"
    # Only plugins that check a signature: the others (TGA, ...) would claim random bytes.
    Image.init()
    signed = [name for name, (_, accept) in Image.OPEN.items() if accept is not None]
    source.seek(0)
    try:
        with Image.open(source, formats=signed) as image:
            return image.format
    except Exception:  # not identified by any plugin, or a plugin failed on the header: not an image to us
        return None


def _iso_media_still_family(source: BinaryIO) -> str | None:
    """The still-picture family ("AVIF", "HEIC" or "HEIF") of an ISO base media file, from the brands of its
    "ftyp" box (see ``_ISO_BMFF_STILL_FAMILIES``), before any plugin parses it; None for other data.

    Raises:
        UnsupportedImageFormatError: an image sequence, or a file without a still picture (MP4, QuickTime...).
        NotAnImageError: the ftyp box is cut short or malformed.
    """
    source.seek(0)
    head = source.read(_ISO_BMFF_HEAD_SIZE)
    source.seek(0)
    if head[4:8] != b"ftyp":
        return None
    (box_size,) = struct.unpack_from(">I", head)
    if box_size < _FTYP_HEADER_SIZE or len(head) < min(box_size, _ISO_BMFF_HEAD_SIZE):
        raise NotAnImageError("the ISO media (HEIF, AVIF, MP4...) header is truncated or corrupt")
    major = head[8:12]
    compatible = head[_FTYP_HEADER_SIZE:box_size]
    brands = {major, *(compatible[i : i + 4] for i in range(0, len(compatible) - 3, 4))}
    if major in _ISO_BMFF_SEQUENCE_BRANDS:
        raise _image_sequence_error(f"this file's major brand is {major.decode('latin-1')!r}")
    for family, family_brands in _ISO_BMFF_STILL_FAMILIES:
        if brands & family_brands:
            return family
    raise UnsupportedImageFormatError(
        f"ISO media files without a still picture (major brand {major.decode('latin-1')!r}: MP4, QuickTime, ...) "
        f"are not supported; send one of: {_ACCEPTED}"
    )


def _image_sequence_error(evidence: str) -> UnsupportedImageFormatError:
    """The refusal of an image sequence (animated AVIF, HEIF clip); ``evidence`` says how it was recognised."""
    return UnsupportedImageFormatError(
        f"image sequences (animated AVIF, HEIF clips) are not supported: {evidence}; send a still photo "
        f"({_ACCEPTED})"
    )


def _looks_like_svg(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text)


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 to 8); 1 when there is none or the EXIF block cannot be read (phones and editors
    write malformed ones: the pixels are still good, so they are used as they are stored). 1 for HEIF: libheif
    turns the picture by the file's own irot/imir boxes, which HEIF readers follow instead of EXIF's (an
    iPhone writes both), and its size is the turned one."""
    if image.format == "HEIF":
        return 1
    # A PNG's getexif() decodes the pixels to look for an eXIf chunk after the image data; reading only the
    # header (not loaded yet), such a (rare) PNG counts as unrotated.
    if image.format == "PNG" and "exif" not in image.info and image.tile:
        return 1
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # Pillow's EXIF parser raises SyntaxError ("not a TIFF file"), struct.error, ValueError, ...
        return 1
    return orientation if isinstance(orientation, int) else 1


def _to_rgb(image: Image.Image) -> Image.Image:
    """Converts any Pillow mode to RGB: transparency composited on white, high bit depths scaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale (PNG/TIFF; older Pillow opens it as "I"): 0..65535 maps to 0..255.
        values = np.asarray(image, dtype=np.float64) * (255.0 / _UINT16_MAX)
        return _gray_to_rgb(values)
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        # Floating-point images are usually normalised to 0..1; anything larger is taken as 0..255 already.
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        return _gray_to_rgb(values)
    try:
        if "A" in image.mode or "a" in image.mode or "transparency" in image.info:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, _WHITE + (255,))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError:
        raise UnsupportedImageFormatError(f"images in colour mode {image.mode} are not supported") from None


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")
