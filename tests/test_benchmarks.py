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

import xpconv.ops as F  # noqa: E402
from benchmarks import __main__ as cli  # noqa: E402
from benchmarks import cpu, environment, lecture_loops, memory, report, timing  # noqa: E402
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


@pytest.fixture
def no_full_collections(monkeypatch):
    """The timing loop collects garbage before every repeat: late in a run of the suite
    a full collection of the test process's heap takes a second, and these tests check
    the rounds, not the collector."""
    monkeypatch.setattr(timing.gc, "collect", lambda *args: 0)


class _FakeRunner:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def run(self, steps):
        self.log.append((self.name, steps))
        return 1.5


@pytest.mark.usefixtures("no_full_collections")
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


@pytest.mark.usefixtures("no_full_collections")
def test_warm_up_lasts_at_least_warmup_s():
    """Warm-up steps go on one at a time until ``warmup_s`` has passed (a fresh
    process's balancer decides after 0.1 s), then calibration and the rounds."""
    log, now = [], [0.0]

    class _Slow(_FakeRunner):
        def run(self, steps):
            now[0] += 0.1 * steps
            return super().run(steps)

    policies = {"a": timing.Policy(warmup=1, warmup_s=0.45, rounds=1, fixed_steps=1)}
    timing.run_interleaved(
        {"a": _Slow("a", log)}, policies, pause_s=0, clock=lambda: now[0], cpu=lambda: None
    )
    assert [steps for _, steps in log] == [1, 1, 1, 1, 1, 1, 1]  # 5 warm-up, calibration, 1


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


@pytest.mark.usefixtures("no_full_collections")
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


@pytest.mark.slow  # every contender and report (a minute); the parts are tested above
def test_smoke_run_writes_json_and_png(tmp_path, capsys):
    # one workload (the suite's CI time): both run the same runners and reports
    _torch()
    json_path, png_path = tmp_path / "bench.json", tmp_path / "ratios.png"
    args = ["--smoke", "--workload", "W2", "--json", str(json_path), "--png", str(png_path)]
    status = cli.main([*args, "--markdown"])
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
    assert groups == {("W2", m, 4) for m in ("train", "inference")}
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


# ----------------------------------------------------------------- busy-ness, processes


class _FakeCpu:
    """``cpu_sample`` stand-in, called before and after each repeat: other processes
    take ``load[k]`` cores during repeat k (one second each)."""

    def __init__(self, load):
        from xpconv.backends.numpy import host

        self.load, self.calls, self.total, self.host = list(load), 0, 0.0, host

    def __call__(self):
        k, self.calls = self.calls, self.calls + 1
        if k % 2:  # after repeat k // 2
            self.total += self.load[k // 2]
        return self.host.CpuSample(wall=float(k), machine_busy=self.total, own=0.0, cores=2)


def test_context_line_names_the_variables_that_choose_kernels():
    line = report.context_line(
        {
            "machine": {"processor": "AMD EPYC", "cores_usable": 2},
            "blas_kernel": "openblas 0.3.31 Haswell, 2 threads",
            "environment": {"OPENBLAS_CORETYPE": "Haswell", "OMP_NUM_THREADS": None},
            "settings": {"rounds": 3},
        }
    )
    assert "Haswell, 2 threads, environment OPENBLAS_CORETYPE=Haswell;" in line
    assert "OMP_NUM_THREADS" not in line


@pytest.mark.usefixtures("no_full_collections")
def test_busy_repeats_are_run_again_within_bounds():
    log = []
    runners = {"a": _FakeRunner("a", log)}
    policies = {"a": timing.Policy(warmup=0, rounds=2, fixed_steps=1, retries=2)}
    # round 1: busy, busy, clean -> kept after two retries; round 2: busy three times
    cpu_load = _FakeCpu([1.0, 1.0, 0.0, 1.5, 1.5, 1.5])
    result = timing.run_interleaved(runners, policies, pause_s=0, cpu=cpu_load)["a"]
    assert len(result.samples) == 2
    assert result.busy == [0.0, 1.5]  # the last attempt's busy-ness is kept
    assert result.retried == 4
    assert result.clean == 1
    assert len(log) == 1 + 6  # calibration + six timed repeats


def test_own_process_rounds_rotate_and_collect(monkeypatch):
    from benchmarks import isolated

    launched = []

    def launch(spec, timeout_s):
        launched.append((spec["contender"], spec["host_tuning"]))
        return {"seconds": 0.01, "steps": 3, "busy": 0.1, "retried": 1, "last_value": 2.0}

    policies = {n: timing.Policy(rounds=2) for n in ("xpconv-numpy", "torch")}
    got = isolated.time_own_process(
        ["xpconv-numpy", "torch"], "W2", "train", 8, policies, launch=launch
    )
    # the peer runs as its users run it, without xpconv's host tuning
    assert launched == [
        ("xpconv-numpy", True),
        ("torch", False),
        ("torch", False),
        ("xpconv-numpy", True),
    ]
    assert got["torch"].samples == [0.01, 0.01] and got["torch"].retried == 2
    assert got["torch"].busy == [0.1, 0.1] and got["torch"].steps == 3

    launched.clear()
    isolated.time_own_process(
        ["xpconv-numpy", "torch"], "W2", "train", 8, policies, launch=launch, peer_host_tuning=True
    )
    assert all(tuned for _, tuned in launched)


def test_peer_host_tuning_needs_own_process(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--smoke", "--peer-host-tuning"])
    assert "--peer-host-tuning: applies only with --own-process" in capsys.readouterr().err


def test_context_line_says_whether_peers_ran_with_host_tuning():
    base = {"settings": {"rounds": 7, "own_process": True}, "machine": {}, "versions": {}}
    assert "peers without xpconv's host tuning" in report.context_line(base)
    base["settings"]["peer_host_tuning"] = True
    assert "peers with xpconv's host tuning" in report.context_line(base)


@pytest.mark.slow
def test_own_process_child_times_one_contender():
    from benchmarks import isolated

    spec = {
        "contender": "xpconv-numpy",
        "workload": "W1",
        "mode": "inference",
        "batch": 4,
        "seed": 0,
        "threads": 1,
        "policy": {"warmup": 0, "target_s": 0.0, "max_steps": 1, "fixed_steps": 1},
    }
    got = isolated._run_child(spec, 120)
    assert got["steps"] == 1 and got["seconds"] > 0
    assert set(got["host_tuning"]) == {"keep_freed_memory", "one_blas_thread", "balance_threads"}


def test_busy_check_pairs_tries_and_ends_its_background(monkeypatch):
    from benchmarks import busy

    started = []

    class _Job:
        def __init__(self, args, **kwargs):
            started.append(args)
            self.killed = False

        def poll(self):
            return None

        def kill(self):
            self.killed = True

        def wait(self):
            started.append("ended")

    monkeypatch.setattr(busy.subprocess, "Popen", _Job)
    monkeypatch.setattr(busy.time, "sleep", lambda s: None)
    seconds = iter([1.0, 1.5, 1.0, 3.0])
    result = busy.busy_check(("torch",), tries=2, epoch=lambda one, t: next(seconds))
    run = result["runs"][0]
    assert run["tries"] == [
        {"default_s": 1.5, "one_blas_thread_s": 1.0},
        {"default_s": 3.0, "one_blas_thread_s": 1.0},
    ]
    assert run["worst_ratio"] == 3.0 and started[-1] == "ended"
    assert "load-torch" in started[0]
    assert "beside torch" in busy.format_busy(result)


def test_results_file_named_by_machine_kind():
    assert (
        environment.results_name(
            {"vendor": "amd", "vector_extensions": ["avx2", "avx512f"], "cores_usable": 2}
        )
        == "cpu-amd-avx512-2core.json"
    )
    zen4 = {"vendor": "amd", "family": 25, "vector_extensions": ["avx512f"], "cores_usable": 2}
    assert environment.results_name(zen4) == "cpu-amd-family25-avx512-2core.json"
    assert (
        environment.results_name({"vendor": "intel", "vector_extensions": [], "cores_usable": 4})
        == "cpu-intel-4core.json"
    )
    found = environment.cpu_features()
    assert found["vendor"] and isinstance(found["vector_extensions"], list)


def test_ops_per_step_counts_torch_operations():
    pytest.importorskip("torch")
    from benchmarks import opcount

    rows = opcount.ops_per_step(("W1",), ("xpconv-numpy", "xpconv-torch", "torch"), batch=2)
    # NumPy: no hook; the compiled xpconv-torch step is counted as its eager twin
    assert [r["backend"] for r in rows] == ["xpconv-torch-eager", "torch"]
    for row in rows:
        assert 0 < row["computing_ops_per_step"] < row["ops_per_step"]
        assert row["most_frequent"] and row["most_frequent"][0][1] >= 1


def test_roofline_counts_direct_convolution_flops():
    """The step FLOPs the roofline counts: W2's train step 25.0 MFLOP per image, W1's
    2.0 (three products per layer, the first layer's input gradient left out)."""
    from benchmarks import roofline

    assert roofline.step_mflop("W2", "train") == pytest.approx(24.995, abs=1e-3)
    assert roofline.step_mflop("W1", "train") == pytest.approx(2.007, abs=1e-3)
    assert roofline.step_mflop("W2", "inference") == pytest.approx(8.482, abs=1e-3)
    records = [
        {
            "workload": "W2",
            "mode": "train",
            "batch": 128,
            "backend": "torch",
            "images_per_s": 4000.0,
        }
    ]
    peak = {"numpy": 200.0, "peak": 200.0, "size": 4096, "threads": 2}
    result = roofline.roofline(records, peak=peak)
    (row,) = result["rows"]
    assert row["gflop_per_s"] == pytest.approx(4000 * roofline.step_mflop("W2", "train") / 1e3)
    assert row["of_peak"] == pytest.approx(row["gflop_per_s"] / 200)
    text = roofline.format_roofline(result)
    assert "W2" in text and "0.50" in text and "200 GFLOP/s" in text


def test_matmul_peak_is_measured_in_a_fresh_process():
    from benchmarks import roofline

    peak = roofline.measure_peak(threads=1, size=64, repeats=1)
    assert peak["peak"] == max(v for k, v in peak.items() if k in ("numpy", "torch")) > 0
    assert (peak["size"], peak["threads"]) == (64, 1)


def test_conv_algorithm_is_chosen_by_the_environment(monkeypatch):
    from benchmarks import workloads

    plain = workloads.build_xpconv("W2", "numpy")
    monkeypatch.setenv(workloads.ALGORITHM_ENV, "winograd")
    wino = workloads.build_xpconv("W2", "numpy")
    convs = [layer for layer in wino.layers if type(layer).__name__ == "Conv2D"]
    assert [c.uses_winograd for c in convs] == [True, True]
    for a, b in zip(plain.state_dict().values(), wino.state_dict().values()):
        np.testing.assert_array_equal(a, b)
