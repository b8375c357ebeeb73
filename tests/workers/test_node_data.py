"""A worker's training arrays built on its own node or shipped in their stored dtype: bitwise the coordinator's
float arrays (the paper's standardisation), every built-in and user data set, dirichlet partitions, and the reasons
a node cannot build them."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.workers.test_data import write_idx
from workers.data import keep_classes, load_dataset, load_mnist
from workers.node_data import DataRecipe, build, digest, read_here
from workers.partition import dirichlet_partition


def test_stored_mnist_is_uint8_and_standardises_bitwise_as_before(tmp_path: Path) -> None:
    write_idx(tmp_path, n_train=60, n_test=10, gz=False)
    ds = load_mnist(tmp_path, dev_size=20, seed=3)
    s = ds.stored
    assert s is not None and s.x.dtype == np.uint8 and s.y.dtype == np.uint8
    assert s.nbytes * 4 == ds.x_train.nbytes + 4 * len(ds.y_train)  # a quarter of the float32 pixels
    x, y = s.arrays()
    assert x.dtype == ds.x_train.dtype and x.tobytes() == ds.x_train.tobytes()
    assert y.dtype == np.int64 and np.array_equal(y, ds.y_train)
    # the standardisation as it was written before the stored arrays were kept: shuffle, float32, dev off, scale
    raw = np.frombuffer((tmp_path / "train-images-idx3-ubyte").read_bytes()[16:], np.uint8).reshape(60, 28, 28)
    order = np.random.default_rng(3).permutation(60)
    f = raw[order].astype(np.float32)[20:]
    mean, std = float(f.mean()), float(f.std())
    assert (((f - mean) / std).reshape(40, 1, 28, 28)).tobytes() == x.tobytes()


@pytest.mark.parametrize("dataset", ["digits", "synthetic"])
def test_built_in_sets_standardise_bitwise(dataset: str) -> None:
    ds = load_dataset(dataset, None, None, 5)
    assert ds.stored is not None
    x, y = ds.stored.arrays()
    assert x.tobytes() == ds.x_train.tobytes() and y.tobytes() == ds.y_train.tobytes()
    kept = keep_classes(ds, [1, 7])
    assert kept.stored is not None
    xk, yk = kept.stored.arrays()
    assert xk.tobytes() == kept.x_train.tobytes() and yk.tobytes() == kept.y_train.tobytes()


def test_a_node_builds_what_the_coordinator_built(tmp_path: Path) -> None:
    """mnist from data.path, with data.classes and each dirichlet slot's partition: the digest matches."""
    write_idx(tmp_path, n_train=80, n_test=10, gz=True)
    ds = keep_classes(load_mnist(tmp_path, dev_size=20, seed=3), [0, 1, 2, 3, 4, 5])
    assert ds.stored is not None
    parts = dirichlet_partition(ds.y_train, 3, 0.5, 3)
    recipe = DataRecipe("mnist", str(tmp_path), 20, 3, classes=[0, 1, 2, 3, 4, 5])
    for p in parts:
        mine = ds.stored.take(p)
        got = read_here(recipe, p.astype(np.int32), digest(mine))
        assert not isinstance(got, str) and got.x.dtype == np.uint8 and got.x.tobytes() == mine.x.tobytes()
        assert got.arrays()[0].tobytes() == ds.x_train[p].tobytes()


def test_npz_and_factory_are_built_on_the_node(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 255, (50, 6), dtype=np.uint8), "y_train": rng.integers(0, 2, 50),
              "x_test": rng.normal(size=(10, 6)), "y_test": rng.integers(0, 2, 10)}
    np.savez(tmp_path / "own.npz", **arrays)
    ds = load_dataset("npz", str(tmp_path / "own.npz"), None, 1)
    assert ds.stored is None and ds.stored_train.x.dtype == np.uint8  # a job's own arrays stay as they are
    got = read_here(DataRecipe("npz", str(tmp_path / "own.npz"), None, 1), None, digest(ds.stored_train))
    assert not isinstance(got, str) and got.arrays()[0].tobytes() == ds.x_train.tobytes()
    kwargs = {"path": str(tmp_path / "bc.npz")}
    fac = load_dataset("factory", None, None, 1, "examples.tabular:breast_cancer", kwargs)
    recipe = DataRecipe("factory", None, None, 1, "examples.tabular:breast_cancer", kwargs)
    assert build(recipe).x.tobytes() == fac.x_train.tobytes()


def test_a_node_that_cannot_build_the_data_says_why(tmp_path: Path) -> None:
    for name, n in (("a", 40), ("b", 41)):
        (tmp_path / name).mkdir()
        write_idx(tmp_path / name, n_train=n, n_test=10)
    ds = load_mnist(tmp_path / "a", dev_size=10, seed=1)
    assert ds.stored is not None
    want = digest(ds.stored)
    assert not isinstance(read_here(DataRecipe("mnist", str(tmp_path / "a"), 10, 1), None, want), str)
    other = read_here(DataRecipe("mnist", str(tmp_path / "b"), 10, 1), None, want)  # another file at the path
    assert isinstance(other, str) and "differs from the coordinator's" in other
    shutil.rmtree(tmp_path / "a")  # the path as a node without the coordinator's file system sees it
    gone = read_here(DataRecipe("mnist", str(tmp_path / "a"), 10, 1), None, want)
    assert isinstance(gone, str) and gone.startswith("DataError: ") and "missing" in gone
    missing = read_here(DataRecipe("factory", None, None, 1, "no_such_module:data"), None, want)
    assert isinstance(missing, str) and "cannot import 'no_such_module'" in missing
