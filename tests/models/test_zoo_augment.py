"""Augmentation (crops, flips, seeded and exact on resume and across backends), the zoo's
LeNet with batch norm and ResNet, the per-model recipes and the new training options."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import Case

import xpconv as xc
from xpconv.cli import main
from xpconv.data.augment import Augment, augment_for_dataset, augment_from_config
from xpconv.models.zoo import RECIPES, build_optimizer

# ------------------------------------------------------------------ augmentation


def test_crop_is_a_shift_with_zero_padding() -> None:
    x = np.arange(2 * 3 * 5 * 4, dtype=np.float32).reshape(2, 3, 5, 4) + 1
    rng = np.random.default_rng(0)
    out = Augment(crop_padding=2)(x, np.random.default_rng(0))
    oy, ox = rng.integers(0, 5, size=2), rng.integers(0, 5, size=2)
    for i in range(2):
        padded = np.zeros((3, 9, 8), np.float32)
        padded[:, 2:7, 2:6] = x[i]
        np.testing.assert_array_equal(out[i], padded[:, oy[i] : oy[i] + 5, ox[i] : ox[i] + 4])
    assert out.dtype == x.dtype and out.shape == x.shape


def test_flip_mirrors_about_half_and_leaves_the_input_alone() -> None:
    x = np.random.default_rng(1).random((400, 1, 3, 4)).astype(np.float32)
    before = x.copy()
    out = Augment(flip=True)(x, np.random.default_rng(2))
    np.testing.assert_array_equal(x, before)
    mirrored = np.all(out == x[..., ::-1], axis=(1, 2, 3))
    kept = np.all(out == x, axis=(1, 2, 3))
    assert np.all(mirrored | kept) and 150 < mirrored.sum() < 250


def test_augment_configs_and_dataset_defaults() -> None:
    a = Augment(crop_padding=3, flip=True, fill=0.5)
    assert augment_from_config(a.get_config()).get_config() == a.get_config()
    assert augment_from_config(None) is None
    assert not augment_for_dataset("mnist").flip and not augment_for_dataset("digits").flip
    assert augment_for_dataset("fashion-mnist").flip
    assert not Augment().active
    for bad in (dict(crop_padding=-1), dict(crop_padding=1.5), dict(fill=float("nan"))):
        with pytest.raises(ValueError):
            Augment(**bad)
    with pytest.raises(ValueError, match="N, C, H, W"):
        Augment(flip=True)(np.zeros((2, 3)), np.random.default_rng(0))


def _tiny(backend="numpy", dtype="float32"):
    return xc.Sequential(
        [xc.Conv2D(3, 3, use_bias=False), xc.BatchNorm2D(), xc.ReLU(), xc.Flatten(), xc.Dense(3)],
        input_shape=(1, 8, 8),
        backend=backend,
        dtype=dtype,
        seed=0,
    )


def _data():
    r = np.random.default_rng(0)
    return r.random((40, 1, 8, 8)).astype(np.float32), r.integers(0, 3, size=40)


def test_augmented_training_resumes_exactly(tmp_path: Path) -> None:
    x, y = _data()
    aug = Augment(crop_padding=1, flip=True)

    def make():
        return xc.Trainer(_tiny(), xc.Adam(0.01), progress=False, augment=aug, seed=3)

    full = make()
    full.fit(x, y, epochs=3, batch_size=8)
    part = make()

    class Stop(Exception):
        pass

    def save_and_stop(trainer) -> None:
        xc.save_training(trainer, tmp_path / "t.npz")
        raise Stop

    with pytest.raises(Stop):
        part.fit(x, y, epochs=3, batch_size=8, on_epoch_end=save_and_stop)
    resumed = xc.load_training(tmp_path / "t.npz", progress=False)
    assert resumed.augment.get_config() == aug.get_config()
    resumed.fit(x, y, epochs=3, batch_size=8)
    for k, v in full.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], v, err_msg=k)
    plain = xc.Trainer(_tiny(), xc.Adam(0.01), progress=False, seed=3)
    plain.fit(x, y, epochs=3, batch_size=8)
    assert plain.history.loss != full.history.loss  # the augmentation did something


def test_augmented_training_is_the_same_on_every_backend(case: Case) -> None:
    x, y = _data()
    losses = {}
    for name, backend in (("ref", "numpy"), ("case", case.backend)):
        trainer = xc.Trainer(
            _tiny(backend, case.dtype),
            xc.AdamW(0.01, weight_decay=0.01),
            progress=False,
            augment=Augment(crop_padding=2, flip=True),
            log_every=1,
        )
        trainer.fit(x.astype(case.dtype), y, epochs=2, batch_size=10)
        losses[name] = np.array(trainer.history.step_losses).ravel()
    tol = 1e-9 if case.dtype == "float64" else 1e-4
    np.testing.assert_allclose(losses["case"], losses["ref"], rtol=tol, atol=tol)


def test_trainer_rejects_a_bad_augment() -> None:
    with pytest.raises(TypeError, match="augment"):
        xc.Trainer(_tiny(), xc.SGD(0.1), augment="crop")


# ------------------------------------------------------------------ zoo


def test_lenet_has_batch_norm_and_keeps_the_fused_conv_pool() -> None:
    model = xc.models.zoo.lenet()
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("BatchNorm2D") == 2 and kinds.count("BatchNorm1D") == 1
    assert [type(s).__name__ for s in model.steps[:2]] == ["ConvMaxPool", "BatchNorm2D"]
    plain = xc.models.zoo.lenet(batch_norm=False)
    assert not plain.buffers() and plain.num_parameters() == 421_642


def test_resnet_shape_stages_and_parameters() -> None:
    model = xc.models.zoo.resnet()
    assert model.output_shape == (10,)
    blocks = [layer for layer in model.layers if isinstance(layer, xc.Residual)]
    assert len(blocks) == 6
    assert [b.output_shape for b in blocks[::2]] == [(16, 28, 28), (32, 14, 14), (64, 7, 7)]
    assert [bool(b.shortcut) for b in blocks] == [False, False, True, False, True, False]
    assert isinstance(model.layers[-2], xc.GlobalAvgPool2D)
    small = xc.models.zoo.resnet(blocks=1)
    assert len([la for la in small.layers if isinstance(la, xc.Residual)]) == 3
    x = np.random.default_rng(0).random((2, 1, 28, 28)).astype(np.float32)
    small.train_batch(x, np.array([1, 2]))
    assert all(p.grad is not None for p in small.parameters().values())
    with pytest.raises(ValueError, match="blocks"):
        xc.models.zoo.resnet(blocks=0)


def test_recipes_build_the_optimizers_they_name() -> None:
    lecture = build_optimizer(**_recipe_args("lecture"), total_steps=100)
    assert (
        lecture.get_config()
        == xc.SGD(0.01, momentum=0.9, final_lr=0.005, decay="exponential").get_config()
    )
    lenet = build_optimizer(**_recipe_args("lenet"), total_steps=100)
    assert isinstance(lenet, xc.AdamW) and lenet.exclude == "bias_and_norm"
    lenet.setup(100)
    assert math.isclose(lenet.schedule(0, 100), 3e-4) and math.isclose(
        lenet.schedule(10, 100), 3e-3
    )
    assert lenet.schedule(99, 100) < 1e-5
    step = build_optimizer("sgd", 0.1, schedule="step", total_steps=90)
    assert [step.schedule(s, 90) for s in (0, 29, 30, 60)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    # with a warm-up, the thirds are of the steps after it (here 100 - 10)
    warm = build_optimizer("sgd", 0.1, schedule="step", total_steps=100, warmup=0.1)
    lrs = [warm.schedule(s, 100) for s in (0, 10, 39, 40, 69, 70)]
    assert lrs == pytest.approx([0.01, 0.1, 0.1, 0.01, 0.01, 0.001])
    short = build_optimizer("sgd", 0.1, schedule="step", total_steps=3)  # a third: one step
    assert [short.schedule(s, 3) for s in range(3)] == pytest.approx([0.1, 0.01, 0.001])
    for bad, words in (
        (dict(optimizer="rmsprop"), "optimizer"),
        (dict(schedule="poly"), "schedule"),
        (dict(warmup=1.0), "warmup"),
    ):
        args = dict(optimizer="adam", lr=0.1, total_steps=10, **{"schedule": "constant"})
        args.update(bad)
        with pytest.raises(ValueError, match=words):
            build_optimizer(**args)


def _recipe_args(name: str) -> dict:
    r = dict(RECIPES[name])
    r.pop("batch_size")
    return dict(optimizer=r.pop("optimizer"), lr=r.pop("lr"), **{k: v for k, v in r.items()})


# ------------------------------------------------------------------ command line


# These runs use the small scikit-learn digits (360 test images), so evaluating a
# ResNet after an epoch stays quick.


def test_cli_trains_lenet_with_its_recipe_and_options(tmp_path: Path, capsys) -> None:
    out = tmp_path / "lenet"
    code = main(
        ["train", "--model", "lenet", "--dataset", "digits", "--limit", "256", "--augment"]
        + ["--out", str(out), "--no-progress", "--no-plots", "--weight-decay", "0.001"]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "recipe for lenet: adamw, lr 0.003, cosine schedule after a 10% warm-up" in text
    assert "augmentation: random crop (padding 2)" in text  # no flips for digits
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["batch_size"] == 128 and metrics["optimizer"]["type"] == "AdamW"
    assert metrics["optimizer"]["weight_decay"] == 0.001
    assert metrics["augment"] == {"crop_padding": 2, "flip": False, "fill": 0.0}
    resumed = tmp_path / "resumed"
    code = main(
        ["train", "--resume", str(out / "training.npz"), "--epochs", "2", "--dataset"]
        + ["digits", "--limit", "256", "--out", str(resumed), "--no-progress", "--no-plots"]
    )
    assert code == 0
    again = json.loads((resumed / "metrics.json").read_text())
    assert again["model"] == "lenet" and again["augment"] == metrics["augment"]
    assert again["batch_size"] == 128


def test_cli_resnet_with_sgd_and_step_schedule(tmp_path: Path, capsys) -> None:
    out = tmp_path / "resnet"
    code = main(
        ["train", "--model", "resnet", "--dataset", "digits", "--limit", "64"]
        + ["--optimizer", "sgd", "--schedule", "step", "--warmup", "0", "--lr", "0.05"]
        + ["--batch-size", "32", "--out", str(out), "--no-progress", "--no-plots"]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "recipe for resnet: sgd, lr 0.05, step schedule, weight decay 0.0005" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["optimizer"]["lr"]["type"] == "StepDecay" and metrics["model"] == "resnet"


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--optimizer", "rmsprop"], "--optimizer"),
        (["--schedule", "poly"], "--schedule"),
        (["--warmup", "1.5"], "--warmup"),
        (["--weight-decay", "-1"], "--weight-decay"),
        (["--augment", "rotate"], "--augment"),
        (["--model", "vgg"], "--model"),
    ],
)
def test_cli_rejects_bad_recipe_options(args, option, capsys) -> None:
    assert main(["train", *args]) == 2
    assert option in capsys.readouterr().err


# ------------------------------------------------------------------ accuracy


@pytest.mark.slow
def test_lenet_recipe_reaches_98_percent_on_mnist_in_one_epoch() -> None:
    """The zoo LeNet with its recipe, one epoch of full MNIST (the README's table has the
    three-epoch figure)."""
    from conftest import DATA_DIR

    from xpconv.data.datasets import mnist

    path = DATA_DIR / "mnist"
    if not (path / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST not found in {path} (set XPCONV_TEST_DATA to its parent)")
    data = mnist(path, download=False, progress=False)
    model = xc.models.zoo.lenet(seed=0)
    batch = RECIPES["lenet"]["batch_size"]
    args = _recipe_args("lenet")
    optimizer = build_optimizer(**args, total_steps=math.ceil(len(data.y_train) / batch))
    trainer = xc.Trainer(model, optimizer, seed=0, progress=False)
    trainer.fit(data.x_train, data.y_train, epochs=1, batch_size=batch)
    accuracy = model.evaluate(data.x_test, data.y_test)["accuracy"]
    assert accuracy >= 0.98, f"test accuracy {accuracy:.2%} after one epoch"
