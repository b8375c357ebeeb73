"""The IDX reader: MNIST's four files, gzipped or raw, their headers checked against their sizes before any image
is read, no file inflated beyond what its header declares (a gzip bomb is refused at its header).
"""
from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.data.dataset import NUM_CLASSES, DataError

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
# The most an IDX file may declare (decompressed; MNIST's largest declares 47,040,016 bytes). A header promising
# more is refused before any of the file is read, so a gzip bomb is never inflated.
MAX_IDX_BYTES = 1 << 30
CHUNK_BYTES = 1 << 20  # files are read and inflated this much at a time
GZIP_MIN_BYTES = 18  # a 10-byte header and an 8-byte trailer


def idx_candidates(folder: Path) -> list[Path]:
    """Every file name the loader may open in an MNIST folder, in the order it tries them (.gz first)."""
    return [folder / name for stem in IDX_FILES.values() for name in (f"{stem}.gz", stem)]


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder / stem}(.gz): missing")


def _pieces(path: Path, limit: int) -> Iterator[bytes]:
    """The file's bytes (decompressed for .gz) in pieces of at most CHUNK_BYTES, stopping after `limit`:
    a gzip bomb is never inflated beyond the limit, and never more than one piece of it is held."""
    with path.open("rb") as f:
        if path.suffix != ".gz":
            while limit > 0 and (piece := f.read(min(CHUNK_BYTES, limit))):
                limit -= len(piece)
                yield piece
            return
        inflate = zlib.decompressobj(wbits=31)  # one gzip member
        pending, at_end = b"", False
        while limit > 0 and not inflate.eof:
            if not pending:
                pending = f.read(CHUNK_BYTES)
                at_end = not pending  # then decompress(b"") still drains what zlib holds back
            piece = inflate.decompress(pending, min(CHUNK_BYTES, limit))
            pending = inflate.unconsumed_tail
            if not piece and at_end:
                return  # the stream ends early: the caller sees fewer bytes than it asked for
            limit -= len(piece)
            yield piece


def read_bounded(path: Path, limit: int) -> bytearray:
    """At most `limit` bytes of the file, decompressed for .gz; DataError naming the file if it cannot be read."""
    out = bytearray()
    try:
        for piece in _pieces(path, limit):
            out += piece
    except (OSError, zlib.error) as err:
        raise DataError(f"{path}: cannot be read: {err}") from None
    return out


def _stored_size(path: Path) -> int:
    """The file's size; for .gz the gzip trailer's ISIZE (the decompressed size mod 2^32), read without inflating."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            if path.suffix != ".gz":
                return size
            if size < GZIP_MIN_BYTES:
                raise DataError(f"{path}: cannot be read: {size} bytes is too short for a gzip file")
            f.seek(-4, os.SEEK_END)
            (isize,) = struct.unpack("<I", f.read(4))
            return int(isize)
    except OSError as err:
        raise DataError(f"{path}: cannot be read: {err}") from None


@dataclass(frozen=True)
class IdxHeader:
    """One IDX file as its 8- or 16-byte header declares it; `nbytes` is the whole (decompressed) file."""
    path: Path
    dims: tuple[int, ...]

    @property
    def header_bytes(self) -> int:
        return 4 + 4 * len(self.dims)

    @property
    def nbytes(self) -> int:
        return self.header_bytes + math.prod(self.dims)  # Python integers: no wrap-around


def read_idx_header(path: Path, magic: int, max_bytes: int = MAX_IDX_BYTES) -> IdxHeader:
    """Read only the header of an IDX file (streaming for .gz) and check it against the file's stored size.

    Refuses images that are not square or smaller than 1x1, and a declared size above max_bytes."""
    ndim = 3 if magic == IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    data = read_bounded(path, header)
    if len(data) < header:
        raise DataError(f"{path}: truncated header ({len(data)} bytes)")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise DataError(f"{path}: wrong magic number {found:#010x}, expected {magic:#010x}")
    head = IdxHeader(path, struct.unpack(f">{ndim}I", data[4:header]))
    if ndim == 3:
        n, rows, cols = head.dims
        if rows < 1 or cols < 1:
            raise DataError(f"{path}: images of {rows}x{cols} pixels; they must be at least 1x1")
        if rows != cols:
            raise DataError(f"{path}: images of {rows}x{cols} pixels are not square")
    if head.dims[0] < 1:
        raise DataError(f"{path}: holds no examples")
    if head.nbytes > max_bytes:
        raise DataError(f"{path}: the header declares {' x '.join(map(str, head.dims))} entries, "
                        f"{head.nbytes:,} bytes, above the limit of {max_bytes:,} bytes per file")
    stored = _stored_size(path)
    if path.suffix == ".gz" and stored != head.nbytes % 2**32:
        raise DataError(f"{path}: truncated or overlong: its gzip trailer gives {stored:,} bytes (mod 2^32), "
                        f"the header promises {head.nbytes:,}")
    if path.suffix != ".gz" and stored < head.nbytes:
        raise DataError(f"{path}: truncated: {stored - header} data bytes, header promises {head.nbytes - header}")
    if path.suffix != ".gz" and stored > head.nbytes:
        raise DataError(f"{path}: {stored - head.nbytes} bytes after the {head.nbytes - header} data bytes the "
                        "header promises")
    return head


def _check_labels(head: IdxHeader) -> None:
    """Stream the labels (bounded by the header's size) and refuse any above NUM_CLASSES - 1."""
    at = 0
    try:
        for piece in _pieces(head.path, head.nbytes):
            labels = np.frombuffer(piece, dtype=np.uint8)[max(0, head.header_bytes - at):]
            at += len(piece)
            if labels.size and int(labels.max()) >= NUM_CLASSES:
                raise DataError(f"{head.path}: label above {NUM_CLASSES - 1}")
    except (OSError, zlib.error) as err:
        raise DataError(f"{head.path}: cannot be read: {err}") from None
    if at < head.nbytes:
        raise DataError(f"{head.path}: truncated: {at - head.header_bytes} data bytes, header promises "
                        f"{head.nbytes - head.header_bytes}")


def _inspect(root: Path, max_bytes: int) -> dict[str, IdxHeader]:
    if not root.is_dir():
        raise DataError(f"{root}: MNIST folder missing")
    heads = {key: read_idx_header(_find_idx(root, stem), IMAGES_MAGIC if key.endswith("images") else LABELS_MAGIC,
                                  max_bytes)
             for key, stem in IDX_FILES.items()}
    train, test = heads["train_images"].dims, heads["test_images"].dims
    if train[1:] != test[1:]:
        raise DataError(f"{heads['test_images'].path}: images of {test[1]}x{test[2]} pixels, the training images "
                        f"are {train[1]}x{train[2]}")
    for split in ("train", "test"):
        n_img, n_lab = heads[f"{split}_images"].dims[0], heads[f"{split}_labels"].dims[0]
        if n_img != n_lab:
            raise DataError(f"{root}: {split} image and label counts disagree ({n_img} images, {n_lab} labels)")
        _check_labels(heads[f"{split}_labels"])
    return heads


@dataclass(frozen=True)
class MnistHeaders:
    """What an MNIST folder's four IDX files declare, checked against their sizes, without loading any image."""
    folder: Path
    n_train: int  # training images, dev not yet held out
    n_test: int
    rows: int
    cols: int


def inspect_mnist_folder(folder: str | os.PathLike[str], max_bytes: int = MAX_IDX_BYTES) -> MnistHeaders:
    """Check an MNIST folder reading only the image files' headers (the labels are small and read in full).

    For .gz only the header bytes are inflated; the gzip trailer's size must match what the header declares."""
    root = Path(folder)
    heads = _inspect(root, max_bytes)
    n_train, rows, cols = heads["train_images"].dims
    return MnistHeaders(root, n_train, heads["test_images"].dims[0], rows, cols)


def read_mnist_folder(folder: str | os.PathLike[str], max_bytes: int = MAX_IDX_BYTES,
                      keys: tuple[str, ...] = tuple(IDX_FILES)) -> dict[str, np.ndarray]:
    """The standard MNIST arrays (uint8) named by `keys` (IDX_FILES' keys, all four by default) from a folder of
    IDX files, gzipped or raw.

    The headers pass inspect_mnist_folder's checks first; no file is inflated beyond what its header declares."""
    out: dict[str, np.ndarray] = {}
    for key, head in _inspect(Path(folder), max_bytes).items():
        if key not in keys:
            continue
        data = read_bounded(head.path, head.nbytes)
        if len(data) < head.nbytes:
            raise DataError(f"{head.path}: truncated: {len(data) - head.header_bytes} data bytes, header promises "
                            f"{head.nbytes - head.header_bytes}")
        out[key] = np.frombuffer(data, dtype=np.uint8, offset=head.header_bytes).reshape(head.dims)
    return out


