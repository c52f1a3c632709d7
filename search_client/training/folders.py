"""Image folders on disk: the two layouts, and the compact list of their files (paths and labels only).

Layouts of ``--data PATH``::

    ImageNet   PATH/train/CLASS/**/IMAGE and optionally PATH/val/CLASS/**/IMAGE; chosen when PATH holds a
               ``train`` directory and no directory other than ``train`` and ``val``
    flat       PATH/CLASS/**/IMAGE

A class is a directory; its index is the position of its name in the sorted names of ``train/`` (or of PATH in
the flat layout). Images are the files whose suffix is in ``IMAGE_SUFFIXES`` (case-insensitive), found
recursively and sorted; hidden files and directories (a leading dot) are skipped. Every class of ``train/``
must hold images; every class of ``val/`` must be a class of ``train/`` (val/ may lack some).

:class:`FileList` keeps the paths as one byte buffer with offsets and the labels as one int64 array, so its size
is a few bytes per image and DataLoader worker processes that inherit it never copy it (no per-item Python
objects whose reference counts would be written to).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LAYOUTS = ("imagenet", "flat")


@dataclass(frozen=True)
class FileList:
    """The images of one split: ``root``-relative paths (UTF-8 bytes in ``buffer`` between ``offsets[i]`` and
    ``offsets[i + 1]``) and their ``labels``."""

    root: Path
    buffer: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def path(self, index: int) -> Path:
        """The absolute path of image ``index``."""
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.root / self.buffer[start:end].tobytes().decode("utf-8")

    @property
    def nbytes(self) -> int:
        """Memory held by the list."""
        return int(self.buffer.nbytes + self.offsets.nbytes + self.labels.nbytes)


@dataclass(frozen=True)
class ImageFolder:
    """A scanned folder: its layout, class names, the ``train`` files and the ``val`` files (None when absent)."""

    root: Path
    layout: str
    classes: tuple[str, ...]
    train: FileList
    val: FileList | None


def _visible_dirs(path: Path) -> list[str]:
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _image_files(class_dir: Path) -> list[str]:
    """Paths (relative to ``class_dir``, '/'-separated) of the images under it, sorted."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, class_dir)
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                found.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    return sorted(found)


def _scan_split(root: Path, classes: tuple[str, ...], present: list[str], *, every_class: bool) -> FileList:
    """The images of the class directories ``present`` under ``root``, labelled by their index in ``classes``;
    with ``every_class``, a class directory without images is an error."""
    index = {name: k for k, name in enumerate(classes)}
    chunks: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for name in present:
        files = _image_files(root / name)
        if not files:
            if every_class:
                raise ValueError(f"data: class folder {root / name} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            continue
        encoded = [f"{name}/{f}".encode() for f in files]
        chunks.append(np.frombuffer(b"".join(encoded), dtype=np.uint8))
        lengths.append(np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded)))
        labels.append(np.full(len(files), index[name], dtype=np.int64))
    if not labels:
        raise ValueError(f"data: no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {root}")
    offsets = np.zeros(sum(len(x) for x in lengths) + 1, dtype=np.int64)
    np.cumsum(np.concatenate(lengths), out=offsets[1:])
    return FileList(root, np.concatenate(chunks), offsets, np.concatenate(labels))


def detect_layout(path: Path) -> str:
    """``imagenet`` or ``flat`` (rule in the module docstring)."""
    dirs = _visible_dirs(path)
    return "imagenet" if "train" in dirs and set(dirs) <= {"train", "val"} else "flat"


def scan_image_folder(path: str | Path) -> ImageFolder:
    """Scan ``path`` (either layout); ValueError naming the problem for a missing folder, no classes, no images,
    or val/ classes that train/ lacks."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"data: {root} is not a directory")
    layout = detect_layout(root)
    train_root = root / "train" if layout == "imagenet" else root
    class_names = _visible_dirs(train_root)
    if not class_names:
        raise ValueError(f"data: {train_root} has no class sub-folders (expected {train_root}/CLASS/IMAGE)")
    classes = tuple(class_names)
    train = _scan_split(train_root, classes, class_names, every_class=True)
    val = None
    if layout == "imagenet" and (root / "val").is_dir():
        val_names = _visible_dirs(root / "val")
        unknown = sorted(set(val_names) - set(classes))
        if unknown:
            raise ValueError(f"data: {root / 'val'} has class folders that {train_root} lacks: "
                             f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
        if val_names:
            val = _scan_split(root / "val", classes, val_names, every_class=False)
    return ImageFolder(root, layout, classes, train, val)
