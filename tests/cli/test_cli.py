"""The ``xpconv`` command line, run for real: train, resume, evaluate, errors, pictures.

Training runs use ``--limit`` so the whole file stays fast. Runs on the real MNIST files
need ``DATA_DIR / "mnist"`` (see conftest) and are skipped visibly without it; the
offline fallback points the download mirrors at a closed loopback port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_DIR, require_or_skip

import xpconv
import xpconv.data.datasets as ds
from xpconv.cli import main

REPO = Path(__file__).resolve().parents[2]
PICTURES = ("curves.png", "filters.png", "feature_maps.png", "confusion.png")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METRIC_KEYS = (
    "test_accuracy",
    "test_loss",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "backend",
    "device",
    "model",
    "dataset",
    "data_source",
    "epochs",
    "batch_size",
    "seconds",
    "images_per_second",
    "seed",
    "xpconv_version",
)


@pytest.fixture(scope="module")
def mnist() -> Path:
    path = DATA_DIR / "mnist"
    require_or_skip(
        (path / "train-images-idx3-ubyte.gz").exists(),
        f"MNIST not found in {path} (set XPCONV_TEST_DATA to its parent)",
    )
    return path


@pytest.fixture(scope="module")
def run(mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real training run on 600 MNIST images, shared by the tests below."""
    out = tmp_path_factory.mktemp("run") / "out"
    code = main(
        [
            "train",
            "--data-dir",
            str(mnist),
            "--limit",
            "600",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    return out


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def _offline(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """No data directory, an empty cache and mirrors that refuse connections."""
    monkeypatch.setenv("XPCONV_CACHE", str(cache))
    for name in ("XPCONV_DATA", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    for key in list(ds.MIRRORS):
        monkeypatch.setitem(ds.MIRRORS, key, ["http://127.0.0.1:9/"])


# --------------------------------------------------------------------------- train


def test_train_writes_metrics_checkpoints_and_pictures(run: Path) -> None:
    metrics = _metrics(run)
    missing = [key for key in METRIC_KEYS if key not in metrics]
    assert not missing, f"metrics.json lacks {missing}"
    assert metrics["epochs"] == 1 and len(metrics["train_loss"]) == 1
    assert metrics["model"] == "lecture" and metrics["dataset"] == "mnist"
    assert metrics["backend"] == "numpy" and metrics["device"] == "cpu"
    assert metrics["batch_size"] == 60 and metrics["seed"] == 0
    assert metrics["xpconv_version"] == xpconv.__version__
    assert "mnist" in metrics["data_source"]
    assert metrics["train_examples"] == 600 and metrics["test_examples"] == 10000
    # 600 images, one epoch: far better than chance, far from perfect.
    assert 0.5 < metrics["test_accuracy"] < 1.0
    assert 0.0 < metrics["test_loss"] < 2.3
    assert 0.0 < metrics["train_loss"][0] < 2.5
    assert 0.0 <= metrics["train_accuracy"][0] <= 1.0
    assert metrics["val_accuracy"][-1] == metrics["test_accuracy"]
    assert metrics["seconds"] > 0 and metrics["images_per_second"] > 0
    assert len(metrics["train_loss_steps"]["loss"]) == 10  # 600 / 60 steps
    for name in ("model.npz", "training.npz"):
        assert (run / name).stat().st_size > 1000, name
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")], "temporary left"


def test_train_pictures_are_valid_pngs(run: Path) -> None:
    image = pytest.importorskip("matplotlib.image", reason="pictures need matplotlib")
    for name in PICTURES:
        path = run / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        assert path.stat().st_size > 10_000, name
        pixels = image.imread(path)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) >= 300, (name, pixels.shape)
        assert float(np.std(pixels[..., :3])) > 0.05, f"{name} is nearly blank"


def test_train_offline_falls_back_to_digits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sklearn", reason="the offline fallback needs scikit-learn")
    _offline(monkeypatch, tmp_path / "cache")
    out = tmp_path / "out"
    code = main(["train", "--epochs", "1", "--out", str(out), "--no-progress", "--no-plots"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "fell back" in captured.err and "scikit-learn" in captured.err
    metrics = _metrics(out)
    assert metrics["data_source"].startswith("fallback:")
    assert metrics["dataset"] == "mnist" and metrics["dataset_loaded"] == "digits"
    assert metrics["test_examples"] == 360
    assert metrics["test_accuracy"] > 0.5


def test_train_without_matplotlib_skips_pictures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sklearn", reason="the digits dataset needs scikit-learn")
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    out = tmp_path / "out"
    argv = ["train", "--dataset", "digits", "--limit", "300", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "pictures" in line]
    assert len(lines) == 1 and "pip install matplotlib" in lines[0], lines
    assert not list(out.glob("*.png"))
    assert _metrics(out)["dataset"] == "digits"


def test_resume_continues_to_the_total_epochs(run: Path, mnist: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    args = ["train", "--data-dir", str(mnist), "--limit", "600", "--no-progress", "--no-plots"]
    code = main([*args, "--resume", str(run / "training.npz"), "--epochs", "2", "--out", str(out)])
    assert code == 0
    first, metrics = _metrics(run), _metrics(out)
    assert metrics["epochs"] == 2 and len(metrics["train_loss"]) == 2
    assert metrics["train_loss"][0] == first["train_loss"][0]
    assert metrics["train_loss"][1] < metrics["train_loss"][0]
    assert metrics["model"] == "lecture"
    assert metrics["resumed_from"] == str(run / "training.npz")
    assert len(metrics["train_loss_steps"]["loss"]) == 20
    assert (out / "model.npz").exists() and (out / "training.npz").exists()


# --------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize(
    ("backend", "tolerance"), [("numpy", 1e-9), ("array_api_strict", 1e-6)], ids=str
)
def test_evaluate_matches_training_metrics(
    run: Path,
    mnist: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    backend: str,
    tolerance: float,
) -> None:
    if backend != "numpy":
        pytest.importorskip("array_api_strict", reason=f"backend {backend} not installed")
    result = tmp_path / "eval.json"
    argv = ["evaluate", str(run / "model.npz"), "--data-dir", str(mnist), "--no-progress"]
    code = main([*argv, "--backend", backend, "--json", str(result)])
    out = capsys.readouterr().out
    assert code == 0
    printed, written = _last_json(out), json.loads(result.read_text(encoding="utf-8"))
    assert printed == written
    expected = _metrics(run)
    assert printed["backend"] == backend and printed["test_examples"] == 10000
    assert abs(printed["test_accuracy"] - expected["test_accuracy"]) <= tolerance
    assert abs(printed["test_loss"] - expected["test_loss"]) <= 1e-4
    assert "test accuracy:" in out


def test_evaluate_refuses_a_file_that_is_not_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "notes.npz"
    bogus.write_text("not a checkpoint", encoding="utf-8")
    code = main(["evaluate", str(bogus)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("xpconv: error: ") and str(bogus) in err
    assert "Traceback" not in err


def test_evaluate_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["evaluate", str(tmp_path / "nowhere.npz")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("xpconv: error: ") and "nowhere.npz" in err


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--batch-size", "-1"], "--batch-size"),
        (["train", "--model", "nope"], "--model"),
        (["train", "--backend", "nope"], "--backend"),
        (["train", "--lr", "-0.5"], "--lr"),
        (["train", "--limit", "many"], "--limit"),
        (["evaluate", "x.npz", "--backend", "nope"], "--backend"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_bad_options_exit_2_naming_the_option(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main([*argv, "--out", str(tmp_path)] if argv[0] == "train" else argv)
    err = capsys.readouterr().err
    assert code == 2
    assert option in err and "error:" in err
    assert "Traceback" not in err


def test_explicit_data_dir_without_data_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("xpconv: error: ") and "Traceback" not in err


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().err


def test_python_m_xpconv_help() -> None:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    outputs = {}
    for command in ("", "train", "evaluate", "export"):
        done = subprocess.run(
            [sys.executable, "-m", "xpconv", *command.split(), "--help"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": path},
            cwd=REPO,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("usage: xpconv"), done.stdout
        outputs[command] = done.stdout
    assert "train" in outputs[""] and "evaluate" in outputs[""]
    for option in ("--resume", "--limit", "--no-plots", "--backend", "--out"):
        assert option in outputs["train"], option
    assert "--json" in outputs["evaluate"]
    assert "export" in outputs[""] and "--opset" in outputs["export"]


# --------------------------------------------------------------------------- export


def test_export_onnx_prints_every_dimension_of_input_and_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        require_or_skip(False, "onnx is not installed: pip install 'xpconv[interop]'")
    model = xpconv.Sequential([xpconv.Conv2D(2, 3)], backend="numpy", input_shape=(1, 8, 10))
    checkpoint = tmp_path / "maps.npz"
    xpconv.save_model(model, checkpoint)
    out = tmp_path / "maps.onnx"
    assert main(["export", str(checkpoint), str(out), "--opset", "17"]) == 0
    assert capsys.readouterr().out == (
        f"wrote {out}: input 'input' (N, 1, 8, 10) -> output 'output' (N, 2, 6, 8), "
        "opset 17, float32\n"
    )
    assert out.stat().st_size > 0


def test_export_without_onnx_names_the_extra_and_the_other_formats_need_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = xpconv.Sequential([xpconv.Conv2D(2, 3)], backend="numpy", input_shape=(1, 8, 10))
    checkpoint = tmp_path / "maps.npz"
    xpconv.save_model(model, checkpoint)
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    assert main(["export", str(checkpoint), str(tmp_path / "maps.onnx")]) == 1
    assert capsys.readouterr().err == (
        "xpconv: error: export needs the onnx package: pip install 'xpconv[interop]'\n"
    )
    assert not (tmp_path / "maps.onnx").exists()
    copy = tmp_path / "copy.npz"
    assert main(["export", str(checkpoint), str(copy)]) == 0
    assert capsys.readouterr().out == f"wrote {copy}: the model as npz, float32\n"
    np.testing.assert_array_equal(
        xpconv.load_model(copy).predict(np.ones((1, 1, 8, 10), np.float32)),
        model.predict(np.ones((1, 1, 8, 10), np.float32)),
    )


# --------------------------------------------------------------------- distributed


class _FakeMPI:
    """A rank of an MPI job: ``local`` is its index among the ranks of its machine."""

    COMM_TYPE_SHARED = "shared"

    def __init__(self, local: int) -> None:
        self.local = local
        self.comm = self
        self.MPI = self
        self.size = 4

    def __call__(self, timeout: float) -> _FakeMPI:
        return self

    def Split_type(self, kind: str) -> _FakeMPI:  # noqa: N802 (mpi4py's name)
        assert kind == self.COMM_TYPE_SHARED
        return self

    def Get_rank(self) -> int:  # noqa: N802 (mpi4py's name)
        return self.local


@pytest.mark.parametrize(
    ("backend", "device"), [("torch", "cuda:1"), ("cupy", "1"), ("numpy", None)]
)
def test_nccl_ranks_take_the_gpu_of_their_local_rank(
    backend: str, device: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import xpconv.parallel
    from xpconv.cli.parser import build_parser
    from xpconv.cli.train import _communicator

    monkeypatch.setattr(xpconv.parallel, "MPICommunicator", _FakeMPI(local=1))
    monkeypatch.delenv("XPCONV_BACKEND", raising=False)
    args = build_parser().parse_args(["train", "--distributed", "nccl", "--backend", backend])
    _communicator(args)
    assert args.device == device
    args = build_parser().parse_args(
        ["train", "--distributed", "nccl", "--backend", backend, "--device", "7"]
    )
    _communicator(args)
    assert args.device == "7"  # an explicit --device wins
