"""The files `transferkit audit` looks at: each image of a folder data set read once, for its facts (format, mode,
size), a hash of its decoded pixels, a small grey thumbnail for the pixel check, and its pixels at the backbone's
size. Files are only read; one that does not decode is listed with the reason."""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.archive import open_tree
from ..data.folders import decode_image, find_layout, unreadable_reason
from ..errors import UserError

THUMB_SIDE = 16  # the pixel check compares 16 x 16 grey thumbnails (re-encoding and resizing leave them alike)
READ_CHUNK = 256  # files read into memory at a time: a folder of large photos must not be held whole


@dataclass(frozen=True)
class AuditImage:
    """One decoded image file: where it is, its split and given label, and the facts of the file."""

    path: str  # inside the data set (folder or archive), as find_layout lists it
    split: str
    label: int
    format: str
    mode: str
    width: int
    height: int
    pixel_hash: str  # of the decoded pixels (RGB), whatever the file's encoding or metadata


@dataclass
class AuditFiles:
    """Every readable image with its pixels at `size` (uint8 N,H,W,3, centre-cropped as finetune reads them) and
    thumbnails (float32 N, 256, each standardised), and the files that could not be read."""

    origin: str
    class_names: tuple[str, ...]
    images: list[AuditImage]
    pixels: np.ndarray
    thumbs: np.ndarray
    unreadable: list[dict]  # {"path", "split", "reason"}
    split_from_train: bool  # no val/ or test/ folder: every image counts as train


def read_audit_files(data: str | Path, size: int) -> AuditFiles:
    """Read every image of the folder data set `data` (class folders, or train/val/test of class folders)."""
    tree = open_tree(data)
    try:
        layout = find_layout(tree, 0.2, 0)
        members = dict(layout.members)
        if layout.split_from_train:  # find_layout held some out as val; the audit looks at the folder as it is
            members = {"train": sorted(members["train"] + members["val"])}
        todo = [(split, path, label) for split, items in members.items() for path, label in items]
        images, pixels, thumbs, unreadable = [], [], [], []
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for start in range(0, len(todo), READ_CHUNK):
                chunk = todo[start:start + READ_CHUNK]
                contents = tree.read_many([path for _, path, _ in chunk])
                reads = pool.map(_read_one, [contents[path] for _, path, _ in chunk], [size] * len(chunk))
                for (split, path, label), read in zip(chunk, reads, strict=True):
                    if isinstance(read, str):
                        unreadable.append({"path": path, "split": split, "reason": read})
                        continue
                    (fmt, mode, w, h, digest), px, thumb = read
                    images.append(AuditImage(path, split, label, fmt, mode, w, h, digest))
                    pixels.append(px)
                    thumbs.append(thumb)
    finally:
        tree.close()
    if len(images) < 2:
        raise UserError(f"{data}: {len(images)} readable image(s); an audit needs at least two")
    return AuditFiles(str(tree.path), layout.class_names, images, np.stack(pixels), np.stack(thumbs), unreadable,
                      layout.split_from_train)


def _read_one(data: bytes | None, size: int):
    """(facts, pixels at `size`, thumbnail), or the reason the file cannot be read."""
    try:
        if data is None:
            raise OSError("cannot be read")
        if not data:
            raise OSError("empty file")
        with Image.open(io.BytesIO(data)) as img:
            fmt, mode, (w, h) = img.format or "unknown", img.mode, img.size
        native = decode_image(data, None, 3)
        digest = hashlib.blake2b(native.tobytes(), digest_size=16)
        digest.update(repr(native.shape).encode())
        grey = Image.fromarray(native).convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
        thumb = np.asarray(grey, dtype=np.float32).ravel()
        thumb = (thumb - thumb.mean()) / max(float(thumb.std()), 1.0)  # a flat image stays near zero
        return (fmt, mode, w, h, digest.hexdigest()), decode_image(data, (size, size), 3, cover=True), thumb
    except Image.DecompressionBombError as e:
        return f"a decompression bomb ({str(e)[:80]})"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return unreadable_reason(e)
