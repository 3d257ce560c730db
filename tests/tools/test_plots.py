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
