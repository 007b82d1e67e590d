"""HEIC/HEIF and AVIF photos written by pillow-heif and Pillow: decoded and tagged as the JPEG of the same
scene, turned upright once, the pixel limit read from their header, image sequences refused, and training data
sets finding them. How each ISO brand (HEIF, AVIF, MP4...) is answered is in tests/test_decode.py."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handler.decode import (
    ModelInputSize,
    NotAnImageError,
    TooManyPixelsError,
    UnsupportedImageFormatError,
    decode_for_model,
    decode_image,
    read_image_size,
    register_heif_opener,
)
from handler.tagging import Tagger, detections_above, tags_of
from training.datasets import open_dataset
from training.synthetic import render_image

register_heif_opener()  # the tests write HEIC files through Pillow too
PHOTO_FORMATS = ("HEIF", "AVIF")  # Pillow's names: "HEIF" is pillow-heif's, which writes HEIC (HEVC) pictures
RED, BLUE = (255, 0, 0), (0, 0, 255)
# The average difference (0..255) allowed between a picture's HEIC or AVIF and its JPEG, both at quality 92:
# measured 0.5 to 1.5 on generated scenes.
MEAN_DIFFERENCE_TO_JPEG = 3.0


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def scene(seed: int) -> Image.Image:
    return render_image(random.Random(seed), width=360, height=280)[0]


def left_red_right_blue(width: int = 64, height: int = 32) -> Image.Image:
    image = Image.new("RGB", (width, height), RED)
    image.paste(BLUE, (width // 2, 0, width, height))
    return image


def with_major_brand(data: bytes, brand: bytes) -> bytes:
    return data[:8] + brand + data[12:]


def without_coded_pixels(data: bytes) -> bytes:
    """The file with its "mdat" box (the coded pictures, written last) zeroed: the header boxes are intact."""
    start = data.index(b"mdat") + 4
    return data[:start] + bytes(len(data) - start)


def shows(image: Image.Image, xy: tuple[int, int], colour: tuple[int, int, int]) -> bool:
    """Whether the pixel at ``xy`` is ``colour``, give or take the few levels a lossy codec shifts it by."""
    return max(abs(a - b) for a, b in zip(image.getpixel(xy), colour)) < 20


# --- the same picture as its JPEG ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", PHOTO_FORMATS)
def test_heic_and_avif_decode_to_the_pixels_of_the_jpeg(fmt):
    photo = scene(4000)
    jpeg = decode_image(encode(photo, "JPEG", quality=92))
    decoded = decode_image(encode(photo, fmt, quality=92))
    assert decoded.mode == "RGB" and decoded.size == jpeg.size == (360, 280)
    difference = np.abs(np.asarray(decoded, dtype=float) - np.asarray(jpeg, dtype=float)).mean()
    assert difference < MEAN_DIFFERENCE_TO_JPEG, difference


@pytest.fixture(scope="module")
def trained_tagger(trained_checkpoint) -> Tagger:
    return Tagger.from_checkpoint(trained_checkpoint)


def test_heic_and_avif_get_the_tags_of_the_jpeg(trained_tagger):
    for seed in range(4000, 4004):
        photo = scene(seed)
        answers = {}
        for fmt in ("JPEG", *PHOTO_FORMATS):
            image = trained_tagger.load_image(encode(photo, fmt, quality=92))
            (found,) = trained_tagger.detect([image])
            answers[fmt] = ((image.width, image.height), sorted(tags_of(detections_above(found, threshold=0.5))))
        assert answers["JPEG"][1], f"scene {seed}: the JPEG gets no tag"
        assert answers["HEIF"] == answers["AVIF"] == answers["JPEG"], (seed, answers)


def test_a_heic_shrunk_for_the_model_is_the_photo_not_its_thumbnail():
    """A HEIC's embedded thumbnail (iPhones write one) is a separately coded, smaller picture: the model gets the
    photo itself, shrunk as every format is, even where the thumbnail is large enough."""
    photo = Image.effect_noise((800, 600), 60).convert("RGB")
    data = encode(photo, "HEIF", quality=92, thumbnails=[256])  # 256x192, more than the model's 200x150
    shrunk = decode_for_model(data, fit=ModelInputSize(min_size=150, max_size=200))
    expected = decode_image(data).resize((200, 150), Image.Resampling.BILINEAR, reducing_gap=2.0)
    assert (shrunk.width, shrunk.height) == (800, 600)
    assert np.array_equal(shrunk.pixels.permute(1, 2, 0).numpy(), np.asarray(expected))


# --- orientation -----------------------------------------------------------------------------------------------


def sideways(fmt: str) -> bytes:
    """A 64x32 picture (red left, blue right) with orientation 6: shown turned clockwise, 32 wide, red on top.

    pillow-heif writes the orientation of the EXIF block in ``info`` as the HEIF's irot/imir boxes and keeps
    the EXIF tag too, as an iPhone does; Pillow writes AVIF's irot/imir boxes from its ``exif`` option.
    """
    exif = Image.Exif()
    exif[0x0112] = 6
    picture = left_red_right_blue()
    if fmt == "HEIF":
        picture.info["exif"] = exif.tobytes()
        return encode(picture, fmt, quality=95)
    return encode(picture, fmt, quality=95, exif=exif)


@pytest.mark.parametrize("fmt", PHOTO_FORMATS)
def test_a_rotated_photo_is_turned_upright_once(fmt, tmp_path):
    data = sideways(fmt)
    assert b"irot" in data
    path = tmp_path / f"sideways.{fmt.lower()}"
    path.write_bytes(data)
    assert read_image_size(path) == (32, 64)  # from the header alone
    upright = decode_image(data)
    # Turned twice (irot, then EXIF), it would be 64x32 again, upside down.
    assert upright.size == (32, 64)
    assert shows(upright, (16, 4), RED) and shows(upright, (16, 60), BLUE)
    for_model = decode_for_model(data, fit=ModelInputSize(min_size=16, max_size=24))
    assert (for_model.width, for_model.height) == (32, 64) and tuple(for_model.pixels.shape) == (3, 24, 12)


def test_heif_ignores_an_exif_orientation_without_irot():
    """HEIF readers follow the irot/imir boxes only (ISO/IEC 23008-12): a stray EXIF tag turns nothing."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(left_red_right_blue(), "HEIF", quality=95, exif=exif)  # the option: EXIF kept, no irot box
    assert b"irot" not in data and Image.open(io.BytesIO(data)).info["original_orientation"] == 6  # the EXIF tag
    upright = decode_image(data)
    assert upright.size == (64, 32) and shows(upright, (4, 16), RED)


# --- limits and refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", PHOTO_FORMATS)
def test_a_photo_over_the_pixel_limit_is_413_before_decoding(fmt):
    data = encode(Image.effect_noise((400, 300), 60).convert("RGB"), fmt)
    assert decode_image(data, max_pixels=120_000).size == (400, 300)
    with pytest.raises(TooManyPixelsError, match="400x300 = 120,000 pixels, more than the limit of 119,999"):
        decode_image(data, max_pixels=119_999)
    # Without its coded pixels the file still opens, and fails only when decoded: the 413 came first.
    blank = without_coded_pixels(data)
    with pytest.raises(NotAnImageError, match=f"the {fmt} image is corrupt or truncated"):
        decode_image(blank, max_pixels=120_000)
    with pytest.raises(TooManyPixelsError):
        decode_image(blank, max_pixels=119_999)


def test_an_animated_avif_is_415_whatever_its_major_brand():
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, BLUE)]
    animated = encode(frames[0], "AVIF", save_all=True, append_images=frames[1:])
    assert animated[8:12] == b"avis"
    with pytest.raises(UnsupportedImageFormatError, match="^image sequences .* major brand is 'avis'; send a still"):
        decode_image(animated)
    # Under the generic still brand the frames are counted once the file is opened.
    with pytest.raises(UnsupportedImageFormatError, match="^image sequences .*: this AVIF file holds 2 frames"):
        decode_image(with_major_brand(animated, b"mif1"))


@pytest.mark.parametrize("brand", [b"msf1", b"hevc", b"hevs"])
def test_a_heif_sequence_brand_is_415_before_parsing(brand):
    heic = encode(Image.new("RGB", (16, 16), RED), "HEIF")
    with pytest.raises(UnsupportedImageFormatError, match=f"major brand is '{brand.decode()}'") as refused:
        decode_image(with_major_brand(heic, brand))
    assert refused.value.status == 415


def test_a_heif_holding_several_pictures_gives_its_primary_one():
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, BLUE)]
    collection = encode(frames[0], "HEIF", save_all=True, append_images=frames[1:], primary_index=1)
    assert Image.open(io.BytesIO(collection)).n_frames == 2
    assert shows(decode_image(collection), (8, 8), BLUE)


# --- training --------------------------------------------------------------------------------------------------


def test_a_training_set_reads_heic_and_avif_images(tmp_path: Path):
    """A YOLO folder (images/, labels/, classes.txt) of a JPEG, a HEIC, a .heif and an AVIF of one scene."""
    photo = scene(4100)
    names = {"scene.jpg": "JPEG", "scene-phone.heic": "HEIF", "scene-camera.heif": "HEIF", "scene-web.avif": "AVIF"}
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name, fmt in names.items():
        (tmp_path / "images" / name).write_bytes(encode(photo, fmt, quality=92))
        (tmp_path / "labels" / f"{Path(name).stem}.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    (tmp_path / "classes.txt").write_text("thing\n")
    dataset = open_dataset(tmp_path, "all")
    by_name = {dataset.image_path(i).name: i for i in range(len(dataset))}
    assert sorted(by_name) == sorted(names)
    pixels = {}
    for name, index in by_name.items():
        assert dataset.image_size(index) == (360, 280)
        image, target = dataset[index]
        assert tuple(image.shape) == (3, 280, 360) and target["boxes"].tolist() == [[135.0, 105.0, 225.0, 175.0]]
        pixels[name] = image
    for name in names:
        assert (pixels[name] - pixels["scene.jpg"]).abs().mean() * 255 < MEAN_DIFFERENCE_TO_JPEG, name


@pytest.mark.parametrize("fmt", PHOTO_FORMATS)
def test_every_cut_of_a_photo_is_400(fmt):
    """A HEIC or AVIF cut anywhere (header boxes or coded pixels) is a 400 of the decoder, never another error."""
    data = sideways(fmt)
    for cut in range(1, len(data)):
        with pytest.raises(NotAnImageError):
            decode_image(data[:cut], max_pixels=10_000)
