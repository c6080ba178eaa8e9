"""What a user's images are (sizes, colour), read from their headers, and the one size and channel count a run uses.

:func:`survey_files` opens each image's header with Pillow (nothing is decoded: a few hundred bytes a file) and
counts sizes, after the EXIF orientation, and colour modes. :func:`resolve_fit` turns that survey and the settings
``data.image_size`` (``auto`` | ``H,W`` | ``S``) and ``data.channels`` (``auto`` | 1 | 3) into a
:class:`models.image_fit.ImageFit`, with the reason for each choice:

* size ``auto``: every image's own size when they all share one (a 28 x 28 folder stays 28 x 28, bit for bit);
  otherwise a square of the median side (the geometric mean of height and width), rounded to a multiple of 8 from
  32 px up (to a pixel below) and capped at AUTO_MAX_SIDE so a CPU run stays practical;
* channels ``auto``: 3 when any image is colour, else 1.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import statistics

from models.config import ImageFit

AUTO_MAX_SIDE, AUTO_MULTIPLE, AUTO_ROUND_FROM = 64, 8, 32
BAD_FILE_POLICIES = ("error", "skip")  # data.bad_files: what a file that does not read or decode does to the run
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La")
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the stored image a quarter turn


@dataclasses.dataclass
class ImageSurvey:
    """Header facts of a set of images: (height, width) upright, colour or not, and the problems met reading them."""

    sizes: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    colour: int = 0
    alpha: int = 0  # RGBA / LA / palette with transparency: the alpha channel is dropped
    palette: int = 0
    rotated: int = 0  # an EXIF orientation other than upright
    formats: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    unreadable: list[str] = dataclasses.field(default_factory=list)  # header did not parse: ingestion names them

    @property
    def count(self) -> int:
        return len(self.sizes)

    def add(self, data_or_file, where: str) -> None:
        from PIL import Image, UnidentifiedImageError  # local: only the survey reads headers with Pillow

        try:
            with Image.open(data_or_file if not isinstance(data_or_file, bytes) else io.BytesIO(data_or_file)) as img:
                w, h = img.size
                orientation = img.getexif().get(0x0112, 1) if img.format in ("JPEG", "MPO", "WEBP", "PNG") else 1
                mode, fmt = img.mode, img.format or "?"
                is_colour = mode not in GRAY_MODES
                if mode == "P":
                    self.palette += 1
                    pal = img.getpalette() or []
                    is_colour = any(pal[i] != pal[i + 1] or pal[i] != pal[i + 2] for i in range(0, len(pal) - 2, 3))
                    self.alpha += int("transparency" in img.info)
                self.alpha += int(mode in ("RGBA", "LA", "La", "RGBa", "PA"))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            self.unreadable.append(f"{where} ({type(e).__name__}: {e})")
            return
        if orientation in _SWAPPING_ORIENTATIONS:
            w, h = h, w
        self.rotated += int(orientation not in (1, None))
        self.sizes.append((int(h), int(w)))
        self.colour += int(is_colour)
        self.formats[fmt] += 1

    def summary(self) -> dict:
        if not self.sizes:
            return {"images": 0, "unreadable": len(self.unreadable)}
        sides = sorted(round((h * w) ** 0.5) for h, w in self.sizes)
        return {"images": self.count, "min_side": sides[0], "median_side": statistics.median(sides),
                "max_side": sides[-1], "distinct_sizes": len(set(self.sizes)), "colour_images": self.colour,
                "gray_images": self.count - self.colour, "with_alpha": self.alpha, "palette_images": self.palette,
                "exif_rotated": self.rotated, "formats": dict(sorted(self.formats.items())),
                "unreadable": len(self.unreadable)}


def survey_files(paths, open_file=open) -> ImageSurvey:
    """Read the header of every file in ``paths`` (``open_file(path, "rb")``: gfile's GFile for remote storage)."""
    survey = ImageSurvey()
    for path in paths:
        try:
            with open_file(path, "rb") as f:
                survey.add(f, path)
        except OSError as e:
            survey.unreadable.append(f"{path} ({type(e).__name__}: {e})")
    return survey


def _parse_size(value: str) -> tuple[int, int] | None:
    text = str(value).strip().lower()
    if text == "auto":
        return None
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 1:
        raise ValueError(f"data.image_size={value!r}: use auto, H,W or S (pixels)")
    return dims[0], dims[1]


def _parse_channels(value) -> int | None:
    text = str(value).strip().lower()
    if text == "auto":
        return None
    if text not in ("1", "3"):
        raise ValueError(f"data.channels={value!r}: use auto, 1 or 3")
    return int(text)


def check_settings(image_size: str, channels, method: str) -> None:
    """A malformed setting fails when the config is read, not mid-run."""
    _parse_size(image_size)
    _parse_channels(channels)
    ImageFit(1, 1, 1, method)


def resolve_fit(survey: ImageSurvey, image_size: str = "auto", channels="auto", method: str = "resize",
                where: str = "") -> tuple[ImageFit, dict]:
    """(the run's ImageFit, a record of it for check / metrics.json / report.md: the settings, the choice, why, how
    many surveyed images it resizes and converts)."""
    from components.data.errors import DataError

    size, chans = _parse_size(image_size), _parse_channels(channels)
    if (size is None or chans is None) and not survey.sizes:
        raise DataError(where, "no image header could be read to choose data.image_size / data.channels "
                        f"(e.g. {survey.unreadable[:3]})", len(survey.unreadable))
    reasons = []
    if size is None:
        distinct = set(survey.sizes)
        if len(distinct) == 1:
            size = next(iter(distinct))
            reasons.append(f"size {size[0]}x{size[1]}: every image has it")
        else:
            median = statistics.median(round((h * w) ** 0.5) for h, w in survey.sizes)
            rounded = (AUTO_MULTIPLE * math.floor(median / AUTO_MULTIPLE + 0.5) if median >= AUTO_ROUND_FROM
                       else math.floor(median + 0.5))  # halves up
            side = int(max(1, min(AUTO_MAX_SIDE, rounded)))
            size = (side, side)
            how = (f"capped at {AUTO_MAX_SIDE}" if rounded > AUTO_MAX_SIDE else
                   f"rounded to a multiple of {AUTO_MULTIPLE}" if median >= AUTO_ROUND_FROM else "rounded")
            reasons.append(f"size {side}x{side}: the median side {median:g} px, {how}; "
                           f"{len(distinct)} sizes among the images")
    else:
        reasons.append(f"size {size[0]}x{size[1]}: data.image_size")
    if chans is None:
        chans = 3 if survey.colour else 1
        reasons.append(f"{chans} channel{'s' if chans == 3 else ''}: "
                       + (f"{survey.colour} of {survey.count} images are colour" if survey.colour
                          else f"all {survey.count} images are gray"))
    else:
        reasons.append(f"{chans} channel{'s' if chans == 3 else ''}: data.channels")
    fit = ImageFit(size[0], size[1], chans, method)
    to_resize = sum(1 for hw in survey.sizes if hw != size)
    to_convert = (survey.count - survey.colour) if chans == 3 else survey.colour
    record = {**fit.to_dict(), "image_size_setting": str(image_size), "channels_setting": str(channels),
              "reason": "; ".join(reasons), "survey": survey.summary(),
              "planned_resized": to_resize, "planned_converted": to_convert + survey.alpha}
    return fit, record


def describe_fit(record: dict) -> str:
    """One line for ``check`` and report.md."""
    how = {"resize": "resized to it (aspect ratio not kept, as Keras's image_dataset_from_directory)",
           "crop": "centre-cropped to its aspect ratio, then resized", "pad": "resized to fit, then zero-padded"}
    s = record.get("survey") or {}
    return (f"images fitted to {record['height']}x{record['width']}x{record['channels']} "
            f"({record['reason']}); each image {how[record['method']]}, EXIF orientation applied, alpha dropped; "
            f"of {s.get('images', 0)} images surveyed, {record['planned_resized']} are resized and "
            f"{record['planned_converted']} converted")


CHANNEL_NAMES = {1: "gray", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}


def fitting_events(native, orientation: int, fit: ImageFit) -> list[str]:
    """What fitting one image to ``fit`` did, from :func:`models.image_fit.fit_image`'s [h, w, c] as decoded and its
    EXIF orientation: any of ``exif_rotated``, ``resized``, ``converted <from> to <to>``."""
    h, w, c = (int(d) for d in native)
    if orientation in _SWAPPING_ORIENTATIONS:
        h, w = w, h
    events = ["exif_rotated"] if orientation != 1 else []
    if (h, w) != (fit.height, fit.width):
        events.append("resized")
    if c != fit.channels:
        events.append(f"converted {CHANNEL_NAMES[c]} to {CHANNEL_NAMES[fit.channels]}")
    return events


def fitting_record(counts) -> dict:
    """The ``image_fit`` counts of metrics.json / the manifest from :func:`fitting_events` counted over all images."""
    conversions = {k: v for k, v in sorted(counts.items()) if k.startswith("converted")}
    return {"resized": counts.get("resized", 0), "converted": sum(conversions.values()), "conversions": conversions,
            "exif_rotated": counts.get("exif_rotated", 0)}
