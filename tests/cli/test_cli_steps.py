"""The train command's three steps: the library's words become flags, defaults are
written once, and the model name is read from the run record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import xpconv as xc
from xpconv import cli
from xpconv.cli import main
from xpconv.io.checkpoint import load_checkpoint


def test_dataset_errors_speak_in_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    where = tmp_path / "my data_dir (from data_dir" / "none"  # a path holding the words
    code = main(["train", "--data-dir", str(where), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("xpconv: error: ")
    assert "(from --data-dir)" in err and "Pass --data-dir DIR" in err
    assert str(where) in err  # the path itself is left as it is
    assert err.count("data_dir") == 2 * err.count(str(where))  # only those in the path


def test_help_is_written_from_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    recipes = xc.models.zoo.RECIPES
    assert f"(default: {cli.TRAIN_DEFAULTS['model']})" in text
    assert f"total epochs of the run (default: {cli.TRAIN_DEFAULTS['epochs']})" in text
    assert (
        f"{recipes['lecture']['batch_size']} for lecture, {recipes['lenet']['batch_size']} "
        "otherwise" in text
    )
    args = cli.build_parser().parse_args(["train"])
    assert args.epochs == cli.TRAIN_DEFAULTS["epochs"]
    assert args.distributed_timeout == cli.TRAIN_DEFAULTS["distributed_timeout"]


def test_help_says_what_each_command_and_option_does(capsys: pytest.CaptureFixture[str]) -> None:
    def help_of(*command: str) -> str:
        assert main([*command, "--help"]) == 0
        return " ".join(capsys.readouterr().out.split())

    top = help_of()
    assert "train train a model and write metrics, checkpoints and pictures" in top
    assert "evaluate test loss and accuracy of a checkpoint" in top
    assert "export write a checkpoint as ONNX, PyTorch, safetensors or npz" in top
    export = help_of("export")
    assert "Write a model checkpoint (.npz or .safetensors) in the format the output's" in export
    assert "--opset OPSET ONNX opset (.onnx only; default: 17)" in export
    evaluate = help_of("evaluate")
    assert "--json PATH also write the results to this file" in evaluate
    batch = cli.build_parser().parse_args(["evaluate", "model.npz"]).batch_size
    assert f"--batch-size BATCH_SIZE examples per forward pass (default: {batch})" in evaluate
    assert batch >= 1
    train = help_of("train")
    assert "--no-plots do not draw the pictures" in train
    assert "--resume CHECKPOINT continue from a training.npz until --epochs epochs" in train


def _small_run(tmp_path: Path, record: dict | None) -> Path:
    """A training checkpoint of a lenet-sized custom model, one epoch done."""
    rng = np.random.default_rng(0)
    x = rng.random((20, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 20)
    model = xc.Sequential([xc.Flatten(), xc.Dense(10)], input_shape=(1, 28, 28), seed=0)
    trainer = xc.Trainer(model, xc.SGD(0.1), progress=False)
    trainer.fit(x, y, epochs=1, batch_size=10)
    path = tmp_path / "training.npz"
    xc.save_training(trainer, path, extra=None if record is None else {"run": record})
    return path


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "no-record"])
def test_the_model_name_is_read_from_the_run_record(
    tmp_path: Path, recorded: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sklearn", reason="the digits set needs scikit-learn")
    record = {"dataset": "digits", "limit": None, "batch_size": 10, "model": "lenet"}
    path = _small_run(tmp_path, record if recorded else None)
    out = tmp_path / "out"
    argv = ["train", "--resume", str(path), "--epochs", "1", "--out", str(out)]
    argv += ["--no-plots", "--no-progress"]
    if not recorded:
        argv += ["--dataset", "digits"]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    metrics = json.loads((out / "metrics.json").read_text())
    name = "lenet" if recorded else "custom"
    assert metrics["model"] == name
    assert load_checkpoint(out / "model.npz")[1]["model_name"] == name
    assert load_checkpoint(out / "training.npz")[1]["run"]["model"] == name
    assert "nothing to train" in captured.out


def test_an_unknown_backend_is_a_usage_error_of_backend(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["evaluate", "model.npz", "--backend", "nope"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("xpconv evaluate: error: argument --backend: expected one of [")
    assert last.endswith("got 'nope'")


def test_an_error_without_a_message_is_named_by_its_type(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from xpconv.cli import app

    def out_of_memory(args, parser):
        raise MemoryError

    monkeypatch.setitem(app.HANDLERS, "evaluate", out_of_memory)
    assert main(["evaluate", "model.npz"]) == 1
    assert capsys.readouterr().err == "xpconv: error: MemoryError\n"


def test_a_new_run_prints_its_recipe_and_plan_and_records_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import datetime

    pytest.importorskip("sklearn", reason="the digits set needs scikit-learn")
    out = tmp_path / "out"
    argv = ["train", "--dataset", "digits", "--limit", "100", "--epochs", "1", "--out", str(out)]
    code = main([*argv, "--no-plots", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0] == (
        "recipe for lecture: sgd, lr 0.01, exponential schedule, weight decay 0, batch size 60 "
        "(change with --optimizer, --lr, --final-lr, --schedule, --warmup, --weight-decay, "
        "--batch-size, --augment)"
    )  # no warm-up, no augmentation: neither is mentioned
    assert (
        "optimizer: SGD lr 0.01 -> 0.005 (exponential), momentum 0.9, batch size 60, 1 epoch(s)"
        in lines
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["augment"] is None
    assert (metrics["backend"], metrics["device"], metrics["dataset"]) == ("numpy", "cpu", "digits")
    # 100 images in well under a second: the rate is still given
    assert metrics["images_per_second"] == pytest.approx(100 / metrics["seconds"])
    finished = datetime.fromisoformat(metrics["finished"])
    assert finished.tzinfo is not None
    assert abs((datetime.now(finished.tzinfo) - finished).total_seconds()) < 600
    assert load_checkpoint(out / "training.npz")[1]["run"]["batch_norm_stats"] == "global"


def test_the_recipe_names_a_warm_up_and_an_augmentation_when_chosen_float64_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sklearn", reason="the digits set needs scikit-learn")
    argv = ["train", "--dataset", "digits", "--limit", "60", "--epochs", "1", "--no-plots"]
    argv += ["--warmup", "0.2", "--augment", "crop", "--out", str(tmp_path / "out")]
    code = main([*argv, "--dtype", "float64", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["dtype"] == "float64"
    assert captured.out.splitlines()[0].startswith(
        "recipe for lecture: sgd, lr 0.01, exponential schedule after a 20% warm-up, "
        "weight decay 0, batch size 60, augment crop ("
    )
    assert "augmentation: random crop (padding 2)" in captured.out


def test_resuming_elsewhere_says_so_and_contradicting_the_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sklearn", reason="the digits set needs scikit-learn")
    record = {"dataset": "digits", "limit": None, "batch_size": 10, "model": "lenet",
              "backend": "torch", "device": "cuda:0"}  # fmt: skip
    path = _small_run(tmp_path, record)
    argv = ["train", "--resume", str(path), "--epochs", "1", "--no-plots", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert (
        "note: resuming on backend numpy (was torch), device cpu (was cuda:0): results are "
        "not bit-identical to an uninterrupted run\n" in capsys.readouterr().out
    )
    code = main([*argv, "--batch-size", "20", "--out", str(tmp_path / "other")])
    assert code == 1
    assert capsys.readouterr().err == (
        f"xpconv: error: --resume {path}: the run continued here differs from the "
        "checkpoint's: --batch-size 20 (the checkpoint's run: 10); resume with the same "
        "settings, or start a new run\n"
    )
    options = ["--weight-decay", "0.1", "--seed", "3", "--out", str(tmp_path / "third")]
    assert main([*argv, *options]) == 0
    assert (
        "note: --weight-decay, --seed ignored with --resume (the checkpoint holds the model, "
        "optimizer and seed)\n" in capsys.readouterr().out
    )


def test_an_unexpected_load_error_is_one_line_naming_file_error_and_traceback_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import xpconv.io.saving

    model = xc.Sequential([xc.Flatten(), xc.Dense(2)], backend="numpy", input_shape=(1, 2, 2))
    path = tmp_path / "model.npz"
    xc.save_model(model, path)

    def crafted(*args, **kwargs):  # what a file no validation foresaw can cause
        raise KeyError("dense_0")

    monkeypatch.setattr(xpconv.io.saving, "load_model", crafted)
    assert main(["evaluate", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"xpconv: error: {path}: cannot load the checkpoint (KeyError: 'dense_0'); rerun "
        "with --traceback for details\n"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dataset_loaded": "cifar"}, "run.dataset_loaded: expected one of ['mnist', "
         "'fashion-mnist', 'digits'], got 'cifar'"),
        ({"colour": 1}, "run: unexpected keys ['colour']; expected ['backend', "),
    ],
    ids=["dataset_loaded", "unknown-key"],
)  # fmt: skip
def test_a_resumed_run_record_is_checked_field_by_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict, message: str
) -> None:
    record = {"dataset": "digits", "limit": None, "batch_size": 10, "model": "lenet"}
    path = _small_run(tmp_path, {**record, **change})
    out = tmp_path / "out"
    assert main(["train", "--resume", str(path), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"xpconv: error: {path}: the run record is not valid: {message}"), err
    assert not out.exists()


def test_without_out_a_run_writes_into_runs_model_dataset_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    pytest.importorskip("sklearn", reason="the digits set needs scikit-learn")
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset", "digits", "--limit", "60", "--epochs", "1", "--no-plots"]
    assert main([*argv, "--no-progress"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"lecture-digits-\d{8}-\d{6}", run.name), run.name
    assert f"output: {Path('runs') / run.name}" in capsys.readouterr().out.splitlines()
    assert json.loads((run / "metrics.json").read_text())["dataset"] == "digits"


def test_only_the_root_rank_prints(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import contextlib

    from xpconv.cli import train as train_command

    class Rank1:
        is_root = False

        def abort_on_error(self):
            return contextlib.nullcontext()

    def run(args, parser, comm):
        print("epoch 1/1: loss 0.5")  # what every rank's training prints
        return 0

    monkeypatch.setattr(train_command, "_communicator", lambda args: Rank1())
    monkeypatch.setattr(train_command, "_train_run", run)
    assert main(["train", "--distributed", "mpi", "--no-progress"]) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(Rank1, "is_root", True)
    assert main(["train", "--distributed", "mpi", "--no-progress"]) == 0
    assert capsys.readouterr().out == "epoch 1/1: loss 0.5\n"


def test_resuming_a_file_without_a_run_record_uses_the_given_or_the_default_batch_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sklearn", reason="the digits set needs scikit-learn")
    path = _small_run(tmp_path, None)
    argv = ["train", "--resume", str(path), "--dataset", "digits", "--epochs", "2"]
    argv += ["--no-plots", "--no-progress"]
    default = xc.models.zoo.RECIPES["lecture"]["batch_size"]
    for extra, batch_size in (([], default), (["--batch-size", "40"], 40)):
        out = tmp_path / f"out{batch_size}"
        code = main([*argv, *extra, "--out", str(out)])
        assert code == 0, capsys.readouterr().err
        assert json.loads((out / "metrics.json").read_text())["batch_size"] == batch_size


def test_the_pictures_are_titled_with_the_model_the_dataset_and_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from xpconv.cli import report
    from xpconv.tools import plots

    seen: dict[str, object] = {}

    def save_all(model, dataset, history, out, *, steps, title):  # noqa: ANN001, ANN202
        seen.update(title=title, steps=steps)
        return [out / "curves.png"]

    monkeypatch.setattr(plots, "save_all", save_all)
    model = xc.Sequential([xc.Dense(2)], backend="numpy", input_shape=(3,))
    history = SimpleNamespace(epoch=[1, 2], step_losses=[[3.0, 2.0], [1.0]])
    dataset = SimpleNamespace(name="fashion-mnist")
    names = report._pictures(model, dataset, history, tmp_path, "lenet", 60)
    assert names == ["curves.png"]
    assert seen["title"] == (
        "lenet model on Fashion-MNIST (60 training images): 2 epoch(s), backend numpy"
    )
    assert seen["steps"] == ([0.5, 1.0, 2.0], [3.0, 2.0, 1.0])


def test_an_interrupt_exits_130_saying_so_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from xpconv.cli import app

    def interrupted(args: object, parser: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(app.HANDLERS, "evaluate", interrupted)
    assert main(["evaluate", "model.npz"]) == 130
    out = capsys.readouterr()
    assert (out.out, out.err) == ("", "\nxpconv: interrupted\n")


def test_evaluate_refuses_an_unknown_dataset_when_parsing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["evaluate", "model.npz", "--dataset", "cifar10"]) == 2
    assert "argument --dataset: invalid choice: 'cifar10'" in capsys.readouterr().err


def test_the_data_is_loaded_with_the_progress_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    import xpconv.data.datasets as datasets
    from xpconv.cli.common import load_data

    calls: list[dict[str, object]] = []

    def load_dataset(name: str, data_dir: object, **options: object) -> str:
        calls.append({"name": name, "data_dir": data_dir, **options})
        return "data"

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert load_data("mnist", "d", False) == "data"
    assert load_data("digits", None, True, fallback=False) == "data"
    assert calls == [
        {"name": "mnist", "data_dir": "d", "progress": False, "allow_fallback": True},
        {"name": "digits", "data_dir": None, "progress": True, "allow_fallback": False},
    ]
