"""The layout of a user's class folder, parsed once for both readers of it (OwnDataExampleGen's plan,
components/data/own_data.py, and prepare-data's reader, components/data/sources.py): ``train/<class>/*``,
``test/<class>/*``, an optional ``val/`` or ``validation/`` of the same classes and an optional flat
``unlabeled/``. Hidden and system files (``.DS_Store``, ``._IMG_0001.jpg``, ``Thumbs.db``, ``__MACOSX/``) are
skipped and counted; other files that are not images (notes, loose files beside the class folders) are counted
and listed; neither is an error, and neither is dropped silently. Class folders whose names differ only in case,
a class folder in test/ that train/ lacks and a link to nothing are errors naming them. Listed with TensorFlow's
gfile, so a folder on cluster storage (gs://...) reads as a local one.
"""

from __future__ import annotations

import dataclasses
import os

from components.data.errors import DataError
from components.host_paths import path_hint

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")  # matched case-blind (.JPG too)


VALIDATION_FOLDERS = ("val", "validation")  # a folder source's own validation split, used instead of carving one


def validation_folder(root: str, isdir=os.path.isdir) -> str | None:
    """The source's own validation folder (val/ or validation/, class sub-folders as in test/), or None."""
    found = [name for name in VALIDATION_FOLDERS if isdir(os.path.join(root, name))]
    if len(found) > 1:
        raise DataError(root, f"both {found[0]}/ and {found[1]}/ folders: keep one as the validation split", 2)
    return os.path.join(root, found[0]) if found else None


def check_validation_classes(counts, class_names: list[str], where: str) -> None:
    """A given validation split (its image count a class) must hold every class: the gate's per-class recall is
    measured on it."""
    empty = [class_names[c] for c, n in enumerate(counts) if n == 0]
    if empty:
        raise DataError(where, f"classes {empty} have no validation image; the gate measures every class's recall "
                        "on this split (add images, or remove the folder to carve validation from train)", len(empty),
                        unit="class")


def filesystem():
    import tensorflow as tf  # local: gfile reads gs:// and other filesystems a cluster's data may live on

    return tf.io.gfile


# Files an OS or a copy tool leaves beside the images: skipped and counted, never errors and never images.
HIDDEN_NAMES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx", "icon\r"})


def is_hidden(name: str) -> bool:
    """``.DS_Store``, ``._IMG_0001.jpg`` (macOS resource forks), ``.git``, ``Thumbs.db``, ``__MACOSX``, ..."""
    return name.startswith(".") or name.lower() in HIDDEN_NAMES


def is_image(name: str) -> bool:
    return not is_hidden(name) and name.lower().endswith(IMAGE_SUFFIXES)


def image_files(folder: str) -> tuple[list[str], list[str]]:
    """(image file names, other entry names, hidden ones included) of one folder, sorted: the order a FolderGroup's
    codes follow."""
    listed = sorted(e.rstrip("/") for e in filesystem().listdir(folder))
    return [e for e in listed if is_image(e)], [e for e in listed if not is_image(e)]


@dataclasses.dataclass
class FolderListing:
    """What the listing of a source met besides images: each named with its path, none dropped silently."""

    non_images: list[str] = dataclasses.field(default_factory=list)  # files that are not images (counted, listed)
    hidden: list[str] = dataclasses.field(default_factory=list)  # hidden / system files and folders (skipped)
    broken_links: list[str] = dataclasses.field(default_factory=list)  # symbolic links to nothing (an error)
    images: list[str] = dataclasses.field(default_factory=list)  # every image file's path, in plan order

    def sort_out(self, folder: str, others: list[str]) -> None:
        for e in others:
            (self.hidden if is_hidden(e) else self.non_images).append(os.path.join(folder, e))

    def add_images(self, folder: str, names: list[str]) -> None:
        paths = [os.path.join(folder, n) for n in names]
        if "://" not in folder:  # a local folder: a dangling link is found here, before TFX's driver stats it
            self.broken_links += [p for p in paths if os.path.islink(p) and not os.path.exists(p)]
        self.images += paths


def list_class_folders(split_dir: str, class_names: list[str] | None, listing: FolderListing):
    """(class folder names, {name: number of image files}); what is not an image goes to ``listing``."""
    gfile = filesystem()
    entries = sorted(e.rstrip("/") for e in gfile.listdir(split_dir))
    hidden = [e for e in entries if is_hidden(e)]
    listing.hidden += [os.path.join(split_dir, e) for e in hidden]
    entries = [e for e in entries if e not in hidden]
    dirs = [e for e in entries if gfile.isdir(os.path.join(split_dir, e))]
    listing.non_images += [os.path.join(split_dir, e) for e in entries if e not in dirs]  # loose files beside classes
    by_case: dict[str, list[str]] = {}
    for name in dirs:
        by_case.setdefault(name.casefold(), []).append(name)
    clashes = [names for names in by_case.values() if len(names) > 1]
    if clashes:
        raise DataError(split_dir, f"class folders whose names differ only in case: {clashes[:5]} (each would be a "
                        "class of its own)", sum(len(c) for c in clashes), unit="class",
                        hint="merge them into one folder or rename one")
    if class_names is not None:
        unknown = sorted(set(dirs) - set(class_names))
        if unknown:
            raise DataError(split_dir, f"class folders not in train/: {unknown[:5]}", len(unknown), unit="class")
    counts = {}
    for name in dirs:
        folder = os.path.join(split_dir, name)
        images, others = image_files(folder)
        counts[name] = len(images)
        listing.add_images(folder, images)
        listing.sort_out(folder, others)
    return dirs, counts


def list_train_classes(root: str) -> tuple[FolderListing, list[str], dict[str, int]]:
    """(a new listing, the class names: train/'s class folders, sorted, {class: its image files}) of a folder
    source; no train/ folder or no class folder in it is an error naming the root."""
    train_dir = os.path.join(root, "train")
    if not filesystem().isdir(train_dir):
        raise DataError(root, "no train/ folder (expected train/<class>/*, test/<class>/*, optional unlabeled/)",
                        hint=path_hint(root))
    listing = FolderListing()
    class_names, counts = list_class_folders(train_dir, None, listing)
    if not class_names:
        raise DataError(train_dir, "no class sub-folders")
    return listing, class_names, counts


def list_pool(root: str, listing: FolderListing) -> list[str] | None:
    """The image files of the flat unlabeled/ folder (None without one), the others sorted into ``listing``; then a
    link to nothing anywhere in the listing is an error."""
    unl_dir = os.path.join(root, "unlabeled")
    names = None
    if filesystem().isdir(unl_dir):
        names, others = image_files(unl_dir)
        listing.add_images(unl_dir, names)
        listing.sort_out(unl_dir, others)
    if listing.broken_links:
        raise DataError(root, f"symbolic links that point to nothing: {listing.broken_links[:5]}",
                        len(listing.broken_links), unit="file", hint="remove them or restore their targets")
    return names
