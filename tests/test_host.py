"""Host tuning: nothing changes in the process unless ``tune_host`` is called."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from xpconv.backends.numpy import host

# In a fresh interpreter: whether a 64 MB block comes from the heap (glibc's mallopt
# thresholds), OpenBLAS's idle timeout as it has read it (0: never set, its default),
# and its thread count after a training step.
_PROBE = """
import ctypes, json, sys
import numpy as np
import xpconv
model = xpconv.Sequential([xpconv.Conv2D(4, 3, activation="relu"), xpconv.Flatten(),
                           xpconv.Dense(3)], input_shape=(1, 8, 8), backend="numpy")
rng = np.random.default_rng(0)
done = xpconv.tune_host() if sys.argv[1] == "tune" else None
model.train_batch(rng.normal(size=(64, 1, 8, 8)), rng.integers(0, 3, size=64))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(64 << 20)
with open("/proc/self/maps") as maps:
    heap = [line.split()[0].split("-") for line in maps if line.rstrip().endswith("[heap]")]
in_heap = any(int(lo, 16) <= block < int(hi, 16) for lo, hi in heap)
timeout = ctypes.CDLL(xpconv.backends.numpy.host.openblas_paths()[0]).openblas_thread_timeout()
threads = xpconv.backends.numpy.host.blas_threads()
print(json.dumps({"in_heap": in_heap, "timeout": timeout, "threads": threads, "done": done}))
"""


def _probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENBLAS", "XPCONV_"))}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], env={**clean, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _needs_linux_openblas() -> None:
    if sys.platform != "linux" or not host.openblas_paths() or (os.cpu_count() or 1) < 2:
        pytest.skip("needs Linux with glibc and NumPy on a multi-threaded OpenBLAS (2+ cores)")


@pytest.mark.slow
def test_import_and_numpy_model_leave_the_process_untouched() -> None:
    _needs_linux_openblas()
    untouched = _probe("plain")
    assert untouched["in_heap"] is False  # glibc's default: a 64 MB block is mmapped
    assert untouched["timeout"] == 0  # OpenBLAS's default: workers spin about 0.1 s
    assert untouched["threads"] == min(os.cpu_count() or 1, 64)  # OpenBLAS's own choice


@pytest.mark.slow
def test_tune_host_changes_allocator_and_blas_idle_threads_not_their_count() -> None:
    _needs_linux_openblas()
    tuned = _probe("tune")
    assert tuned["done"] == {
        "keep_freed_memory": True,
        "quiet_blas_threads": True,
        "balance_threads": True,
    }
    assert tuned["in_heap"] is True
    assert tuned["timeout"] == 4  # idle OpenBLAS threads sleep at once
    assert tuned["threads"] == min(os.cpu_count() or 1, 64)  # given back after each hold


@pytest.mark.slow
def test_host_tuning_off_from_the_environment() -> None:
    _needs_linux_openblas()
    off = _probe("tune", XPCONV_HOST_TUNING="0")
    assert off["done"] == {
        "keep_freed_memory": False,
        "quiet_blas_threads": False,
        "balance_threads": False,
    }
    assert off["in_heap"] is False
    assert off["timeout"] == 0


def test_keep_freed_memory_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    if sys.platform != "linux":
        pytest.skip("the allocator setting exists on Linux with glibc only")
    assert host.keep_freed_memory() is True
    monkeypatch.setenv("XPCONV_KEEP_FREED_MEMORY", "0")
    assert host.keep_freed_memory() is False


def test_others_since_counts_only_other_processes() -> None:
    earlier = host.CpuSample(wall=10.0, machine_busy=100.0, own=5.0, cores=2)
    later = host.CpuSample(wall=10.5, machine_busy=100.8, own=5.3, cores=2)
    assert later.others_since(earlier) == pytest.approx(1.0)  # 0.5 of 0.8 s was ours
    assert earlier.others_since(later) == 0.0  # no time passed forwards
    swamped = host.CpuSample(wall=11.0, machine_busy=110.0, own=5.0, cores=2)
    assert swamped.others_since(earlier) == 2.0  # clipped to the cores


def test_cpu_sample_reads_the_machine() -> None:
    if not os.path.exists("/proc/stat"):
        pytest.skip("needs /proc/stat (Linux)")
    first = host.cpu_sample()
    sum(i * i for i in range(200_000))
    second = host.cpu_sample()
    assert first is not None and second is not None
    assert second.wall > first.wall and second.own >= first.own
    assert 0.0 <= second.others_since(first) <= second.cores


def test_balancer_gives_one_thread_while_others_are_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    samples: list[host.CpuSample] = []
    monkeypatch.setattr(host, "cpu_sample", lambda: samples[-1])
    monkeypatch.setattr(host, "usable_cores", lambda: 2)
    monkeypatch.setattr(host.time, "monotonic", lambda: samples[-1].wall)
    balancer = host._Balancer()

    def at(wall: float, busy: float, own: float) -> int | None:
        samples.append(host.CpuSample(wall, busy, own, 2))
        return balancer.step()

    assert at(0.0, 0.0, 0.0) is None  # not switched on: nothing happens
    balancer.enable()
    assert at(0.0, 0.0, 0.0) == 1  # the first step is cautious
    assert at(0.05, 0.5, 0.0) == 1  # within the window: no decision
    assert at(0.2, 0.21, 0.2) == 2  # others took 0.05 cores: idle, back to 2
    assert at(0.4, 0.61, 0.4) == 1  # since 0.0: others took 0.52 cores, one thread
    assert at(0.6, 0.81, 0.6) == 1  # since 0.2: 0.25 cores, between the marks, keep
    assert at(0.8, 0.85, 0.8) == 2  # since 0.4: 0.1 cores


def test_balancer_is_not_fooled_by_one_window_of_tick_noise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/proc/stat counts 10 ms ticks: on an idle machine, one 0.1 s window may read 0.3
    cores of others' work that another window gives back; over 0.3 s it stays small."""
    samples: list[host.CpuSample] = []
    monkeypatch.setattr(host, "cpu_sample", lambda: samples[-1])
    monkeypatch.setattr(host, "usable_cores", lambda: 2)
    monkeypatch.setattr(host.time, "monotonic", lambda: samples[-1].wall)
    balancer = host._Balancer()
    busy = own = 0.0
    samples.append(host.CpuSample(0.0, busy, own, 2))
    balancer.enable()
    counts = []
    for k, noise in enumerate([0, 0, 0, 0.03, -0.03, 0, 0.03, 0, -0.03, 0]):
        busy, own = busy + 0.16 + noise, own + 0.16  # this process: 1.6 cores
        samples.append(host.CpuSample(0.1 * k, busy, own, 2))
        counts.append(balancer.step())
    assert counts[2:] == [2] * 8
    for k in range(10, 13):  # a second process takes a whole core
        busy, own = busy + 0.2, own + 0.1
        samples.append(host.CpuSample(0.1 * k, busy, own, 2))
        counts.append(balancer.step())
    assert counts[-1] == 1


def test_parallel_workers_follow_the_balancer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "_BALANCER", host._Balancer())
    assert host.parallel_workers() is None  # balancing off: no limit
    monkeypatch.setattr(host._BALANCER, "enabled", True)
    monkeypatch.setattr(host._BALANCER, "current", 1)
    assert host.parallel_workers() == 1


def test_set_blas_threads_round_trips() -> None:
    _needs_linux_openblas()
    before = host.blas_threads()
    try:
        assert host.set_blas_threads(1) is True
        assert host.blas_threads() == 1
    finally:
        host.set_blas_threads(before)
    assert host.blas_threads() == before


def test_single_blas_thread_holds_one_thread_and_gives_the_count_back() -> None:
    _needs_linux_openblas()
    before = host.blas_threads()
    assert before is not None and before > 1
    with host.single_blas_thread() as outside:
        assert outside == before and host.blas_threads() == 1
        with host.single_blas_thread() as nested:  # shares the hold
            assert nested == before
        assert host.blas_threads() == 1  # still held: the outer block is open
    assert host.blas_threads() == before


def test_seeded_training_repeats_bit_for_bit_on_any_thread_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same seeded LeNet steps give the same bits whether the balancer lets the
    NumPy kernels use one thread or two, and whatever OpenBLAS's own count is: the
    products are cut into parts the same way every time, each on one BLAS thread."""
    _needs_linux_openblas()
    import numpy as np

    import xpconv
    from xpconv.models import zoo

    rng = np.random.default_rng(0)
    x = rng.random((32, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, size=32)
    outside = host.blas_threads()
    runs = []
    for blas, workers in [(outside, 2), (outside, 1), (1, 2), (1, 1)]:
        monkeypatch.setattr(host, "parallel_workers", lambda w=workers: w)
        host.set_blas_threads(blas)
        try:
            model = zoo.lenet(backend="numpy", batch_norm=False, seed=0)
            optimizer = xpconv.SGD(0.05, momentum=0.9)
            for _ in range(3):
                model.train_batch(x, y)
                optimizer.step(model.parameters())
        finally:
            host.set_blas_threads(outside)
        runs.append({k: np.array(v) for k, v in model.state_dict().items()})
    for run in runs[1:]:
        for name, value in run.items():
            np.testing.assert_array_equal(value, runs[0][name], name)
