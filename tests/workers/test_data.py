"""IDX reader on small files the tests write (each corrupt case), header inspection and its caps (dimensions
past 2^64, empty and non-square images, gzip bombs), the paper's split, bundled data sets."""
from __future__ import annotations

import gzip
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from workers.data import (
    DataError,
    MnistHeaders,
    describe_dataset,
    inspect_mnist_folder,
    load_dataset,
    load_digits,
    load_mnist,
    make_synthetic,
    read_bounded,
    read_mnist_folder,
)


def write_idx(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = True, side: int = 28,
              n_train_labels: int | None = None, magic: int = 2051, truncate: int = 0) -> None:
    rng = np.random.default_rng(0)

    def put(stem: str, payload: bytes) -> None:
        path = folder / (stem + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(payload) if gz else payload)

    for split, n, n_lab in (("train", n_train, n_train_labels or n_train), ("t10k", n_test, n_test)):
        images = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
        head = struct.pack(">IIII", magic if split == "train" else 2051, n, side, side)
        body = images.tobytes()
        put(f"{split}-images-idx3-ubyte", head + (body[:-truncate] if truncate and split == "train" else body))
        labels = rng.integers(0, 10, size=n_lab, dtype=np.uint8)
        put(f"{split}-labels-idx1-ubyte", struct.pack(">II", 2049, n_lab) + labels.tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_reads_gzip_and_raw(tmp_path: Path, gz: bool) -> None:
    write_idx(tmp_path, gz=gz)
    arrays = read_mnist_folder(tmp_path)
    assert arrays["train_images"].shape == (30, 28, 28)
    assert arrays["train_labels"].shape == (30,)
    assert arrays["test_images"].shape == (10, 28, 28)


def test_missing_file_is_named(tmp_path: Path) -> None:
    write_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*missing"):
        read_mnist_folder(tmp_path)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="folder missing"):
        read_mnist_folder(tmp_path / "nope")


def test_wrong_magic_is_named(tmp_path: Path) -> None:
    write_idx(tmp_path, magic=0x0803FFFF)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: wrong magic number"):
        read_mnist_folder(tmp_path)


def test_truncated_file_is_named(tmp_path: Path) -> None:
    write_idx(tmp_path, truncate=100)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: truncated"):
        read_mnist_folder(tmp_path)


def test_truncated_header(tmp_path: Path) -> None:
    write_idx(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00"))
    with pytest.raises(DataError, match="truncated header"):
        read_mnist_folder(tmp_path)


def test_count_mismatch_is_named(tmp_path: Path) -> None:
    write_idx(tmp_path, n_train_labels=29)
    with pytest.raises(DataError, match=r"train image and label counts disagree \(30 images, 29 labels\)"):
        read_mnist_folder(tmp_path)


def test_not_gzip_is_named(tmp_path: Path) -> None:
    write_idx(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: cannot be read"):
        read_mnist_folder(tmp_path)


def test_paper_split_and_standardisation(tmp_path: Path) -> None:
    write_idx(tmp_path, n_train=50, n_test=10)
    ds = load_mnist(tmp_path, dev_size=20, seed=3)
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_dev.shape == (20, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert abs(float(ds.x_train.mean())) < 1e-4 and abs(float(ds.x_train.std()) - 1) < 1e-3
    again = load_mnist(tmp_path, dev_size=20, seed=3)
    assert np.array_equal(ds.x_dev, again.x_dev)  # the shuffle is seeded
    other = load_mnist(tmp_path, dev_size=20, seed=4)
    assert not np.array_equal(ds.y_train, other.y_train)


def test_dev_size_must_fit(tmp_path: Path) -> None:
    write_idx(tmp_path, n_train=30)
    with pytest.raises(DataError, match="data.dev_size"):
        load_mnist(tmp_path, dev_size=30)


def test_bundled_sets() -> None:
    digits = load_digits(seed=1)
    assert digits.x_train.shape[1:] == (1, 8, 8) and len(digits.x_test) == 300
    assert len(digits.x_train) + len(digits.x_dev) + len(digits.x_test) == 1797
    synth = make_synthetic(seed=1)
    assert synth.image_side == 16 and set(np.unique(synth.y_train)) <= set(range(10))


def test_mnist_needs_a_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HES_MNIST_DIR", raising=False)
    with pytest.raises(DataError, match="data.path"):
        load_dataset("mnist", None, None, 1)


def put_train_images(folder: Path, n: int, rows: int, cols: int, body: bytes) -> Path:
    """Replace the training images (gzip) by a header declaring n x rows x cols and the given pixel bytes."""
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(struct.pack(">IIII", 2051, n, rows, cols) + body))
    return folder / "train-images-idx3-ubyte.gz"


def write_bomb(path: Path, head: bytes, zeros: int) -> None:
    """A gzip file of `head` and then `zeros` zero bytes, compressed a MiB at a time (never held whole here)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    with path.open("wb") as f:
        f.write(deflate.compress(head))
        for _ in range(zeros // len(chunk)):
            f.write(deflate.compress(chunk))
        f.write(deflate.flush())


def peak_bytes(fn: Callable[[], Any]) -> int:
    """The most memory Python allocated while fn ran (its exception, if any, is swallowed)."""
    tracemalloc.start()
    try:
        fn()
    except DataError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("gz", [True, False])
def test_inspection_reads_the_headers(tmp_path: Path, gz: bool) -> None:
    write_idx(tmp_path, n_train=30, n_test=10, gz=gz)
    assert inspect_mnist_folder(tmp_path) == MnistHeaders(tmp_path, n_train=30, n_test=10, rows=28, cols=28)
    facts = describe_dataset("mnist", str(tmp_path), 5, 1)
    assert (facts.n_train, facts.n_dev, facts.n_test, facts.image_side) == (25, 5, 10, 28)
    with pytest.raises(DataError, match="data.dev_size: 30 must be at least 1 and below the 30 training images"):
        describe_dataset("mnist", str(tmp_path), 30, 1)


def test_dimensions_past_2_64_do_not_wrap_around(tmp_path: Path) -> None:
    """2^22 images of 2^21 x 2^21 pixels: 2^64 bytes, which np.prod turned into 0."""
    write_idx(tmp_path)
    path = put_train_images(tmp_path, 2**22, 2**21, 2**21, b"")
    with pytest.raises(DataError, match=rf"^{path}: the header declares 4194304 x 2097152 x 2097152 entries, "
                                        r"18,446,744,073,709,551,632 bytes, above the limit of 1,073,741,824"):
        read_mnist_folder(tmp_path)


@pytest.mark.parametrize(("rows", "cols", "fault"), [(0, 0, "0x0 pixels; they must be at least 1x1"),
                                                      (0, 5, "0x5 pixels; they must be at least 1x1"),
                                                      (28, 27, "28x27 pixels are not square")])
def test_images_must_be_square_and_not_empty(tmp_path: Path, rows: int, cols: int, fault: str) -> None:
    write_idx(tmp_path)
    path = put_train_images(tmp_path, 30, rows, cols, bytes(30 * rows * cols))
    with pytest.raises(DataError, match=f"^{path}: images of {fault}"):
        load_mnist(tmp_path, dev_size=10)


def test_train_and_test_images_must_have_one_size(tmp_path: Path) -> None:
    write_idx(tmp_path)
    put_train_images(tmp_path, 30, 27, 27, bytes(30 * 27 * 27))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: images of 28x28 pixels, the training images "
                                        r"are 27x27"):
        read_mnist_folder(tmp_path)


def test_raw_file_longer_than_its_header_is_refused(tmp_path: Path) -> None:
    write_idx(tmp_path, gz=False)
    with (tmp_path / "t10k-labels-idx1-ubyte").open("ab") as f:
        f.write(b"\x01\x02")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: 2 bytes after the 10 data bytes"):
        read_mnist_folder(tmp_path)


def test_labels_above_9_are_refused(tmp_path: Path) -> None:
    write_idx(tmp_path)
    labels = struct.pack(">II", 2049, 10) + bytes(9) + b"\x0a"
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: label above 9"):
        inspect_mnist_folder(tmp_path)


BOMB_ZEROS = 64 << 20  # 64 MiB of zeros: about 64 kB of gzip


def test_gzip_bomb_is_refused_without_inflating_it(tmp_path: Path) -> None:
    """A header promising 30 small images, followed by 64 MiB of zeros: the trailer's size gives it away."""
    write_idx(tmp_path)
    write_bomb(tmp_path / "train-images-idx3-ubyte.gz", struct.pack(">IIII", 2051, 30, 28, 28), BOMB_ZEROS)
    for load in (lambda: inspect_mnist_folder(tmp_path), lambda: read_mnist_folder(tmp_path)):
        with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: truncated or overlong: its gzip "
                                            rf"trailer gives {16 + BOMB_ZEROS:,} bytes \(mod 2\^32\), the header "
                                            r"promises 23,536"):
            load()
        assert peak_bytes(load) < 8 << 20  # never more than a few MiB of it in memory


def test_bounded_read_inflates_no_more_than_asked(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.gz"
    write_bomb(bomb, b"head", BOMB_ZEROS)
    assert read_bounded(bomb, 1000) == b"head" + bytes(996)
    assert peak_bytes(lambda: read_bounded(bomb, 3 << 20)) < 8 << 20
    rng = np.random.default_rng(0)
    text = rng.integers(0, 4, size=3 << 20, dtype=np.uint8).tobytes()  # several MiB pieces, many zlib blocks
    (tmp_path / "plain.gz").write_bytes(gzip.compress(text, compresslevel=1))
    assert read_bounded(tmp_path / "plain.gz", len(text) + 10) == text
    assert read_bounded(tmp_path / "plain.gz", 12345) == text[:12345]
