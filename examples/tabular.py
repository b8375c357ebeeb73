"""A tabular classifier: scikit-learn's bundled breast-cancer data (569 tumours x 30 features, 2 classes).

    hes train --config examples/tabular.yaml                     # the data factory writes the .npz itself
    python -m examples.tabular /tmp/breast_cancer.npz            # or write it, then train from the file:
    hes train --config examples/tabular.yaml --set data.dataset=npz --set data.path=/tmp/breast_cancer.npz \
        --set data.factory=null

`breast_cancer` splits the data (seeded: 20% test, 20% of the rest dev), standardises the features with the
training mean and std, writes x_train, y_train, x_dev, y_dev, x_test, y_test to an .npz and returns what it reads
back from that file, so the job trains on exactly what the file holds.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from torch import nn

CACHE = Path(os.environ.get("HES_EXAMPLES_DATA", Path.home() / ".cache" / "hes-examples"))


def write_npz(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """The split, standardised data set as an .npz at `path` (written atomically)."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order].astype(np.int64)
    n_test = len(x) // 5
    n_dev = (len(x) - n_test) // 5
    splits = {"test": slice(0, n_test), "dev": slice(n_test, n_test + n_dev), "train": slice(n_test + n_dev, None)}
    mean, std = x[splits["train"]].mean(0), x[splits["train"]].std(0) + 1e-6
    arrays = {}
    for name, part in splits.items():
        arrays[f"x_{name}"] = (x[part] - mean) / std
        arrays[f"y_{name}"] = y[part]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".npz", delete=False) as f:
        np.savez(f, **arrays)
    os.replace(f.name, out)
    return out


def breast_cancer(path: str | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """data.factory: write the .npz (default: $HES_EXAMPLES_DATA/breast_cancer.npz) and return its arrays."""
    written = write_npz(path or CACHE / "breast_cancer.npz", seed)
    with np.load(written, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def mlp(inputs: int = 30, hidden: int = 64, classes: int = 2) -> nn.Module:
    """model.factory: two hidden layers with LayerNorm, 30 -> 64 -> 64 -> 2 (6,402 parameters)."""
    return nn.Sequential(nn.Linear(inputs, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes))


if __name__ == "__main__":
    print(write_npz(sys.argv[1] if len(sys.argv) > 1 else CACHE / "breast_cancer.npz"))
