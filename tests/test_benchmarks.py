"""The benchmark harness at tiny scale: record format, the lecture loop convolution,
``--gpu`` without a device, the chart. Checks shapes of the output, never speed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import torch_or_skip

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the benchmarks package is not installed with xpconv
    sys.path.insert(0, str(REPO_ROOT))

import xpconv.functional as F  # noqa: E402
from benchmarks import __main__ as cli  # noqa: E402
from benchmarks import cpu, lecture_loops, memory, report, timing  # noqa: E402
from benchmarks.workloads import CONTENDERS, make_data  # noqa: E402

TOP_KEYS = {
    "machine",
    "versions",
    "threads",
    "blas",
    "dtype",
    "tf32",
    "date",
    "command",
    "environment",
    "settings",
    "results",
    "per_layer",
    "lecture_loops",
    "memory",
}


def _torch():
    return torch_or_skip()  # PyTorch is the benchmarks' peer


# ----------------------------------------------------------------- lecture loops


@pytest.mark.parametrize(
    "shape, kernel",
    [((2, 1, 12, 12, 4), 5), ((1, 3, 7, 9, 2), 3), ((2, 2, 6, 6, 3), 1)],
)
def test_lecture_loop_conv_equals_conv2d(shape, kernel):
    n, c, h, w, o = shape
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, c, h, w))
    weight = rng.standard_normal((o, c, kernel, kernel))
    bias = rng.standard_normal(o)
    got = lecture_loops.conv2d_loops(x, weight, bias, (kernel - 1) // 2)
    expected = np.asarray(F.conv2d(x, weight, bias, padding="same"))
    assert got.shape == expected.shape == (n, o, h, w)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_lecture_loops_record():
    case = {"batch": 1, "in_channels": 1, "out_channels": 2, "size": 6, "kernel": 3}
    rec = lecture_loops.run(repeats=1, case=case)
    assert rec["matches"] is True
    assert rec["max_abs_diff"] <= 1e-12
    assert rec["shape"]["out"] == [1, 2, 6, 6]
    assert rec["loops_s"] > 0 and rec["conv2d_s"] > 0
    assert rec["speedup"] == pytest.approx(rec["loops_s"] / rec["conv2d_s"])


# ----------------------------------------------------------------- timing


class _FakeRunner:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def run(self, steps):
        self.log.append((self.name, steps))
        return 1.5


def test_interleaved_rounds_rotate_and_respect_policies():
    log = []
    runners = {name: _FakeRunner(name, log) for name in ("a", "b", "c")}
    policies = {
        "a": timing.Policy(warmup=2, rounds=3, fixed_steps=2),
        "b": timing.Policy(warmup=0, rounds=3, fixed_steps=1),
        "c": timing.Policy(warmup=1, rounds=1, fixed_steps=1),
    }
    result = timing.run_interleaved(runners, policies, pause_s=0)
    assert [len(result[n].samples) for n in "abc"] == [3, 3, 1]
    assert result["a"].steps == 2 and result["a"].last_value == 1.5
    timed = [name for name, _ in log[5:]]  # after warm-up and calibration
    assert timed == ["a", "b", "c", "b", "a", "a", "b"]  # rotation; c only in round 1
    assert all(s >= 0 for s in result["a"].samples)


def test_steps_for_targets_a_duration():
    policy = timing.Policy(target_s=0.1, max_steps=50)
    assert timing.steps_for(0.01, policy) == 10
    assert timing.steps_for(1.0, policy) == 1
    assert timing.steps_for(1e-6, policy) == 50


# ----------------------------------------------------------------- records


def _check_record(rec):
    for key in report.RECORD_KEYS:
        assert key in rec, f"record misses {key}: {rec}"
    assert rec["workload"] in ("W1", "W2")
    assert rec["mode"] in ("train", "inference")
    assert rec["backend"] in CONTENDERS
    assert rec["images_per_s"] > 0
    assert rec["median_s"] > 0
    assert rec["repeats"] >= 1
    assert rec["images_per_s"] == pytest.approx(rec["batch"] / rec["median_s"])
    assert rec["finite"] is True


def test_throughput_numpy_only_has_no_ratio():
    settings = cpu.Settings(
        workloads=("W1",),
        modes=("train", "inference"),
        batches=(2,),
        contenders=("xpconv-numpy",),
        warmup=0,
        rounds=1,
        target_s=0.0,
        max_steps=1,
        pause_s=0.0,
    )
    records = cpu.throughput(settings)
    assert len(records) == 2
    for rec in records:
        _check_record(rec)
        assert rec["ratio_vs_torch"] is None


def test_smoke_run_writes_json_and_png(tmp_path, capsys):
    _torch()
    json_path, png_path = tmp_path / "bench.json", tmp_path / "ratios.png"
    status = cli.main(["--smoke", "--json", str(json_path), "--png", str(png_path), "--markdown"])
    assert status == 0
    out = capsys.readouterr().out
    assert "numpy/torch" in out and "| W2 | train | 4 |" in out

    data = json.loads(json_path.read_text())
    assert TOP_KEYS <= set(data)
    assert data["dtype"] == "float32"
    assert data["machine"]["cores_usable"] >= 1
    assert {"python", "numpy", "torch", "xpconv", "array_api_compat"} <= set(data["versions"])
    assert data["threads"]["torch"] >= 1
    assert "OPENBLAS_CORETYPE" in data["environment"]
    assert "OPENBLAS_L2_SIZE" in data["environment"]
    assert data["tf32"]["applies"] is False

    results = data["results"]
    for rec in results:
        _check_record(rec)
    groups = {(r["workload"], r["mode"], r["batch"]) for r in results}
    assert groups == {(w, m, 4) for w in ("W1", "W2") for m in ("train", "inference")}
    for rec in results:
        if rec["backend"] == "torch":
            assert rec["ratio_vs_torch"] == 1.0
        peer = next(
            r
            for r in results
            if r["backend"] == "torch"
            and (r["workload"], r["mode"], r["batch"])
            == (rec["workload"], rec["mode"], rec["batch"])
        )
        assert rec["ratio_vs_torch"] == pytest.approx(rec["images_per_s"] / peer["images_per_s"])
        assert rec["reference_only"] == (rec["backend"] == "xpconv-array_api_strict")

    assert all(check["ok"] for check in data["peer_check"])
    layers = data["per_layer"]["layers"]
    assert [r["layer"] for r in layers][:2] == ["conv2d_0 + maxpool2d_0", "conv2d_1 + maxpool2d_1"]
    assert all(r["forward_s"] >= 0 and r["backward_s"] >= 0 for r in layers)
    assert data["lecture_loops"]["matches"] is True
    assert data["memory"]["process_peak_rss_mb"] > 0

    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_from_records(tmp_path):
    pytest.importorskip("matplotlib", reason="the chart needs matplotlib")
    records = [
        {"workload": "W2", "mode": "train", "batch": 128, "backend": b, "ratio_vs_torch": r}
        for b, r in (("xpconv-numpy", 0.5), ("xpconv-torch", 0.8), ("torch", 1.0))
    ]
    path = report.write_png(records, tmp_path / "sub" / "chart.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"


def test_peer_computes_the_same_function():
    _torch()
    check = cpu.peer_check("W2", batch=3, steps=1)
    assert check["ok"], check


def test_memory_measured_in_a_fresh_process():
    rec = memory.measure_in_subprocess("W1", "xpconv-numpy", "train", batch=4, steps=1)
    assert "error" not in rec, rec
    assert rec["backend"] == "xpconv-numpy" and rec["batch"] == 4
    assert rec["peak_rss_mb"] > 0 and rec["increase_mb"] >= 0


def test_data_is_fixed_by_the_seed():
    x1, y1 = make_data(5, seed=1)
    x2, y2 = make_data(5, seed=1)
    assert x1.dtype == np.float32 and x1.shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


# ----------------------------------------------------------------- command line


def test_batch_flag_repeats_and_takes_lists():
    args = cli.build_parser().parse_args(["--quick", "--batch", "32", "--batch", "128,512,32"])
    settings = cli.settings_from(args)
    assert settings.batches == (32, 128, 512)
    assert settings.rounds == cli.QUICK["rounds"]
    args = cli.build_parser().parse_args(["--no-strict", "--workload", "W2"])
    settings = cli.settings_from(args)
    assert "xpconv-array_api_strict" not in settings.contenders
    assert settings.workloads == ("W2",)


def test_table_and_markdown_from_records():
    records = [
        {
            "workload": "W1",
            "mode": "train",
            "batch": 128,
            "backend": b,
            "images_per_s": v,
            "ratio_vs_torch": v / 2000.0,
        }
        for b, v in (("xpconv-numpy", 1000.0), ("torch", 2000.0))
    ]
    text = report.format_table(records)
    assert "1,000" in text and "2,000" in text and "0.50" in text
    md = report.markdown_table(records)
    assert "| W1 | train | 128 | 1,000 | 2,000 | 0.50 |" in md
