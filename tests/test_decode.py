"""Image decoding: every Pillow mode to RGB with the right values, EXIF orientation, limits and error statuses."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

import handler.decode as decode_module
from handler.decode import (
    ACCEPTED_FORMATS,
    EmptyImageError,
    ImageError,
    NotAnImageError,
    TooManyPixelsError,
    ModelImage,
    ModelInputSize,
    UnsupportedImageFormatError,
    decode_for_model,
    decode_image,
    image_to_tensor,
    load_image_file,
    read_image_size,
    register_heif_opener,
)

register_heif_opener()  # the tests write HEIF files through Pillow too
RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def pixels(image: Image.Image) -> list[tuple[int, int, int]]:
    assert image.mode == "RGB"
    return list(image.getdata())


def left_red_right_blue(width: int = 40, height: int = 20) -> Image.Image:
    image = Image.new("RGB", (width, height), RED)
    image.paste(BLUE, (width // 2, 0, width, height))
    return image


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def with_png_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrites the IHDR of a PNG to claim another size (valid CRC), leaving the tiny pixel data as it is."""
    ihdr = png[12:29]  # chunk type + 13 data bytes
    patched = ihdr[:4] + struct.pack(">II", width, height) + ihdr[12:]
    return png[:12] + patched + struct.pack(">I", zlib.crc32(patched)) + png[33:]


# --- modes -----------------------------------------------------------------------------------------------------


def test_rgb_jpeg_and_png_decode_to_the_same_pixels():
    image = left_red_right_blue()
    png = decode_image(encode(image, "PNG"))
    assert png.size == (40, 20) and png.getpixel((0, 0)) == RED and png.getpixel((39, 19)) == BLUE
    jpeg = decode_image(encode(image, "JPEG", quality=95))
    assert jpeg.mode == "RGB" and jpeg.size == (40, 20)
    assert np.abs(np.asarray(jpeg, dtype=int)[:, :15] - RED).max() < 10


def test_grayscale_and_bilevel_become_equal_rgb_channels():
    gray = Image.new("L", (3, 2), 100)
    assert pixels(decode_image(encode(gray, "PNG"))) == [(100, 100, 100)] * 6
    bilevel = Image.new("1", (2, 2), 0)
    bilevel.putpixel((1, 1), 1)
    assert pixels(decode_image(encode(bilevel, "PNG"))) == [BLACK, BLACK, BLACK, WHITE]


def test_rgba_is_composited_on_white():
    image = Image.new("RGBA", (3, 1))
    image.putdata([(255, 0, 0, 255), (255, 0, 0, 0), (0, 0, 0, 128)])
    opaque, clear, half = pixels(decode_image(encode(image, "PNG")))
    assert opaque == RED and clear == WHITE
    assert all(abs(channel - 127) <= 1 for channel in half)


def test_gray_with_alpha_is_composited_on_white():
    image = Image.new("LA", (2, 1))
    image.putdata([(0, 255), (0, 0)])
    assert pixels(decode_image(encode(image, "PNG"))) == [BLACK, WHITE]


def test_palette_with_and_without_transparency():
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([0, 255, 0] + [0, 0, 255] + [0, 0, 0] * 254)
    palette_image.putdata([0, 1])
    assert pixels(decode_image(encode(palette_image, "PNG"))) == [GREEN, BLUE]
    assert pixels(decode_image(encode(palette_image, "PNG", transparency=0))) == [WHITE, BLUE]
    assert pixels(decode_image(encode(palette_image, "GIF", transparency=1))) == [GREEN, WHITE]


def test_cmyk_converts_to_rgb():
    image = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    assert pixels(decode_image(encode(image, "TIFF"))) == [RED] * 4
    black = Image.new("CMYK", (8, 8), (0, 0, 0, 255))
    from_jpeg = decode_image(encode(black, "JPEG", quality=95))
    assert np.asarray(from_jpeg).max() < 10


def test_16_bit_gray_is_scaled_to_8_bits():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    source = Image.fromarray(values)
    assert source.mode == "I;16"
    decoded = decode_image(encode(source, "PNG"))
    assert [p[0] for p in pixels(decoded)] == [0, 1, 128, 255]
    assert Image.open(io.BytesIO(encode(source, "TIFF"))).mode == "I;16"
    assert [p[0] for p in pixels(decode_image(encode(source, "TIFF")))] == [0, 1, 128, 255]


def test_32_bit_integer_gray_is_taken_as_16_bit_range():
    source = Image.fromarray(np.array([[0, 65535, 70000, -5]], dtype=np.int32))
    assert source.mode == "I"
    assert [p[0] for p in pixels(decode_image(encode(source, "TIFF")))] == [0, 255, 255, 0]


def test_float_gray_in_0_1_is_scaled_and_larger_values_are_taken_as_0_255():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    assert [p[0] for p in pixels(decode_image(encode(unit, "TIFF")))] == [0, 128, 255]
    wide = Image.fromarray(np.array([[0.0, 100.0, 300.0]], dtype=np.float32))
    assert [p[0] for p in pixels(decode_image(encode(wide, "TIFF")))] == [0, 100, 255]


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (4, 4), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert pixels(decode_image(data)) == [RED] * 16


@pytest.mark.parametrize("fmt", ["BMP", "WEBP", "PPM", "ICO"])
def test_other_accepted_formats(fmt):
    params = {"lossless": True} if fmt == "WEBP" else {}
    decoded = decode_image(encode(Image.new("RGB", (16, 16), GREEN), fmt, **params))
    assert decoded.size == (16, 16) and decoded.getpixel((8, 8)) == GREEN


# --- EXIF orientation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_6_turns_clockwise(fmt):
    data = encode(left_red_right_blue(), fmt, exif=exif_with_orientation(6))
    upright = decode_image(data)
    assert upright.size == (20, 40)
    # Orientation 6 is shown turned 90 degrees clockwise: the stored left half ends up on top.
    assert np.abs(np.asarray(upright, dtype=int)[2, 10] - RED).max() < 20
    assert np.abs(np.asarray(upright, dtype=int)[37, 10] - BLUE).max() < 20
    assert upright.getexif().get(0x0112, 1) == 1


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_8_turns_counter_clockwise(fmt):
    upright = decode_image(encode(left_red_right_blue(), fmt, exif=exif_with_orientation(8)))
    assert upright.size == (20, 40)
    assert np.abs(np.asarray(upright, dtype=int)[2, 10] - BLUE).max() < 20
    assert np.abs(np.asarray(upright, dtype=int)[37, 10] - RED).max() < 20


def test_exif_orientation_3_keeps_the_size_and_turns_upside_down():
    upright = decode_image(encode(left_red_right_blue(), "PNG", exif=exif_with_orientation(3)))
    assert upright.size == (40, 20) and upright.getpixel((0, 0)) == BLUE


def test_read_image_size_reports_the_upright_size_from_the_header(tmp_path):
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(encode(left_red_right_blue(), "JPEG", exif=exif_with_orientation(6)))
    plain = tmp_path / "plain.png"
    plain.write_bytes(encode(left_red_right_blue(), "PNG"))
    assert read_image_size(rotated) == (20, 40) == load_image_file(rotated).size
    assert read_image_size(plain) == (40, 20)


def with_png_chunk(png: bytes, chunk_type: bytes, data: bytes, *, before: bytes = b"IDAT") -> bytes:
    """Inserts a chunk (valid CRC) in a PNG just before its first ``before`` chunk."""
    at = png.index(before) - 4  # the length field in front of the chunk type
    chunk = struct.pack(">I", len(data)) + chunk_type + data + struct.pack(">I", zlib.crc32(chunk_type + data))
    return png[:at] + chunk + png[at:]


def malformed_exif_png(image: Image.Image, *, before: bytes = b"IDAT") -> bytes:
    """A PNG whose eXIf chunk holds bytes that are not a TIFF structure, as some phones and editors write."""
    return with_png_chunk(encode(image, "PNG"), b"eXIf", b"garbage, not an EXIF block", before=before)


def test_a_malformed_exif_block_means_orientation_1(tmp_path):
    image = left_red_right_blue()
    uploads = {
        "PNG, eXIf before the pixels": malformed_exif_png(image),
        "PNG, eXIf after the pixels": malformed_exif_png(image, before=b"IEND"),
        "WebP": encode(image, "WEBP", lossless=True, exif=b"garbage, not an EXIF block"),
    }
    for kind, data in uploads.items():
        stored = Image.open(io.BytesIO(data))
        stored.load()
        with pytest.raises(SyntaxError, match="not a TIFF file"):  # what Pillow makes of such a block
            stored.getexif()
        assert pixels(decode_image(data)) == pixels(image), kind
        assert decode_for_model(data, fit=ModelInputSize(min_size=20, max_size=40)).width == 40, kind
        path = tmp_path / "upload"
        path.write_bytes(data)
        assert read_image_size(path) == (40, 20), kind


# --- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", bytearray()])
def test_empty_data_is_400_empty(data):
    with pytest.raises(EmptyImageError) as info:
        decode_image(data)
    assert (info.value.status, info.value.error) == (400, "empty")
    assert "empty" in str(info.value)


def test_random_bytes_are_400_not_an_image():
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for data in (noise, b"hello, this is text", bytearray(noise)):
        with pytest.raises(NotAnImageError) as info:
            decode_image(data)
        assert (info.value.status, info.value.error) == (400, "not_an_image")
        assert "not a readable image" in str(info.value)


def test_truncated_jpeg_is_400_not_an_image():
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    jpeg = encode(Image.fromarray(noise), "JPEG", quality=90)
    assert decode_image(jpeg).size == (64, 64)
    with pytest.raises(NotAnImageError) as info:
        decode_image(jpeg[: len(jpeg) // 2])
    assert info.value.status == 400 and "truncated" in str(info.value)


def test_jpeg_cut_inside_its_header_is_400_not_an_image():
    jpeg = encode(Image.new("RGB", (64, 64), RED), "JPEG")
    for cut in (3, 100, 300):
        with pytest.raises(NotAnImageError):
            decode_image(jpeg[:cut])


def test_corrupt_png_pixel_data_is_400():
    png = bytearray(encode(Image.new("RGB", (32, 32), RED), "PNG"))
    idat = png.index(b"IDAT")
    png[idat + 6 : idat + 12] = b"\x00" * 6  # break the compressed stream (and the chunk CRC)
    with pytest.raises(NotAnImageError):
        decode_image(bytes(png))


@pytest.mark.parametrize(
    "data, name",
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "PDF"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
    ],
)
def test_known_foreign_formats_are_415(data, name):
    with pytest.raises(UnsupportedImageFormatError) as info:
        decode_image(data)
    assert (info.value.status, info.value.error) == (415, "unsupported_format")
    assert str(info.value).startswith(f"{name} files are not supported") and "JPEG" in str(info.value)


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    """The "ftyp" box an ISO base media file starts with, followed by the start of a "meta" box."""
    box = b"ftyp" + major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return struct.pack(">I", 4 + len(box)) + box + b"\x00\x00\x00\x21meta\x00\x00\x00\x00"


SEQUENCE = "image sequences (animated AVIF, HEIF clips) are not supported: this file's major brand is"
VIDEO = "ISO media files without a still picture (major brand"


@pytest.mark.parametrize(
    "data, status, message",
    [
        # Still pictures whose header boxes are missing: a damaged file of the family its brands name.
        (ftyp(b"heic", b"mif1", b"heic"), 400, "the HEIC image header is truncated or corrupt"),  # an iPhone's
        (ftyp(b"heis", b"mif1", b"heis"), 400, "the HEIC image header is truncated or corrupt"),  # scalable HEVC
        (ftyp(b"mif1", b"mif1", b"heic"), 400, "the HEIC image header is truncated or corrupt"),  # codec: compatible
        (ftyp(b"mif1", b"mif1", b"miaf"), 400, "the HEIF image header is truncated or corrupt"),
        (ftyp(b"mif1", b"mif1", b"avif"), 400, "the AVIF image header is truncated or corrupt"),
        (ftyp(b"avif", b"avif", b"mif1", b"miaf"), 400, "the AVIF image header is truncated or corrupt"),
        (ftyp(b"heic", b"mif1", b"heic")[:10], 400, "the ISO media (HEIF, AVIF, MP4...) header is truncated"),
        # Image sequences and videos, refused by their brands before any parsing.
        (ftyp(b"avis", b"avif", b"avis", b"msf1"), 415, f"{SEQUENCE} 'avis'"),  # an animated AVIF
        (ftyp(b"msf1", b"msf1", b"hevc"), 415, f"{SEQUENCE} 'msf1'"),
        (ftyp(b"hevx", b"msf1", b"hevx"), 415, f"{SEQUENCE} 'hevx'"),
        (ftyp(b"isom", b"isom", b"mp41"), 415, f"{VIDEO} 'isom': MP4, QuickTime, ...) are not supported"),
        (ftyp(b"qt  ", b"qt  "), 415, f"{VIDEO} 'qt  '"),
    ],
    ids=lambda value: f"{value[8:12].decode()}({value[16:value[3]].decode()})" if isinstance(value, bytes) else "",
)
def test_iso_media_files_are_answered_by_their_brands(data, status, message):
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert info.value.status == status and str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize("fmt", ACCEPTED_FORMATS)
def test_every_cut_of_an_accepted_file_is_an_image_error(fmt):
    """Whatever Pillow raises on a damaged file becomes an ImageError: nothing reaches a caller's catch-all."""
    params = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(left_red_right_blue(16, 8), fmt, exif=exif_with_orientation(6), **params)
    for cut in range(1, min(len(data), 120)):
        try:
            decode_image(data[:cut], max_pixels=1_000)
        except ImageError as refusal:
            assert refusal.status == 400 and str(refusal), (fmt, cut)


def test_a_file_cut_inside_its_signature_header_names_its_format():
    for data, name in ((b"\x00\x00\x01\x00", "ICO"), (b"\x00\x00\x01\x00\x01", "ICO"), (b"GIF89a", "GIF"),
                       (b"\xff\xd8\xff", "JPEG")):
        with pytest.raises(NotAnImageError, match=f"^the {name} image header is truncated or corrupt$"):
            decode_image(data, max_pixels=1_000)


def test_pillow_format_outside_the_allow_list_is_415():
    with pytest.raises(UnsupportedImageFormatError, match="PCX files are not supported"):
        decode_image(encode(Image.new("RGB", (8, 8), RED), "PCX"))


def test_pixel_limit_is_413_and_checked_before_decoding():
    small = encode(Image.new("RGB", (100, 100), RED), "PNG")
    assert decode_image(small, max_pixels=10_000).size == (100, 100)
    with pytest.raises(TooManyPixelsError) as info:
        decode_image(small, max_pixels=9_999)
    assert (info.value.status, info.value.error) == (413, "too_many_pixels")
    assert "100x100 = 10,000 pixels" in str(info.value) and "9,999" in str(info.value)

    # The header says 5000x5000 but the data holds only 100x100 pixels: decoding it fails with 400,
    # so a 413 shows the check happened on the header alone.
    claims_huge = with_png_size(small, 5_000, 5_000)
    with pytest.raises(NotAnImageError):
        decode_image(claims_huge, max_pixels=25_000_000)
    with pytest.raises(TooManyPixelsError, match="5000x5000"):
        decode_image(claims_huge, max_pixels=24_999_999)


def test_pillow_decompression_bomb_limit_is_413_even_without_a_limit():
    bomb = with_png_size(encode(Image.new("L", (1, 1)), "PNG"), 100_000, 100_000)
    with pytest.raises(TooManyPixelsError) as info:
        decode_image(bomb)
    assert info.value.status == 413 and "178,956,970 pixels" in str(info.value)


def test_every_error_is_an_image_error_and_a_value_error():
    for error in (EmptyImageError, NotAnImageError, UnsupportedImageFormatError, TooManyPixelsError):
        assert issubclass(error, ImageError) and issubclass(error, ValueError)


# --- files and tensors -----------------------------------------------------------------------------------------


def test_load_image_file_decodes_by_content_not_by_name(tmp_path):
    lying = tmp_path / "photo.jpg"
    lying.write_bytes(encode(Image.new("RGBA", (5, 3), (0, 0, 255, 0)), "PNG"))
    image = load_image_file(lying)
    assert image.size == (5, 3) and pixels(image) == [WHITE] * 15
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(EmptyImageError):
        load_image_file(empty)
    with pytest.raises(EmptyImageError):
        read_image_size(empty)
    with pytest.raises(TooManyPixelsError):
        load_image_file(lying, max_pixels=14)


def test_read_image_size_raises_like_decode(tmp_path):
    pdf = tmp_path / "scan.png"
    pdf.write_bytes(b"%PDF-1.4\n")
    with pytest.raises(UnsupportedImageFormatError):
        read_image_size(pdf)
    text = tmp_path / "notes.jpg"
    text.write_bytes(b"just some text, not an image")
    with pytest.raises(NotAnImageError):
        read_image_size(text)


def test_image_to_tensor_is_float_chw_in_0_1():
    tensor = image_to_tensor(decode_image(encode(left_red_right_blue(), "PNG")))
    assert tensor.shape == (3, 20, 40) and tensor.dtype == torch.float32
    assert tensor[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert tensor[:, 19, 39].tolist() == [0.0, 0.0, 1.0]
    gray = image_to_tensor(Image.new("L", (2, 2), 51))
    assert gray.shape == (3, 2, 2) and torch.allclose(gray, torch.full((3, 2, 2), 0.2))


# --- decoding for a model: shrunk in 8 bits -------------------------------------------------------------------

DEMO_INPUT = ModelInputSize(min_size=320, max_size=480)


def ico(picture: bytes) -> bytes:
    """An .ico file with one directory entry (its one-byte size fields say 256x256) pointing at ``picture``."""
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(picture), 22) + picture


def test_decode_for_model_shrinks_to_the_model_input_and_keeps_the_upload_size():
    decoded = decode_for_model(encode(left_red_right_blue(4000, 3000), "JPEG"), fit=DEMO_INPUT)
    # 320 / 3000 is the model's own factor: the short side becomes 320, the long side stays under 480.
    assert decoded.pixels.shape == (3, 320, 427) and decoded.pixels.dtype == torch.uint8
    assert (decoded.width, decoded.height) == (4000, 3000)
    assert np.abs(rows_columns(decoded)[160, 50] - RED).max() < 20
    assert np.abs(rows_columns(decoded)[160, 380] - BLUE).max() < 20


def rows_columns(decoded: ModelImage) -> np.ndarray:
    """The decoded pixels as an int array [H, W, 3], as ``np.asarray`` gives a Pillow image."""
    return decoded.pixels.permute(1, 2, 0).numpy().astype(int)


def test_decode_for_model_resizes_rgb_in_torch_as_pillow_would():
    """A JPEG the codec cannot draft down to the model's size (640x480 for 427x320) is finished by torch's
    antialiased bilinear resize; it gives Pillow's BILINEAR colours, within rounding."""
    photo = Image.effect_noise((640, 480), 40).convert("RGB").filter(ImageFilter.GaussianBlur(2))
    data = encode(photo, "JPEG", quality=95)
    decoded = decode_for_model(data, fit=DEMO_INPUT)
    by_pillow = np.asarray(Image.open(io.BytesIO(data)).resize((427, 320), Image.Resampling.BILINEAR), dtype=int)
    assert decoded.pixels.shape == (3, 320, 427)
    difference = np.abs(rows_columns(decoded) - by_pillow)
    assert difference.mean() < 0.5 and difference.max() <= 2


def test_only_rgb_pictures_within_twice_the_model_size_reach_the_torch_resize(monkeypatch):
    """A drafted JPEG is finished in torch; a large PNG (no draft) is shrunk by Pillow first, so its full-size
    pixels never become a tensor; a grey JPEG goes through Pillow too."""
    reached = []
    shrink = decode_module._shrink_rgb
    monkeypatch.setattr(decode_module, "_shrink_rgb", lambda pixels, size: reached.append(pixels.shape) or
                        shrink(pixels, size))
    photo = encode(left_red_right_blue(1280, 960), "JPEG")
    assert decode_for_model(photo, fit=DEMO_INPUT).pixels.shape == (3, 320, 427)
    assert reached == [(3, 480, 640)]  # drafted to 1/2, then torch
    for data in (encode(left_red_right_blue(4000, 3000), "PNG"),
                 encode(left_red_right_blue(1280, 960).convert("L"), "JPEG")):
        assert decode_for_model(data, fit=DEMO_INPUT).pixels.shape == (3, 320, 427)
    assert reached == [(3, 480, 640)]


def test_decode_for_model_applies_the_exif_orientation():
    for fmt in ("JPEG", "PNG", "TIFF"):
        decoded = decode_for_model(encode(left_red_right_blue(4000, 2000), fmt, exif=exif_with_orientation(6)),
                                   fit=DEMO_INPUT)
        assert decoded.pixels.shape == (3, 480, 240) and (decoded.width, decoded.height) == (2000, 4000), fmt
        assert np.abs(rows_columns(decoded)[20, 120] - RED).max() < 20, fmt  # the left half on top
        assert np.abs(rows_columns(decoded)[460, 120] - BLUE).max() < 20, fmt


def test_decode_for_model_never_enlarges():
    decoded = decode_for_model(encode(left_red_right_blue(100, 80), "PNG"), fit=DEMO_INPUT)
    assert decoded.pixels.shape == (3, 80, 100) and (decoded.width, decoded.height) == (100, 80)
    thin = decode_for_model(encode(Image.new("RGB", (4000, 1), RED), "PNG"), fit=DEMO_INPUT)
    assert thin.pixels.shape == (3, 1, 480) and (thin.width, thin.height) == (4000, 1)


def test_decode_for_model_shrinks_every_mode_to_the_same_colours():
    transparent = Image.new("P", (1600, 1200), 0)
    transparent.putpalette([0, 0, 255, 255, 0, 0])
    transparent.paste(1, (800, 0, 1600, 1200))
    gray16 = Image.fromarray(np.full((1200, 1600), 65535 // 5, dtype=np.uint16))
    cases = [
        (encode(transparent, "PNG", transparency=0), [WHITE, RED]),  # transparent blue: white
        (encode(gray16, "PNG"), [(51, 51, 51)] * 2),
        (encode(Image.new("1", (1600, 1200), 1), "PNG"), [WHITE] * 2),
        (encode(left_red_right_blue(1600, 1200).convert("CMYK"), "JPEG"), [RED, BLUE]),
        (encode(left_red_right_blue(1600, 1200).convert("RGBA"), "WEBP", lossless=True), [RED, BLUE]),
    ]
    for data, (left, right) in cases:
        decoded = decode_for_model(data, fit=DEMO_INPUT)
        assert decoded.pixels.shape == (3, 320, 427)
        pixels_ = rows_columns(decoded)
        assert np.abs(pixels_[160, 50] - left).max() < 20 and np.abs(pixels_[160, 380] - right).max() < 20


def test_decode_for_model_refuses_like_decode_image():
    with pytest.raises(EmptyImageError):
        decode_for_model(b"", fit=DEMO_INPUT)
    with pytest.raises(TooManyPixelsError):
        decode_for_model(encode(Image.new("RGB", (200, 100)), "PNG"), fit=DEMO_INPUT, max_pixels=19_999)
    jpeg = encode(Image.effect_noise((2000, 1500), 60).convert("RGB"), "JPEG")
    with pytest.raises(NotAnImageError, match="truncated"):
        decode_for_model(jpeg[: len(jpeg) // 2], fit=DEMO_INPUT)


def test_an_ico_picture_over_the_limit_is_refused_before_it_is_decoded():
    """Pillow decodes an icon's picture while it opens the file, and an .ico may hold a PNG of any size."""
    png = encode(Image.new("RGB", (300, 300), GREEN), "PNG")
    assert decode_image(ico(png), max_pixels=90_000).size == (300, 300)
    with pytest.raises(TooManyPixelsError, match="ICO file holds a 300x300"):
        decode_image(ico(png), max_pixels=89_999)
    # The PNG claims 6000x6000 but holds 300x300 pixels: decoding it would fail (400), so the 413 shows
    # that the check read the picture's header only.
    with pytest.raises(TooManyPixelsError, match="6000x6000"):
        decode_image(ico(with_png_size(png, 6000, 6000)), max_pixels=30_000_000)
    bmp_icon = encode(Image.new("RGB", (64, 64), GREEN), "ICO", sizes=[(64, 64)], bitmap_format="bmp")
    assert decode_image(bmp_icon, max_pixels=4096).size == (64, 64)
    with pytest.raises(TooManyPixelsError, match="64x64"):
        decode_image(bmp_icon, max_pixels=4095)
