"""The pictures of a run: each function writes one PNG and returns its path; the
confusion counts are exact; what cannot be drawn is refused by name."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import require_or_skip

import xpconv as xc
from xpconv.tools import plots


def _matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        require_or_skip(False, "matplotlib is not installed: pip install 'xpconv[cli]'")


def _model_and_data() -> tuple[xc.Sequential, SimpleNamespace]:
    model = xc.Sequential(
        [xc.Conv2D(3, 3, activation="relu"), xc.MaxPool2D(2), xc.Flatten(), xc.Dense(4)],
        backend="numpy", input_shape=(1, 8, 10), seed=0,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    data = SimpleNamespace(
        x_test=rng.random((20, 1, 8, 10), dtype=np.float32),
        y_test=rng.integers(0, 4, size=20),
        class_names=["a", "b", "c", "d"],
        name="fashion-mnist",
    )
    return model, data


def test_confusion_matrix_counts_each_pair() -> None:
    got = plots.confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    np.testing.assert_array_equal(got, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert plots.confusion_matrix(np.array([1]), np.array([1]), 2).shape == (2, 2)


def test_dataset_titles() -> None:
    assert plots.dataset_title("mnist") == "MNIST"
    assert plots.dataset_title("fashion-mnist") == "Fashion-MNIST"
    assert plots.dataset_title("cifar") == "cifar"


def test_save_all_writes_four_pngs(tmp_path: Path) -> None:
    _matplotlib()
    model, data = _model_and_data()
    history = {"epoch": [1, 2], "loss": [1.0, 0.5], "accuracy": [0.3, 0.6], "val_loss": [1.1, None],
               "val_accuracy": [0.2, None]}  # fmt: skip
    steps = ([1.0, 0.9, 0.7, 0.6], [0.25, 0.5, 0.75, 1.0])
    paths = plots.save_all(model, data, history, tmp_path, steps=steps, title="run")
    assert [p.name for p in paths] == ["curves.png", "filters.png", "feature_maps.png",
                                       "confusion.png"]  # fmt: skip
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_first_conv_layer_and_its_refusal() -> None:
    model, _ = _model_and_data()
    index, layer = plots.first_conv_layer(model)
    assert index == 0 and layer is model.layers[0]
    dense = xc.Sequential([xc.Flatten(), xc.Dense(2)], backend="numpy", input_shape=(1, 4, 4))
    with pytest.raises(ValueError, match="model: expected a Conv2D layer"):
        plots.first_conv_layer(dense)


def test_without_matplotlib_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import builtins

    real = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib here")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(plots.PlotsUnavailable, match="matplotlib") as info:
        plots.plot_curves({"loss": [1.0]}, tmp_path / "c.png")
    assert isinstance(info.value, ImportError)
    assert not (tmp_path / "c.png").exists()


# ------------------------------------------------------------- what each picture shows


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """The matplotlib Figures the plots draw, kept after they are written."""
    _matplotlib()
    kept: list = []
    save = plots._save

    def keep(fig, path):
        kept.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def _curves(ax) -> dict:
    return {line.get_label(): line for line in ax.get_lines()}


def test_curves_show_train_and_test_per_epoch_with_labelled_last_values(
    figures: list, tmp_path: Path
) -> None:
    from matplotlib.colors import same_color

    history = {"epoch": [1, 2], "loss": [1.0, 0.5], "accuracy": [0.3, 0.6],
               "val_loss": [1.1, 0.7], "val_accuracy": [0.2, 0.55]}  # fmt: skip
    plots.plot_curves(history, tmp_path / "curves.png")
    ax_loss, ax_acc = figures[-1].axes[:2]
    for ax, key, scale, labels in (
        (ax_loss, "loss", 1.0, ["0.7000", "0.5000"]),
        (ax_acc, "accuracy", 100.0, ["60.00%", "55.00%"]),
    ):
        curves = _curves(ax)
        assert sorted(curves) == [f"test {key}", f"train {key} (epoch mean)"]
        train, test = curves[f"train {key} (epoch mean)"], curves[f"test {key}"]
        np.testing.assert_allclose(train.get_ydata(), np.array(history[key]) * scale)
        np.testing.assert_allclose(test.get_ydata(), np.array(history[f"val_{key}"]) * scale)
        assert not same_color(train.get_color(), test.get_color())
        # The higher last value first; each label in the colour of the curve it ends.
        assert [t.get_text() for t in ax.texts] == labels
        for text in ax.texts:
            (curve,) = [c for c in (train, test) if (c.get_xdata()[-1], c.get_ydata()[-1])
                        == pytest.approx(text.xy)]  # fmt: skip
            assert same_color(text.get_color(), curve.get_color()), text.get_text()


def test_curves_draw_the_per_step_losses_and_their_running_mean(
    figures: list, tmp_path: Path
) -> None:
    losses = np.linspace(2.0, 0.2, 100) + np.tile([0.3, -0.3], 50)
    positions = (np.arange(100) + 1) / 100
    history = {"epoch": [1], "loss": [float(losses.mean())], "accuracy": [0.5]}
    plots.plot_curves(history, tmp_path / "curves.png", steps=(positions, losses))
    curves = _curves(figures[-1].axes[0])
    np.testing.assert_allclose(curves["train loss per step"].get_ydata(), losses)
    window = 10  # a tenth of the steps
    want = [losses[max(0, i + 1 - window) : i + 1].mean() for i in range(losses.size)]
    np.testing.assert_allclose(curves[f"running mean ({window} steps)"].get_ydata(), want)


def test_filters_show_each_kernel_on_its_own_symmetric_scale(figures: list, tmp_path: Path) -> None:
    model = xc.Sequential([xc.Conv2D(5, 3), xc.Flatten(), xc.Dense(2)], backend="numpy",
                          input_shape=(2, 6, 6), seed=0)  # fmt: skip
    weight = model.backend.to_numpy(model.layers[0].params["weight"].value)
    plots.plot_filters(model, tmp_path / "filters.png", max_filters=3)  # a 2x2 grid
    fig = figures[-1]
    kernels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in kernels] == [
        f"#{i}  ±{np.abs(weight[i, 0]).max():.2f}" for i in range(3)
    ]
    for i, ax in enumerate(kernels):
        (image,) = ax.images
        np.testing.assert_allclose(image.get_array(), weight[i, 0] / np.abs(weight[i, 0]).max())
        assert image.get_clim() == (-1, 1)
    assert f"{model.layers[0].name}: 3 learned 3x3 kernels (input channel 0)" in (
        fig.get_suptitle()
    )
    bar = fig.axes[-1]
    assert list(bar.get_yticks()) == [-1, 0, 1]
    assert [t.get_text() for t in bar.get_yticklabels()] == ["−max", "0", "+max"]


def test_confusion_shows_every_class_by_name_with_its_counts(figures: list, tmp_path: Path) -> None:
    model, data = _model_and_data()
    data.y_test = np.array([0, 0, 1, 2, 2, 3, 3, 3])
    predictions = np.array([0, 1, 1, 2, 0, 3, 3, 2])
    plots.plot_confusion(model, data, tmp_path / "confusion.png", predictions=predictions)
    fig = figures[-1]
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c", "d"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c", "d"]
    counts = plots.confusion_matrix(data.y_test, predictions, 4)
    np.testing.assert_allclose(ax.images[0].get_array(), counts / counts.sum(1, keepdims=True))
    assert sorted(t.get_text() for t in ax.texts) == sorted(str(c) for c in counts[counts > 0])
    assert ax.get_title() == "Confusion matrix, Fashion-MNIST test set (8 images)\naccuracy 62.50%"
    assert fig.axes[1].get_ylabel() == "share of the true class"  # the colour bar


def test_confusion_without_class_names_numbers_every_predicted_class(
    figures: list, tmp_path: Path
) -> None:
    model, _ = _model_and_data()
    data = SimpleNamespace(x_test=None, y_test=np.array([0, 1, 2, 2]), name="digits")
    plots.plot_confusion(model, data, tmp_path / "c.png", predictions=np.array([0, 1, 3, 2]))
    ax = figures[-1].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3"]
    assert ax.images[0].get_array().shape == (4, 4)
