"""The figures of `hes report` (service/report.py, service/overlay.py): one axes in the same style, saved as PNG."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def figure(title: str, ylabel: str, xlabel: str = "epoch") -> tuple[Figure, Any]:
    """A figure with one gridded axes, drawn off screen (Agg)."""
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def write_report(figs: Mapping[str, Figure], out: Path) -> list[Path]:
    """Save each figure as out/<name>.png; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figs.items():
        path = out / f"{name}.png"
        fig.savefig(path, dpi=120)
        paths.append(path)
    return paths
