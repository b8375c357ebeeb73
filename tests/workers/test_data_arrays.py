"""A job's own data (.npz or a data.factory): every fault named with its array and problem; dev split; the
model's output checked against the targets before any round."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from workers.data import DataError, check_fit, from_arrays, load_dataset, load_npz
from workers.module_model import module_model


def arrays(n: int = 40, features: int = 30, classes: int = 2, **extra: Any) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {"x_train": rng.normal(size=(n, features)), "y_train": rng.integers(0, classes, n),
           "x_test": rng.normal(size=(10, features)), "y_test": rng.integers(0, classes, 10)}
    out.update(extra)
    return out


def save(tmp_path: Path, a: dict[str, np.ndarray]) -> str:
    path = tmp_path / "data.npz"
    np.savez(path, **a)
    return str(path)


def refused(tmp_path: Path, a: dict[str, np.ndarray], loss: str = "cross_entropy") -> str:
    with pytest.raises(DataError) as err:
        load_npz(save(tmp_path, a), None, 0, loss)
    return str(err.value)


def test_a_good_file_loads_with_a_seeded_dev_split(tmp_path: Path) -> None:
    data = load_dataset("npz", save(tmp_path, arrays()), None, 3)
    assert (len(data.x_train), len(data.x_dev), len(data.x_test)) == (32, 8, 10)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64  # float64 in the file
    again = load_dataset("npz", save(tmp_path, arrays()), None, 3)
    assert np.array_equal(again.x_dev, data.x_dev)
    own_dev = arrays(x_dev=np.zeros((5, 30)), y_dev=np.ones(5, dtype=np.int64))
    data = load_npz(save(tmp_path, own_dev), None, 0)
    assert len(data.x_train) == 40 and len(data.x_dev) == 5
    with pytest.raises(DataError, match=r"^data\.dev_size: .* brings x_dev and y_dev"):
        load_npz(save(tmp_path, own_dev), 3, 0)
    tokens = load_npz(save(tmp_path, arrays(x_train=np.zeros((40, 8), dtype=np.int32),
                                           x_test=np.zeros((10, 8), dtype=np.int32))), None, 0)
    assert tokens.x_train.dtype == np.int32  # token ids stay integers


def test_every_bad_file_names_the_array_and_the_problem(tmp_path: Path) -> None:
    a = arrays()
    del a["y_test"]
    assert refused(tmp_path, a).endswith("data.npz: no array 'y_test' (it holds x_train, y_train, x_test)")
    assert refused(tmp_path, arrays(y_train=np.zeros(39, dtype=np.int64))).endswith(
        "y_train has 39 entries, x_train has 40")
    bad = arrays()
    bad["x_train"][3, 4], bad["x_train"][5, 0] = np.nan, np.inf
    assert refused(tmp_path, bad).endswith("x_train has 2 non-finite values (nan or inf, as float32)")
    assert refused(tmp_path, arrays(x_test=np.full((10, 30), 1e300))).endswith(
        "x_test has 300 non-finite values (nan or inf, as float32)")
    assert refused(tmp_path, arrays(y_test=-np.ones(10, dtype=np.int64))).endswith(
        "y_test has label -1; class labels start at 0")
    assert "y_train has dtype float64; cross_entropy needs integer class labels" in refused(
        tmp_path, arrays(y_train=np.zeros(40)))
    assert refused(tmp_path, arrays(x_test=np.zeros((10, 29)))).endswith(
        "x_test has examples of shape (29,), x_train of shape (30,)")
    assert refused(tmp_path, arrays(x_dev=np.zeros((3, 30)))).endswith("x_dev without y_dev")
    assert refused(tmp_path, arrays(y_train=np.full(40, np.nan)), "mse").endswith(
        "y_train has 40 non-finite values (nan or inf, as float32)")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"^data\.path: .*junk\.npz: cannot be read as \.npz"):
        load_npz(str(tmp_path / "junk.npz"), None, 0)
    with pytest.raises(DataError, match=r"^data\.path: .*missing\.npz: no such file"):
        load_npz(str(tmp_path / "missing.npz"), None, 0)


def test_labels_beyond_the_models_outputs_are_refused(tmp_path: Path) -> None:
    model = module_model("examples.tabular:mlp", {"classes": 2}, seed=0)
    theta = model.initial_parameters(0)
    ok = from_arrays("t", arrays(), "data.path: t.npz", None, 0)
    check_fit(model, theta, ok, "data.path")
    wide = from_arrays("t", arrays(y_test=np.full(10, 2)), "data.path: t.npz", None, 0)
    with pytest.raises(DataError, match=r"^data\.path: y_test has label 2, outside 0\.\.1 \(the model has 2 outputs\)"):
        check_fit(model, theta, wide, "data.path")
    narrow = from_arrays("t", arrays(features=29), "data.path: t.npz", None, 0)
    with pytest.raises(DataError, match=r"^data\.path: the model's forward fails on x_train\[:2\] \(shape \(2, 29\)"):
        check_fit(model, theta, narrow, "data.path")
    seq = from_arrays("t", arrays(y_train=np.zeros((40, 3), dtype=np.int64), y_test=np.zeros((10, 3), dtype=np.int64)),
                      "data.path: t.npz", None, 0)
    with pytest.raises(DataError, match=r"the model outputs \(2, 2\) for x_train\[:2\], y_train\[:2\] is \(2, 3\)"):
        check_fit(model, theta, seq, "data.path")


def not_a_mapping() -> list[int]:
    return [1, 2]


def raises() -> dict[str, np.ndarray]:
    raise FileNotFoundError("/nowhere/data.csv")


def test_a_data_factory_is_checked_like_a_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^data\.factory: .*:not_a_mapping: returned a list, not a mapping"):
        load_dataset("factory", None, None, 0, f"{__name__}:not_a_mapping")
    with pytest.raises(DataError, match=r"^data\.factory: .*:raises: FileNotFoundError: /nowhere/data\.csv"):
        load_dataset("factory", None, None, 0, f"{__name__}:raises")
    with pytest.raises(DataError, match=r"^data\.factory: .*:arrays: y_train has 39 entries, x_train has 40"):
        load_dataset("factory", None, None, 0, f"{__name__}:arrays", {"y_train": np.zeros(39, dtype=np.int64)})
    data = load_dataset("factory", None, None, 0, "examples.tabular:breast_cancer",
                        {"path": str(tmp_path / "bc.npz")})
    assert (tmp_path / "bc.npz").is_file()  # the example writes its .npz
    assert data.x_train.shape[1] == 30 and len(data.x_dev) > 0
