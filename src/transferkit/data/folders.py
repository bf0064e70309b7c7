"""Image folder data sets: `train/`, `val/` (and `test/`) of class folders, or one folder of class folders
split by `val_fraction`; from a folder or an archive; decoded once into uint8 arrays and cached."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError, first_line
from .archive import FileTree, open_tree

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SPLIT_NAMES = ("train", "val", "test")
CACHE_VERSION = "2"  # 2: entries carry their key and a digest of their content


@dataclass
class FolderData:
    """Decoded images per split (uint8 N,H,W[,C]) with labels into the sorted class names."""

    origin: str
    class_names: tuple[str, ...]
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    skipped: list[str] = field(default_factory=list)  # files that failed to decode, with the reason


@dataclass(frozen=True)
class FolderLayout:
    """Which files belong to which split and class, before anything is decoded."""

    class_names: tuple[str, ...]
    members: dict[str, list[tuple[str, int]]]  # split -> [(relative path, class index)]
    split_from_train: bool  # True when val was carved out of a single folder of classes


def find_layout(tree: FileTree, val_fraction: float = 0.2, seed: int = 0,
                exclude: frozenset[str] = frozenset()) -> FolderLayout:
    """Detect the layout: descend through single wrapping folders, then train/val/test or class folders. Files
    named in `exclude` (paths inside the tree, as find_layout lists them: --exclude) are left out."""
    images = [PurePosixPath(n) for n in tree.files() if PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES
              and n not in exclude]
    prefix: tuple[str, ...] = ()
    while True:
        below = [p.parts[len(prefix):] for p in images if p.parts[: len(prefix)] == prefix]
        tops = {parts[0] for parts in below if len(parts) > 1}
        files_here = [parts for parts in below if len(parts) == 1]
        if len(tops) == 1 and not files_here and not tops & set(SPLIT_NAMES):
            prefix = prefix + (tops.pop(),)
            continue
        break
    if not below:
        raise UserError(f"{tree.path}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); "
                        "expected class folders, e.g. train/cat/1.jpg or cat/1.jpg")
    root = "/".join(prefix)
    by_split: dict[str, dict[str, list[str]]] = {}
    split_layout = "train" in tops
    for parts in below:
        full = "/".join(prefix + parts)
        if split_layout:
            if len(parts) != 3 or parts[0] not in SPLIT_NAMES:
                continue  # not <split>/<class>/<file>
            by_split.setdefault(parts[0], {}).setdefault(printable(parts[1]), []).append(full)
        elif len(parts) == 2:
            by_split.setdefault("train", {}).setdefault(printable(parts[0]), []).append(full)
    where = f"{tree.path}{'/' + root if root else ''}"
    if "train" not in by_split and prefix and files_here:
        raise UserError(f"{tree.path}: only one class ({prefix[-1]}); classification needs at least two class folders")
    if "train" not in by_split:
        raise UserError(f"{where}: no class folders with images; expected <class>/<image> or train/<class>/<image>")
    classes = sorted(by_split["train"])
    depth = len(prefix) + (2 if split_layout else 1)
    train_root = prefix + (("train",) if split_layout else ())
    empty = sorted(printable(PurePosixPath(f).name) for f in tree.folders()
                   if len(PurePosixPath(f).parts) == depth and PurePosixPath(f).parts[:-1] == train_root
                   and printable(PurePosixPath(f).name) not in classes)
    if empty:
        raise UserError(f"{where}: class folder(s) {', '.join(empty)} hold no images; add images or remove them")
    _check_case_clash(where, classes)
    for split, per_class in by_split.items():
        unknown = sorted(set(per_class) - set(classes))
        if unknown:
            raise UserError(f"{where}/{split}: class folder(s) {', '.join(unknown)} are not in train/; "
                            "every class needs training images")
    if len(classes) < 2:
        raise UserError(f"{where}: only one class ({classes[0]}); classification needs at least two class folders")
    members = {s: [(f, classes.index(c)) for c in sorted(pc) for f in sorted(pc[c])] for s, pc in by_split.items()}
    split_from_train = False
    if "val" not in members and "test" not in members:
        members["train"], members["val"] = stratified_split(members["train"], val_fraction, seed, where)
        split_from_train = True
    return FolderLayout(tuple(classes), members, split_from_train)


def printable(name: str) -> str:
    """A file or folder name as text any output can hold: bytes that are not UTF-8 (read as surrogates) and
    control characters written as escapes (\\xff, \\n). Class names are made so: they go into results.json,
    figures, the console and HTML."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _check_case_clash(where: str, classes: list[str]) -> None:
    lowered = Counter(c.casefold() for c in classes)
    clashes = sorted(c for c in classes if lowered[c.casefold()] > 1)
    if clashes:
        raise UserError(f"{where}: class folders {', '.join(clashes)} differ only by case; rename or merge them")


def stratified_split(items: list[tuple[str, int]], fraction: float, seed: int, where: str):
    """Split (path, label) pairs into train / val with `fraction` of each class in val, seeded."""
    if not 0 < fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in sorted({lbl for _, lbl in items}):
        group = [it for it in items if it[1] == label]
        order = rng.permutation(len(group))
        n_val = min(int(round(len(group) * fraction)), len(group) - 1)  # keep a training image per class
        val += [group[i] for i in sorted(order[:n_val])]
        train += [group[i] for i in sorted(order[n_val:])]
    if not val:
        raise UserError(f"{where}: too few images to hold out {fraction:.0%} for validation; add images or a val/ folder")
    return train, val


def decode_image(data: bytes, size: tuple[int, int] | None, channels: int, cover: bool = False) -> np.ndarray:
    """Decode any image Pillow reads (first frame), convert to L or RGB, resize to (width, height) when given.

    `cover` keeps the aspect ratio: scale until the image covers `size`, then crop the centre (as torchvision's
    Resize + CenterCrop); otherwise the image is stretched to `size`.
    """
    with Image.open(io.BytesIO(data)) as img:
        img.seek(0)
        img = ImageOps.exif_transpose(img)  # a phone's photo stands as it was taken; others: the same pixels
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            img = Image.fromarray(_to_8bit(np.asarray(img, dtype=np.float64), img.mode == "F"), "L")
        elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # Transparent pixels on white, as an image viewer shows them.
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        img = img.convert("L" if channels == 1 else "RGB")
        if size is not None and img.size != size:
            img = (ImageOps.fit(img, size, Image.Resampling.BILINEAR) if cover
                   else img.resize(size, Image.Resampling.BILINEAR))
        return np.asarray(img, dtype=np.uint8)


def _to_8bit(pixels: np.ndarray, is_float: bool) -> np.ndarray:
    """A 16-bit, 32-bit or float image (TIFF) as 8-bit: floats in [0, 1] times 255, 16-bit values beyond 255
    divided by 257, anything else beyond 0..255 scaled from the image's own range (a float image of other
    values was black or white before). Non-finite pixels count as 0."""
    pixels = np.where(np.isfinite(pixels), pixels, 0.0)
    low, high = float(pixels.min()), float(pixels.max())
    if is_float and low >= 0 and high <= 1:
        pixels = pixels * 255
    elif not (low >= 0 and high <= 255):
        if not is_float and low >= 0 and high <= 65535:
            pixels = pixels / 257
        else:
            pixels = (pixels - low) * (255 / ((high - low) or 1.0))
    return np.clip(np.rint(pixels) if is_float else pixels, 0, 255).astype(np.uint8)


@contextlib.contextmanager
def naming_the_file(name: str) -> Iterator[None]:
    """Pillow's pixel-limit warning (an image of 89 to 179 million pixels: decoded, but possibly a
    decompression bomb) names no file: re-issued naming `name`. Other warnings pass through as they were.
    For code that decodes one image at a time in a thread of its own (catch_warnings is process-wide)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        yield
    for w in caught:
        if issubclass(w.category, Image.DecompressionBombWarning):
            warnings.warn(f"{name}: {w.message}", Image.DecompressionBombWarning, stacklevel=3)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def probe(data: bytes) -> tuple[tuple[int, int], bool]:
    """(size, is_colour) from an image's header, without decoding the pixels."""
    with Image.open(io.BytesIO(data)) as img:
        return img.size, img.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def load_folder(path: str | Path, image_size: int | None = None, channels: int | None = None,
                val_fraction: float = 0.2, seed: int = 0, cache_dir: Path | None = None,
                cover: bool = False, exclude: frozenset[str] = frozenset()) -> FolderData:
    """Read a folder data set, decoding with all cores; a cache under `cache_dir` skips decoding next time.

    `image_size` (square) and `channels` default to the most common size and to 3 if any image has colour;
    `cover` resizes keeping the aspect ratio and crops the centre (see decode_image).
    Files that fail to decode are skipped, counted and listed; a class left without images is an error.
    """
    tree = open_tree(path)
    try:
        layout = find_layout(tree, val_fraction, seed, exclude)  # excluded files change the members, so the key
        key = _cache_key(tree, layout, (image_size, channels, val_fraction, seed, cover))
        data = _read_cache(cache_dir, key, layout) if cache_dir else None
        if data is None:
            data = _decode_all(tree, layout, image_size, channels, cover)
            if cache_dir:
                _write_cache(cache_dir, key, data)
    finally:
        tree.close()
    if data.skipped:  # on every load: the decoded images may come from the cache, the bad files are still there
        warn_skipped(tree.path, data.skipped, stacklevel=3)
    return data


def warn_skipped(origin: str | Path, skipped: list[str], stacklevel: int = 2) -> None:
    """One warning for image files that failed to decode ("path: reason" each), the first five named."""
    warnings.warn(f"{origin}: skipped {len(skipped)} file(s) that could not be decoded: "
                  + "; ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""), stacklevel=stacklevel)


def _decode_all(tree: FileTree, layout: FolderLayout, image_size: int | None, channels: int | None,
                cover: bool) -> FolderData:
    contents = tree.read_many([f for m in layout.members.values() for f, _ in m])
    raw = {s: [(f, lbl, contents[f]) for f, lbl in m] for s, m in layout.members.items()}
    skipped: list[str] = []
    headers: dict[str, tuple[tuple[int, int], bool]] = {}
    for items in raw.values():
        for f, _, data in items:
            try:
                if data is None:
                    raise OSError("cannot be read")
                if not data:
                    raise OSError("empty file")
                with naming_the_file(f"{tree.path}: {f}"):
                    headers[f] = probe(data)
            except Image.DecompressionBombError as e:
                raise UserError(f"{tree.path}: {f} is a decompression bomb ({e}); remove it") from None
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
                skipped.append(f"{f}: {unreadable_reason(e)}")
    if not headers:
        raise UserError(f"{tree.path}: none of the images could be decoded")
    if channels is None:
        channels = 3 if any(colour for _, colour in headers.values()) else 1
    if image_size is None:
        (w, h), _ = Counter(size for size, _ in headers.values()).most_common(1)[0]
        size = (w, h)
    else:
        size = (image_size, image_size)
    splits = {}
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        # Pillow decodes without the GIL. Its pixel-limit warnings were given above, naming the files.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for split, items in raw.items():
            todo = [(f, lbl, d) for f, lbl, d in items if f in headers]
            results = list(pool.map(lambda it: _decode_or_reason(it[2], size, channels, cover), todo))
            x, y = [], []
            for (f, lbl, _), (arr, reason) in zip(todo, results, strict=True):
                if arr is None:
                    skipped.append(f"{f}: {reason}")
                else:
                    x.append(arr)
                    y.append(lbl)
            shape = (size[1], size[0]) if channels == 1 else (size[1], size[0], 3)
            splits[split] = (np.stack(x) if x else np.zeros((0, *shape), np.uint8), np.asarray(y, dtype=np.int64))
    for split, (_, y) in splits.items():
        empty = [c for i, c in enumerate(layout.class_names) if split == "train" and not (y == i).any()]
        if empty:
            raise UserError(f"{tree.path}: class(es) {', '.join(empty)} have no readable training images; "
                            "add images or remove the folder")
    return FolderData(str(tree.path), layout.class_names, splits, skipped)


def _decode_or_reason(data: bytes, size, channels, cover) -> tuple[np.ndarray | None, str]:
    try:
        return decode_image(data, size, channels, cover), ""
    except Image.DecompressionBombError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return None, unreadable_reason(e)


def unreadable_reason(e: BaseException) -> str:
    """Why an image file could not be decoded, in one short line."""
    if isinstance(e, UnidentifiedImageError):  # Pillow's text names an in-memory buffer by its address
        return "not an image Pillow can identify"
    return first_line(e)[:120]


def _cache_key(tree: FileTree, layout: FolderLayout, options: tuple) -> str:
    h = hashlib.sha256()
    for part in (CACHE_VERSION, tree.stamp(), repr(layout.members), repr(options)):
        h.update(part.encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:32]


def _read_cache(cache_dir: Path, key: str, layout: FolderLayout) -> FolderData | None:
    """The cached decode of this key, if the entry proves it is one: its own recorded key, the layout's classes
    and splits, consistent arrays and the digest of its content. Anything else is discarded (and rebuilt by the
    caller) with a warning: a cache must never change what a run trains on."""
    path = cache_dir / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            recorded_key, digest = str(npz["key"]), str(npz["digest"])
            meta = npz["meta"].tolist()
            class_names = tuple(npz["class_names"].tolist())
            splits = {s: (npz[f"x_{s}"], npz[f"y_{s}"]) for s in SPLIT_NAMES if f"x_{s}" in npz.files}
            skipped = npz["skipped"].tolist()
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        problem = "unreadable"
    else:
        data = FolderData(meta, class_names, splits, skipped)
        problem = ("recorded for another key" if recorded_key != key else
                   "other classes than the folder's" if class_names != tuple(layout.class_names) else
                   "other splits than the folder's" if set(splits) != set(layout.members) else
                   "inconsistent arrays" if not all(x.dtype == np.uint8 and len(x) == len(y) and
                                                    (len(y) == 0 or 0 <= y.min() <= y.max() < len(class_names))
                                                    for x, y in splits.values()) else
                   "content that does not match its digest" if _digest(data) != digest else None)
        if problem is None:
            return data
    warnings.warn(f"{path}: decoded-image cache entry discarded ({problem}); decoding the images again",
                  stacklevel=3)
    path.unlink(missing_ok=True)
    return None


def _digest(data: FolderData) -> str:
    """Of everything an entry holds, so that an entry edited or damaged after writing is told apart."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((data.origin, tuple(data.class_names), list(data.skipped))).encode("utf-8", "surrogateescape"))
    for s in sorted(data.splits):
        for a in data.splits[s]:
            h.update(f"{s}{a.dtype}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def _write_cache(cache_dir: Path, key: str, data: FolderData) -> None:
    """Best effort: a cache that cannot be written costs the next run a decode, nothing more."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        warnings.warn(f"{cache_dir}: cannot cache decoded images ({e.strerror}); they will be decoded again",
                      stacklevel=3)
        return
    arrays = {"meta": np.asarray(data.origin), "class_names": np.asarray(data.class_names),
              "skipped": np.asarray(data.skipped, dtype=str), "key": np.asarray(key),
              "digest": np.asarray(_digest(data))}
    for s, (x, y) in data.splits.items():
        arrays[f"x_{s}"], arrays[f"y_{s}"] = x, y
    tmp = cache_dir / f".{key}.{os.getpid()}.tmp.npz"
    try:
        np.savez(tmp, **arrays)
        tmp.replace(cache_dir / f"{key}.npz")
    except OSError as e:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"{cache_dir}: cannot cache decoded images ({e.strerror}); they will be decoded again",
                      stacklevel=3)
