"""A read-only view of a folder, a .zip or a .tar(.gz) archive: list files, read bytes, never escape the root."""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ..errors import UserError, first_line

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
# The most one file or archive member may hold: 512 MiB is well above any real image (an uncompressed 8-bit
# RGBA image at Pillow's pixel limit, 89.5 Mpixels, is 358 MB; photos are a few MB), and bounds what a
# member that inflates without end (a zip bomb) can take.
MAX_FILE_BYTES = 512 << 20
_CHUNK = 1 << 20


def check_size(what: str, size: int) -> None:
    """Refuse a file or member (`what` names it) whose declared size is beyond MAX_FILE_BYTES, before reading."""
    if size > MAX_FILE_BYTES:
        raise UserError(f"{what} holds {size / 2**20:,.0f} MiB, beyond the {MAX_FILE_BYTES >> 20} MiB "
                        "allowed for one image (a decompression bomb?); remove it")


def read_bounded(f, what: str, declared: int) -> bytes:
    """Read an open file or member (`what` names it) of `declared` size in chunks, stopping as soon as it
    holds more."""
    check_size(what, declared)
    chunks, total = [], 0
    while chunk := f.read(min(_CHUNK, declared + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > declared:
            raise UserError(f"{what} inflates beyond its declared {declared:,} bytes; the archive is "
                            "corrupt or hostile, remove it")
    return b"".join(chunks)


def read_regular_file(path: Path) -> bytes:
    """A regular file's bytes, within MAX_FILE_BYTES; a FIFO, device or socket is refused without blocking."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO without O_NONBLOCK waits for a writer
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"not a regular file ({_file_kind(st.st_mode)}); give image files")
        return read_bounded(f, str(path), st.st_size)


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "not a plain file"


class FileTree:
    """Files under a root, addressed by relative POSIX paths; hidden files and folders are left out."""

    def __init__(self, path: Path):
        self.path = path

    def files(self) -> dict[str, int]:
        """Relative path -> size in bytes, plus a stamp that changes when the file does (see `stamp`)."""
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def folders(self) -> set[str]:
        """Relative paths of the folders the tree lists, empty ones included."""
        return self._folders

    def stamp(self) -> str:
        """What identifies this tree's content for caching: sizes and modification times."""
        st = self.path.stat()  # an archive: the file itself
        return f"{self.path.resolve()}\t{st.st_size}\t{st.st_mtime_ns}"

    def read_many(self, names: list[str]) -> dict[str, bytes | None]:
        """Bytes of each name (None where unreadable), read in the tree's own order (cheap for .tar.gz)."""
        order = {n: i for i, n in enumerate(self.files())}
        out = {}
        for name in sorted(names, key=order.__getitem__):
            try:
                out[name] = self.read(name)
            except PermissionError:
                out[name] = None
        return out

    def close(self) -> None:
        pass


def open_tree(path: str | Path) -> FileTree:
    """Open a folder, a zip or a tar archive as a FileTree; archives are read in place and checked for escapes."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder; give a folder of class folders, or a .zip / .tar.gz of one")
    if path.is_dir():
        return DirectoryTree(path)
    name = path.name.lower()
    if name.endswith(".zip"):
        return ZipTree(path)
    if name.endswith(TAR_SUFFIXES):
        return TarTree(path)
    raise UserError(f"{path}: not a folder, .zip or .tar(.gz); give a folder of class folders or an archive of one")


def _hidden(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _safe_member(archive: Path, name: str) -> PurePosixPath | None:
    """The member's path, refusing absolute paths and '..'; None for hidden entries."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and p.parts[0].endswith(":")):
        raise UserError(f"{archive}: member {name!r} points outside the archive; refusing to read it")
    return None if _hidden(p.parts) else p


class DirectoryTree(FileTree):
    def __init__(self, path: Path):
        super().__init__(path)
        self._files: dict[str, os.stat_result] = {}
        self._folders: set[str] = set()
        root = path.resolve()
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not _hidden((d,)))
            self._folders.update((Path(dirpath) / d).relative_to(path).as_posix() for d in dirnames)
            for f in sorted(filenames):
                full = Path(dirpath) / f
                if _hidden((f,)):
                    continue
                if full.is_symlink() and not full.resolve().is_relative_to(root):
                    continue  # a link out of the data set is not part of it
                try:
                    st = full.stat()
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    self._files[full.relative_to(path).as_posix()] = st

    def files(self) -> dict[str, int]:
        return {n: st.st_size for n, st in self._files.items()}

    def read(self, name: str) -> bytes:
        return read_regular_file(self.path / name)

    def stamp(self) -> str:
        return "\n".join(f"{n}\t{st.st_size}\t{st.st_mtime_ns}" for n, st in sorted(self._files.items()))


class _ArchiveTree(FileTree):
    """An archive read through a file handle of this process: a handle inherited across fork (a DataLoader
    worker) shares its file offset with the parent's, so another process opens its own, lazily."""

    _handle: object = None
    _pid = 0

    def _open(self) -> object:
        raise NotImplementedError

    def handle(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = self._open(), os.getpid()
        return self._handle

    def __getstate__(self) -> dict:  # pickled for a spawned worker: the member table, not the handle
        return {**self.__dict__, "_handle": None, "_pid": 0}

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None


class ZipTree(_ArchiveTree):
    def __init__(self, path: Path):
        super().__init__(path)
        try:
            archive = self.handle()
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise UserError(f"{path}: not a readable zip archive ({e}); re-create or re-download it") from None
        self._members: dict[str, zipfile.ZipInfo] = {}
        self._folders: set[str] = set()
        for info in archive.infolist():
            if info.is_dir():
                member = _safe_member(path, info.filename.rstrip("/"))
                if member is not None:
                    self._folders.add(member.as_posix())
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UserError(f"{path}: member {info.filename!r} is a symbolic link; refusing links in archives")
            member = _safe_member(path, info.filename)
            if member is not None:
                self._members[member.as_posix()] = info

    def _open(self) -> zipfile.ZipFile:
        return zipfile.ZipFile(self.path)

    def files(self) -> dict[str, int]:
        return {n: i.file_size for n, i in self._members.items()}

    def read(self, name: str) -> bytes:
        info = self._members[name]
        try:
            with self.handle().open(info) as f:
                return read_bounded(f, f"{self.path}: member {name!r}", info.file_size)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
            raise UserError(f"{self.path}: member {name!r} cannot be read ({e}); the archive is truncated or corrupt") from None



def tar_error(e: BaseException) -> str:
    """tarfile's reason in one line: for a file no method opens it lists every method tried, line by line."""
    if isinstance(e, tarfile.ReadError) and "could not be opened successfully" in str(e):
        return "not a tar file, nor one compressed with gzip, bzip2 or xz"
    return first_line(e)


class TarTree(_ArchiveTree):
    def __init__(self, path: Path):
        super().__init__(path)
        try:
            infos = self.handle().getmembers()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise UserError(f"{path}: not a readable tar archive ({tar_error(e)}); re-create or re-download it") from None
        self._members: dict[str, tarfile.TarInfo] = {}
        self._folders: set[str] = set()
        for info in infos:
            member = _safe_member(path, info.name)
            if member is not None and info.isdir():
                self._folders.add(member.as_posix())
            if info.issym() or info.islnk():
                target = PurePosixPath(info.linkname)
                if target.is_absolute() or ".." in target.parts:
                    raise UserError(f"{path}: link {info.name!r} points outside the archive ({info.linkname}); "
                                    "refusing to read it")
                continue  # links inside the archive are duplicates; skip them
            if member is not None and info.isfile():
                self._members[member.as_posix()] = info

    def _open(self) -> tarfile.TarFile:
        return tarfile.open(self.path)

    @property
    def compressed(self) -> bool:
        """A .tar.gz (.bz2, .xz) is read front to back: reading its members out of order decompresses again."""
        return not self.path.name.lower().endswith(".tar")

    def files(self) -> dict[str, int]:
        return {n: i.size for n, i in self._members.items()}

    def read(self, name: str) -> bytes:
        info = self._members[name]
        try:
            f = self.handle().extractfile(info)
            data = read_bounded(f, f"{self.path}: member {name!r}", info.size) if f is not None else b""
        except (tarfile.TarError, EOFError, OSError) as e:
            raise UserError(f"{self.path}: member {name!r} cannot be read ({e}); the archive is truncated or corrupt") from None
        if len(data) != self._members[name].size:
            raise UserError(f"{self.path}: member {name!r} is cut short; the archive is truncated")
        return data
