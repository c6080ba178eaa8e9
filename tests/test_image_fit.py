"""models/image_fit.py: every encoded image a user or a client has -> the run's one (H, W, C), as Pillow and Keras
would have it: EXIF orientation against Pillow's exif_transpose, channel conversions, the three fit methods, the
identity at the run's own size, and a named error for bytes that do not decode; components/data/image_survey.py's
choice of the size and channels from the images' headers."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from components.data.errors import DataError
from components.data.image_survey import ImageSurvey, describe_fit, resolve_fit, survey_files
from models.image_fit import ImageFit, exif_orientation, fit_image, fitter, orient

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (7, 11, 3), dtype=np.uint8)


def encoded(array, fmt="PNG", mode=None, orientation=None, **kw) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    if orientation is not None:
        exif = image.getexif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_a_jpeg_upright_as_pillow_does(orientation):
    jpeg = encoded(PIXELS, "JPEG", orientation=orientation, quality=95)
    assert int(exif_orientation(jpeg)) == orientation
    decoded = tf.io.decode_jpeg(jpeg).numpy()  # TF's pixels, turned by Pillow's rule, are the reference
    reference = Image.fromarray(decoded)
    exif = reference.getexif()
    exif[0x0112] = orientation
    reference.info["exif"] = exif.tobytes()
    buf = io.BytesIO()
    reference.save(buf, "PNG", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    got = orient(tf.constant(decoded), exif_orientation(jpeg)).numpy()
    assert got.shape == expected.shape and np.array_equal(got, expected)


def test_big_endian_exif_and_no_exif():
    # a hand-made big-endian (Motorola) APP1 with one IFD0 entry: orientation 6
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00" + b"\0" * 4
    app1 = b"\xff\xe1" + (len(tiff) + 8).to_bytes(2, "big") + b"Exif\x00\x00" + tiff
    plain = encoded(PIXELS, "JPEG")
    assert int(exif_orientation(plain[:2] + app1 + plain[2:])) == 6
    assert int(exif_orientation(plain)) == 1 and int(exif_orientation(encoded(PIXELS))) == 1
    image, native, orientation = fit_image(plain[:2] + app1 + plain[2:], ImageFit(11, 7, 3))
    assert list(native.numpy()) == [7, 11, 3] and int(orientation) == 6 and image.shape == (11, 7, 3)


@pytest.mark.parametrize("mode,native_channels", [("L", 1), ("LA", 2), ("RGB", 3), ("RGBA", 4), ("P", 3), ("1", 1)])
def test_every_mode_converts_to_both_channel_counts(mode, native_channels):
    data = encoded(PIXELS, "PNG", mode=mode)
    for channels in (1, 3):
        image, native, _ = fit_image(data, ImageFit(7, 11, channels))
        assert image.shape == (7, 11, channels) and int(native[-1]) == native_channels
    rgb, _, _ = fit_image(data, ImageFit(7, 11, 3))
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # alpha dropped, gray repeated, palette
    assert np.array_equal(rgb.numpy(), reference)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "WEBP", "JPEG"])
def test_other_formats_decode(fmt):
    image, native, _ = fit_image(encoded(PIXELS, fmt), ImageFit(16, 16, 3))
    assert image.shape == (16, 16, 3) and list(native.numpy()[:2]) == [7, 11]


def test_own_size_is_left_bit_for_bit_and_each_method_fits():
    data = encoded(PIXELS)
    assert np.array_equal(fit_image(data, ImageFit(7, 11, 3))[0].numpy(), PIXELS)
    gray = np.asarray(Image.fromarray(PIXELS).convert("L"))[..., None]
    assert np.array_equal(fit_image(encoded(gray[..., 0]), ImageFit(7, 11, 1))[0].numpy(), gray)
    # pad: a 7x11 image in 22x22 keeps its aspect ratio: 14 rows of image, 4 zero rows above and below
    padded = fit_image(data, ImageFit(22, 22, 3, "pad"))[0].numpy()
    assert not padded[:4].any() and not padded[-4:].any() and padded[4:18].any()
    # crop: the centred 7x7 box, resized to 14x14; resize: the whole image squashed
    cropped = fit_image(data, ImageFit(7, 7, 3, "crop"))[0].numpy()
    assert np.array_equal(cropped, PIXELS[:, 2:9])
    squashed = fit_image(data, ImageFit(14, 22, 3))[0].numpy()
    expected = tf.cast(tf.round(tf.image.resize(PIXELS, [14, 22], antialias=True)), tf.uint8).numpy()
    assert np.array_equal(squashed, expected)


def test_bytes_that_do_not_decode_raise_invalid_argument():
    fit = fitter(ImageFit(8, 8, 3))
    jpeg = encoded(RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8), "JPEG")
    for bad in (b"", b"not an image", jpeg[: len(jpeg) // 2]):
        with pytest.raises(tf.errors.InvalidArgumentError):
            fit(tf.constant(bad))


def _survey(*arrays_and_modes):
    survey = ImageSurvey()
    for i, (array, mode) in enumerate(arrays_and_modes):
        survey.add(encoded(array, "PNG", mode=mode), f"img{i}")
    return survey


def test_auto_size_and_channels_from_the_survey():
    same = _survey(*[(RNG.integers(0, 256, (28, 28), dtype=np.uint8), None)] * 3)
    fit, record = resolve_fit(same)
    assert fit == ImageFit(28, 28, 1) and record["planned_resized"] == 0 and "every image has it" in record["reason"]
    sides = [26, 40, 53, 61, 80]
    mixed = _survey(*[(RNG.integers(0, 256, (s, s + 3, 3), dtype=np.uint8), None) for s in sides],
                    (RNG.integers(0, 256, (50, 50), dtype=np.uint8), None))
    fit, record = resolve_fit(mixed)
    # the geometric-mean sides 27, 41, 54, 62, 81 and 50: median 52 -> the nearest multiple of 8, halves up: 56
    assert fit == ImageFit(56, 56, 3) and record["planned_resized"] == 6 and record["planned_converted"] == 1
    assert record["survey"]["colour_images"] == 5 and record["survey"]["gray_images"] == 1
    big = _survey(*[(RNG.integers(0, 256, (300, 200, 3), dtype=np.uint8), None), (PIXELS, None)])
    assert resolve_fit(big)[0].height == 64 and "capped at 64" in resolve_fit(big)[1]["reason"]
    fit, record = resolve_fit(mixed, "32,48", "1", "crop")
    assert fit == ImageFit(32, 48, 1, "crop") and "data.image_size" in record["reason"]
    assert "32x48x1" in describe_fit(record) and "centre-cropped" in describe_fit(record)
    with pytest.raises(ValueError, match="data.image_size"):
        resolve_fit(mixed, "big")
    with pytest.raises(ValueError, match="data.channels"):
        resolve_fit(mixed, "auto", "2")


def test_survey_counts_exif_rotation_and_names_unreadable_files(tmp_path):
    (tmp_path / "tall.jpg").write_bytes(encoded(PIXELS, "JPEG", orientation=6))  # 7x11 stored, 11x7 upright
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    survey = survey_files([str(tmp_path / "tall.jpg"), str(tmp_path / "bad.jpg")])
    assert survey.sizes == [(11, 7)] and survey.rotated == 1
    assert len(survey.unreadable) == 1 and "bad.jpg" in survey.unreadable[0]
    with pytest.raises(DataError, match="no image header could be read"):
        resolve_fit(survey_files([str(tmp_path / "bad.jpg")]))
