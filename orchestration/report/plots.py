"""One figure per dataset: the median metric by training setting, a line per (model, format).

Error bars span the inter-quartile range over seeds. Matplotlib's Agg backend: no display needed.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from recon.orchestration.study.trial import PAPER_DATASET_NAMES
from recon.orchestration.report.tables import setting_order


def save_figure(fig, out_file: Path, dpi: int = 110) -> Path:
    """Lay ``fig`` out, write it to ``out_file`` (PNG; folders made) and free it: every report figure ends so."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=dpi)
    plt.close(fig)
    return out_file


def plot_dataset(cells: pd.DataFrame, dataset: str, out_file: Path) -> Path:
    """Draw ``cells`` (rows of one dataset from :func:`aggregate.cell_stats`) into ``out_file`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = cells[cells["dataset"] == dataset]
    settings = sorted(data["setting"].unique(), key=setting_order)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (model, fmt), group in data.groupby(["model", "format"], sort=False):
        group = group.drop_duplicates("setting").set_index("setting").reindex(settings)
        x = list(range(len(settings)))
        y = group["median"] * 100
        err = [(group["median"] - group["q1"]) * 100, (group["q3"] - group["median"]) * 100]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{model} {fmt}")
    ax.set_xticks(range(len(settings)), settings)
    metric = data["metric"].iloc[0] if "metric" in data.columns and len(data) else "metric"
    ax.set_xlabel("training data" if settings and settings[0].endswith("%") else "setting")
    ax.set_ylabel(f"{metric} (median over seeds, IQR bars)")
    ax.set_title(PAPER_DATASET_NAMES.get(dataset, dataset))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, out_file, dpi=120)


def plot_all(stats: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``plot_<dataset>.png`` for every dataset in ``stats`` (cells shared by tables drawn once)."""
    cells = stats.drop_duplicates(["dataset", "setting", "format", "model"])
    return [plot_dataset(cells, ds, out_dir / f"plot_{ds}.png") for ds in cells["dataset"].unique()]


def analysis(context) -> list[Path]:
    """Report part: a plot per dataset of the metric by split, format and model."""
    return plot_all(context.stats, context.out_dir)
