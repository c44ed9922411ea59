"""Pictures for training and the report card: a per-step series (train loss) and an evaluation series (validation
bits per byte) against steps, from a run's metrics.jsonl (RL draws its reward and pass@1 the same way); and grouped
bars of evaluation scores by stage."""

import json

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from primechat.common import atomic_path  # noqa: E402


def plot_training_curves(metrics_path, png_path, title: str = "training",
                         left=("loss", "train loss (nats, smoothed)"), right=("val_bpb", "validation bits per byte")):
    """left/right: (metrics key, axis label) of the per-step series and of the evaluation series."""
    records = [json.loads(line) for line in open(metrics_path)] if metrics_path.exists() else []
    train = [r for r in records if left[0] in r]
    val = [r for r in records if right[0] in r]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot([r["step"] for r in train], [r[left[0]] for r in train], color="tab:blue", label=left[0])
    ax.set_xlabel("step")
    ax.set_ylabel(left[1])
    if val:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in val], [r[right[0]] for r in val], "o-", color="tab:orange", label=right[0])
        ax2.set_ylabel(right[1])
        ax2.legend(loc="upper center")
    if train:
        ax.legend(loc="upper right")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_grouped_bars(values: dict, series: list, png_path, title: str = "", ylabel: str = ""):
    """values: {group: {series: value}}; one cluster of bars per group along x, one colour per series (in `series`'
    order), each bar labelled with its value. A missing value leaves a gap, so clusters stay aligned."""
    width = min(12.0, max(4.5, 2 + 0.6 * len(values) * max(1, len(series)) ** 0.5))  # grows with bars, up to a page
    fig, ax = plt.subplots(figsize=(width, 4.5), dpi=100)
    bar = 0.8 / max(1, len(series))
    for i, name in enumerate(series):
        points = [(x + (i - (len(series) - 1) / 2) * bar, group[name])
                  for x, group in enumerate(values.values()) if name in group]
        if points:
            bars = ax.bar(*zip(*points), width=bar, label=name)
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(range(len(values)), list(values), rotation=20 if len(values) > 5 else 0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(y=0.15)  # room for the labels above the tallest bar
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
