"""Pictures of a training run: learning curves, filters, feature maps, confusion matrix.

    from xpconv.tools import plots
    plots.plot_curves(history, "curves.png")
    plots.plot_filters(model, "filters.png")
    plots.plot_feature_maps(model, dataset, "feature_maps.png")
    plots.plot_confusion(model, dataset, "confusion.png")

Every function takes what it draws and an output path, writes a PNG and returns the
path. matplotlib is imported only here and only when a picture is drawn; figures are
rendered with the Agg canvas (no window, no global pyplot state). Without matplotlib
the functions raise :class:`PlotsUnavailable`, an ``ImportError`` whose message says
what to install.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DPI",
    "PlotsUnavailable",
    "dataset_title",
    "first_conv_layer",
    "plot_confusion",
    "plot_curves",
    "plot_feature_maps",
    "plot_filters",
    "save_all",
]

#: Resolution of every figure written here.
DPI = 120

PathLike = str | os.PathLike

_TRAIN, _TEST, _STEP = "#1f77b4", "#d62728", "#9ecae1"


def dataset_title(name: str) -> str:
    """How a dataset is called in titles: ``"mnist"`` -> ``"MNIST"``,
    ``"fashion-mnist"`` -> ``"Fashion-MNIST"``, any other name unchanged."""
    return {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}.get(name, name)


class PlotsUnavailable(ImportError):
    """matplotlib is not installed, so no picture can be drawn."""


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas (imported lazily)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotsUnavailable(
            "matplotlib is not installed: pip install matplotlib (or pip install 'xpconv[cli]')"
        ) from exc
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


# --------------------------------------------------------------------------- curves


def _history_dict(history: Any) -> dict[str, list]:
    if isinstance(history, Mapping):
        return {k: list(v) for k, v in history.items()}
    return history.as_dict()


def _present(values: Sequence[float | None]) -> tuple[list[int], list[float]]:
    idx = [i for i, v in enumerate(values) if v is not None]
    return idx, [float(values[i]) for i in idx]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Running mean over ``window`` steps (shorter at the start)."""
    if window <= 1 or values.size == 0:
        return values
    csum = np.cumsum(np.concatenate([[0.0], values]))
    idx = np.arange(1, values.size + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def plot_curves(
    history: Any,
    path: PathLike,
    *,
    steps: tuple[Sequence[float], Sequence[float]] | None = None,
    title: str | None = None,
) -> Path:
    """Loss and accuracy per epoch, train and validation (test), side by side.

    Args:
        history: a :class:`~xpconv.train.trainer.History` or its ``as_dict()``.
        path: the PNG to write.
        steps: optional per-step training losses as ``(positions, losses)``, positions
            in epochs (step ``i`` of ``s`` in epoch ``e`` at ``e + (i + 1) / s``); drawn
            faintly with a running mean, so a one-epoch run still shows a curve.
        title: the figure title.
    """
    h = _history_dict(history)
    epochs = [int(e) for e in h.get("epoch", [])]
    fig = _figure(11.0, 4.8)
    ax_loss, ax_acc = fig.subplots(1, 2)
    fig.suptitle(title or "Training curves", fontsize=13)
    per_step = steps is not None and len(steps[1]) > 0
    if per_step:
        _plot_steps(ax_loss, steps)  # type: ignore[arg-type]
    x_max = max(epochs, default=1)
    for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        _plot_epochs(ax, h, epochs, key)
        lo = 0.0 if per_step and key == "loss" else 0.5
        ax.set_xlim(lo, x_max + 0.5)
        if x_max <= 20:
            ax.set_xticks(range(0 if lo == 0 else 1, x_max + 1))
        if ax.get_legend_handles_labels()[0]:
            # Below the axes: inside, it would hide points and their labels.
            ax.legend(
                loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=9, frameon=False
            )
    if per_step:
        top = float(np.percentile(np.asarray(steps[1], dtype=np.float64), 99))  # type: ignore[index]
        ax_loss.set_ylim(0.0, max(top * 1.05, 1e-3))
    return _save(fig, path)


def _plot_steps(ax: Any, steps: tuple[Sequence[float], Sequence[float]]) -> None:
    """The per-step losses, faint, and their running mean."""
    pos = np.asarray(steps[0], dtype=np.float64)
    loss = np.asarray(steps[1], dtype=np.float64)
    ax.plot(pos, loss, color=_STEP, lw=0.7, alpha=0.8, label="train loss per step")
    window = max(1, min(50, loss.size // 10))
    if window > 1:
        ax.plot(
            pos, _smooth(loss, window), color=_TRAIN, lw=1.6, label=f"running mean ({window} steps)"
        )


def _plot_epochs(ax: Any, h: dict[str, Any], epochs: list[int], key: str) -> None:
    """Train and test ``key`` ("loss" or "accuracy") per epoch, the last points labelled
    with their values (the higher one above, the lower one below), so that a single
    epoch is still readable."""
    pct = key == "accuracy"
    scale = 100.0 if pct else 1.0
    last = []
    for hkey, color, marker, label in (
        (key, _TRAIN, "o", f"train {key} (epoch mean)"),
        (f"val_{key}", _TEST, "s", f"test {key}"),
    ):
        idx, vals = _present(h.get(hkey, []))
        if not vals:
            continue
        xs = [epochs[i] for i in idx]
        ys = [v * scale for v in vals]
        ax.plot(xs, ys, color=color, marker=marker, ms=7, lw=1.8, label=label, zorder=3)
        last.append((ys[-1], xs[-1], color))
    for rank, (y, x, color) in enumerate(sorted(last, reverse=True)):
        above = rank == 0
        ax.annotate(
            f"{y:.2f}%" if pct else f"{y:.4f}",
            (x, y),
            textcoords="offset points",
            xytext=(9, 5 if above else -5),
            va="bottom" if above else "top",
            color=color,
            fontsize=9,
            fontweight="bold",
        )
    ax.margins(y=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{key} (%)" if pct else key)
    ax.set_title(key.capitalize())
    ax.grid(True, alpha=0.3)


# --------------------------------------------------------------------------- filters


def first_conv_layer(model: Any) -> tuple[int, Any]:
    """The index and the layer of the model's first 2-D convolution."""
    from xpconv.nn.layers import Conv1D, Conv2D

    for i, layer in enumerate(model.layers):
        if isinstance(layer, Conv2D) and not isinstance(layer, Conv1D):
            return i, layer
    raise ValueError(f"model: expected a Conv2D layer, found none in {model!r}")


def _grid(n: int, max_cols: int = 8) -> tuple[int, int]:
    cols = min(max_cols, max(1, math.ceil(math.sqrt(n))))
    return math.ceil(n / cols), cols


def plot_filters(model: Any, path: PathLike, *, max_filters: int = 64) -> Path:
    """The first Conv2D layer's kernels as a grid of small images.

    Each kernel is drawn on its own scale, symmetric around zero (red positive, blue
    negative, white zero), so the shape of every filter is visible whatever its norm.
    Multi-channel kernels show input channel 0.
    """
    _, layer = first_conv_layer(model)
    weight = np.asarray(model.backend.to_numpy(layer.params["weight"].value), dtype=np.float64)
    n_filters, channels, kh, kw = weight.shape
    shown = min(n_filters, max_filters)
    rows, cols = _grid(shown)
    cell = 1.25 if kh <= 7 else 1.6
    fig = _figure(cols * cell + 0.6, rows * cell + 0.9)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    image = None
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= shown:
            ax.set_axis_off()
            continue
        k = weight[i, 0]
        m = float(np.max(np.abs(k))) or 1.0
        image = ax.imshow(k / m, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(f"#{i}  ±{m:.2f}", fontsize=8)
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes), shrink=0.6, ticks=[-1, 0, 1])
        bar.ax.set_yticklabels(["−max", "0", "+max"], fontsize=8)
    channel = " (input channel 0)" if channels > 1 else ""
    fig.suptitle(
        f"{layer.name}: {shown} learned {kh}x{kw} kernels{channel}\n"
        "each scaled to its own ±max |w| (title); red > 0 > blue",
        fontsize=11,
    )
    return _save(fig, path)


# --------------------------------------------------------------------------- feature maps


def _first_maps(model: Any, image: np.ndarray) -> tuple[np.ndarray, str]:
    """Activations after the first Conv2D (and an activation layer right after it)."""
    from xpconv.nn.layers import Activation

    index, conv = first_conv_layer(model)
    x = model.as_input(image[None], "image")
    names = []
    for layer in model.layers[: index + 1]:
        x = layer.forward(x, training=False)
        names.append(layer.name)
    if index + 1 < len(model.layers) and isinstance(model.layers[index + 1], Activation):
        x = model.layers[index + 1].forward(x, training=False)
        names.append(model.layers[index + 1].name)
    act = f" + {conv.activation}" if conv.activation else ""
    return np.asarray(model.backend.to_numpy(x)[0], dtype=np.float64), " -> ".join(names) + act


def plot_feature_maps(
    model: Any,
    dataset: Any,
    path: PathLike,
    *,
    index: int = 0,
    max_maps: int = 32,
) -> Path:
    """One test image and the first conv layer's activations for it, as a grid.

    Args:
        model: a built model whose first layers include a Conv2D.
        dataset: a :class:`~xpconv.data.datasets.Dataset` (uses ``x_test[index]``) or an
            image array ``(C, H, W)``.
        path: the PNG to write.
        index: which test image.
        max_maps: at most this many channels are drawn.
    """
    if hasattr(dataset, "x_test"):
        image = np.asarray(dataset.x_test[index])
        label = int(dataset.y_test[index])
        names = list(dataset.class_names)
        what = f"test image #{index}, label {names[label]}"
    else:
        image, names, what = np.asarray(dataset), None, "input image"
    maps, through = _first_maps(model, image)
    predicted = int(model.predict_classes(image[None])[0])
    pred_name = names[predicted] if names and predicted < len(names) else str(predicted)
    shown = min(maps.shape[0], max_maps)
    rows, cols = _grid(shown + 1)
    fig = _figure(cols * 1.55 + 0.8, rows * 1.6 + 0.9)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].imshow(image[0], cmap="gray_r", interpolation="nearest")
    axes[0].set_title("input", fontsize=9, fontweight="bold")
    for side in axes[0].spines.values():
        side.set_edgecolor("black")
        side.set_linewidth(1.5)
    low, high = float(np.min(maps[:shown])), float(np.max(maps[:shown]))
    if low < 0:
        m = max(abs(low), abs(high)) or 1.0
        cmap, vmin, vmax = "RdBu_r", -m, m
    else:
        cmap, vmin, vmax = "viridis", 0.0, high or 1.0
    im = None
    for i in range(shown):
        ax = axes[i + 1]
        im = ax.imshow(maps[i], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(f"channel {i}", fontsize=8)
    for ax in axes[shown + 1 :]:
        ax.set_axis_off()
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.6, label="activation")
    fig.suptitle(
        f"Feature maps after {through} ({what}; predicted {pred_name})\n"
        "all channels on one colour scale",
        fontsize=11,
    )
    return _save(fig, path)


# --------------------------------------------------------------------------- confusion


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    """Counts (classes, classes): row = true class, column = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * classes + y_pred, minlength=classes * classes).reshape(
        classes, classes
    )


def plot_confusion(
    model: Any,
    dataset: Any,
    path: PathLike,
    *,
    batch_size: int = 512,
    predictions: np.ndarray | None = None,
) -> Path:
    """The confusion matrix on the test set, with counts in every cell.

    Colours show each cell's share of its true class (row), so mistakes stay visible
    next to the large diagonal; the numbers are counts.

    Args:
        model: the trained model (used unless ``predictions`` is given).
        dataset: a :class:`~xpconv.data.datasets.Dataset` (``x_test``, ``y_test``,
            ``class_names``, ``name``).
        path: the PNG to write.
        batch_size: inference batch size.
        predictions: predicted classes of ``dataset.x_test``, if already computed.
    """
    y = np.asarray(dataset.y_test, dtype=np.int64)
    names = list(getattr(dataset, "class_names", [])) or [str(i) for i in range(int(y.max()) + 1)]
    if predictions is None:
        predictions = model.predict_classes(dataset.x_test, batch_size=batch_size)
    pred = np.asarray(predictions, dtype=np.int64)
    k = max(len(names), int(pred.max()) + 1, int(y.max()) + 1)
    names += [str(i) for i in range(len(names), k)]
    counts = confusion_matrix(y, pred, k)
    totals = counts.sum(axis=1, keepdims=True)
    share = counts / np.maximum(totals, 1)
    accuracy = float(np.trace(counts)) / max(int(counts.sum()), 1)
    size = 0.52 * k + 2.4
    fig = _figure(size + 1.2, size)
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            if counts[i, j] == 0:
                continue
            dark = share[i, j] > 0.5
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                fontsize=9 if counts[i, j] < 1000 else 8,
                color="white" if dark else ("black" if i == j else "#a50f15"),
            )
    long_names = max(len(n) for n in names) > 2
    ax.set_xticks(range(k))
    ax.set_xticklabels(
        names, rotation=45 if long_names else 0, ha="right" if long_names else "center"
    )
    ax.set_yticks(range(k))
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    title = dataset_title(getattr(dataset, "name", ""))
    ax.set_title(
        f"Confusion matrix, {title} test set ({y.size} images)\naccuracy {accuracy:.2%}",
        fontsize=11,
    )
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class")
    return _save(fig, path)


# --------------------------------------------------------------------------- all


def save_all(
    model: Any,
    dataset: Any,
    history: Any,
    out_dir: PathLike,
    *,
    steps: tuple[Sequence[float], Sequence[float]] | None = None,
    title: str | None = None,
    predictions: np.ndarray | None = None,
) -> list[Path]:
    """Write curves.png, filters.png, feature_maps.png and confusion.png into ``out_dir``."""
    out = Path(out_dir)
    return [
        plot_curves(history, out / "curves.png", steps=steps, title=title),
        plot_filters(model, out / "filters.png"),
        plot_feature_maps(model, dataset, out / "feature_maps.png"),
        plot_confusion(model, dataset, out / "confusion.png", predictions=predictions),
    ]
