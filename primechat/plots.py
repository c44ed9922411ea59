"""Pictures of training: loss and validation bits per byte against steps, from a run's metrics.jsonl."""

import json

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from primechat.common import atomic_path  # noqa: E402


def plot_training_curves(metrics_path, png_path, title: str = "training"):
    records = [json.loads(line) for line in open(metrics_path)] if metrics_path.exists() else []
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_bpb" in r]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", label="train loss (nats)")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats, smoothed)")
    if val:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in val], [r["val_bpb"] for r in val], "o-", color="tab:orange",
                 label="validation bpb")
        ax2.set_ylabel("validation bits per byte")
        ax2.legend(loc="upper center")
    if train:
        ax.legend(loc="upper right")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
