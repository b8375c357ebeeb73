"""IDX reader on small files the tests write (each corrupt case), the paper's split, bundled data sets."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from workers.data import DataError, load_dataset, load_digits, load_mnist, make_synthetic, read_mnist_folder


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
