"""The small digits job config the tests build, in one place: `small_config(name, seed, section={...})`."""
from __future__ import annotations

from typing import Any


def small_config(name: str = "small", seed: int = 3, **sections: dict[str, Any]) -> dict[str, Any]:
    """A raw job config on the bundled digits set (an MLP of 16 sigmoid units, one epoch, hybrid r=2, k=2, in
    process); each keyword names a section whose keys replace the defaults', e.g. train={"epochs": 2}."""
    raw: dict[str, Any] = {
        "name": name, "seed": seed, "data": {"dataset": "digits"},
        "model": {"arch": "mlp", "hidden": [16], "activation": "sigmoid"},
        "train": {"epochs": 1, "batch_size": 100, "lr": 1.0, "l2": 1e-4},
        "hybrid": {"mode": "hybrid", "r": 2, "k": 2, "sigma": 1.0, "combine": "argmin"},
        "cluster": {"workers": 0}}
    for key, values in sections.items():
        if key not in raw:
            raise KeyError(f"small_config: no section {key!r}")
        raw[key] = {**raw[key], **values}
    return raw
