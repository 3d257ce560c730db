"""Host tuning: nothing changes in the process unless ``tune_host`` is called."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from xpconv.backends.numpy import host

# In a fresh interpreter, after a small ``Trainer.fit`` (with ``tune_host`` as the
# first argument says): whether a 64 MB block comes from the heap (glibc's mallopt
# thresholds), OpenBLAS's idle timeout as it has read it (0: never set, its default),
# and its thread count.
_PROBE = """
import ctypes, json, sys
import numpy as np
import xpconv
model = xpconv.Sequential([xpconv.Conv2D(4, 3, activation="relu"), xpconv.Flatten(),
                           xpconv.Dense(3)], input_shape=(1, 8, 8), backend="numpy")
rng = np.random.default_rng(0)
x, y = rng.random((64, 1, 8, 8), dtype=np.float32), rng.integers(0, 3, size=64)
np.ones((512, 512)) @ np.ones((512, 512))  # OpenBLAS's pool is up, as in any program
trainer = xpconv.Trainer(model, xpconv.SGD(0.05), progress=False,
                         tune_host=sys.argv[1] == "tune")
trainer.fit(x, y, epochs=2, batch_size=16)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(64 << 20)
with open("/proc/self/maps") as maps:
    heap = [line.split()[0].split("-") for line in maps if line.rstrip().endswith("[heap]")]
in_heap = any(int(lo, 16) <= block < int(hi, 16) for lo, hi in heap)
host = xpconv.backends.numpy.host
timeout = ctypes.CDLL(host.openblas_paths()[0]).openblas_thread_timeout()
print(json.dumps({"in_heap": in_heap, "timeout": timeout, "threads": host.blas_threads(),
                  "balancing": host.parallel_workers() is not None}))
"""

# Trainer.fit in the main thread while another thread runs NumPy products, with and
# without host tuning: must finish (tuning used to shut OpenBLAS's pool down under it).
_BESIDE_BLAS = """
import sys, threading
import numpy as np
import xpconv
stop = threading.Event()
def products():
    a = np.ones((300, 300))
    while not stop.is_set():
        a @ a
worker = threading.Thread(target=products, daemon=True)
worker.start()
model = xpconv.Sequential([xpconv.Conv2D(4, 3, activation="relu"), xpconv.Flatten(),
                           xpconv.Dense(3)], input_shape=(1, 8, 8), backend="numpy")
rng = np.random.default_rng(0)
x, y = rng.random((32, 1, 8, 8), dtype=np.float32), rng.integers(0, 3, size=32)
for _ in range(3):
    xpconv.Trainer(model, xpconv.SGD(0.05), progress=False,
                   tune_host=sys.argv[1] == "tune").fit(x, y, epochs=1, batch_size=8)
stop.set()
worker.join(30)
print("done", worker.is_alive())
"""


def _clean_env(**env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENBLAS", "XPCONV_"))}
    return {**clean, **env}


def _probe(mode: str, **env: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], env=_clean_env(**env), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _needs_linux_openblas() -> None:
    if sys.platform != "linux" or not host.openblas_paths() or (os.cpu_count() or 1) < 2:
        pytest.skip("needs Linux with glibc and NumPy on a multi-threaded OpenBLAS (2+ cores)")


@pytest.mark.slow
def test_fit_leaves_the_process_untouched() -> None:
    _needs_linux_openblas()
    untouched = _probe("plain")
    assert untouched["in_heap"] is False  # glibc's default: a 64 MB block is mmapped
    assert untouched["timeout"] == 0  # OpenBLAS's default: idle workers spin a while
    assert untouched["threads"] == min(os.cpu_count() or 1, 64)  # OpenBLAS's own choice
    assert untouched["balancing"] is False


@pytest.mark.slow
def test_fit_with_tune_host_tunes_allocator_and_blas_threads() -> None:
    _needs_linux_openblas()
    tuned = _probe("tune")
    assert tuned["in_heap"] is True
    assert tuned["threads"] == 1  # xpconv splits the products over its own threads
    assert tuned["timeout"] == 0  # the pool was never shut down to re-read it
    assert tuned["balancing"] is True


@pytest.mark.slow
def test_host_tuning_off_from_the_environment() -> None:
    _needs_linux_openblas()
    off = _probe("tune", XPCONV_HOST_TUNING="0")
    assert off["in_heap"] is False
    assert off["threads"] == min(os.cpu_count() or 1, 64)
    assert off["balancing"] is False


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["plain", "tune"])
def test_fit_beside_a_thread_in_blas_does_not_hang(mode: str) -> None:
    """Three fresh interpreters at once (a hang came in most tries, not all)."""
    _needs_linux_openblas()
    cmd = [sys.executable, "-c", _BESIDE_BLAS, mode]
    procs = [
        subprocess.Popen(cmd, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    try:
        outputs = [proc.communicate(timeout=180) for proc in procs]
    except subprocess.TimeoutExpired:
        pytest.fail(f"Trainer.fit ({mode}) beside a thread doing matrix products hung")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err.decode()
        assert out.decode().split() == ["done", "False"]


def test_tune_host_reports_what_it_did(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XPCONV_HOST_TUNING", "0")
    assert host.tune_host() == {
        "keep_freed_memory": False,
        "one_blas_thread": False,
        "balance_threads": False,
    }


def test_trainer_refuses_a_non_bool_tune_host() -> None:
    import xpconv

    model = xpconv.Sequential([xpconv.Dense(2)], input_shape=(3,), backend="numpy")
    with pytest.raises(TypeError, match="tune_host: expected True or False, got 'yes'"):
        xpconv.Trainer(model, xpconv.SGD(0.1), tune_host="yes")  # type: ignore[arg-type]


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


_STAT = """cpu  400 0 200 9000 100 0 0 0 0 0
cpu0 100 0 50 3000 30 0 0 0 0 0
cpu1 200 0 100 3000 40 0 0 0 0 0
cpu2 100 0 50 3000 30 0 0 0 0 0
intr 12345
"""


def _fake_stat(monkeypatch: pytest.MonkeyPatch, allowed: set[int] | None) -> None:
    import io

    monkeypatch.setattr(host, "open", lambda path: io.StringIO(_STAT), raising=False)
    if allowed is None:
        monkeypatch.delattr(host.os, "sched_getaffinity", raising=False)
    else:
        monkeypatch.setattr(host.os, "sched_getaffinity", lambda pid: allowed)


@pytest.mark.skipif(not hasattr(os, "sysconf"), reason="needs the clock tick of POSIX")
def test_cpu_sample_counts_only_the_cpus_this_process_may_run_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tick = os.sysconf("SC_CLK_TCK")
    _fake_stat(monkeypatch, {0, 2})  # busy: user + nice + system (+ irq, softirq, steal)
    sample = host.cpu_sample()
    assert sample is not None and sample.cores == 2
    assert sample.machine_busy == pytest.approx((150 + 150) / tick)
    _fake_stat(monkeypatch, {5})  # a CPU /proc/stat does not list: the whole machine
    sample = host.cpu_sample()
    assert sample is not None and (sample.cores, sample.machine_busy) == (3, 600 / tick)
    _fake_stat(monkeypatch, None)  # no affinity mask (not Linux): the whole machine
    sample = host.cpu_sample()
    assert sample is not None and (sample.cores, sample.machine_busy) == (3, 600 / tick)


def test_tune_host_reports_each_change_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XPCONV_HOST_TUNING", raising=False)
    balancer = host._Balancer()
    monkeypatch.setattr(host, "_BALANCER", balancer)
    monkeypatch.setattr(host, "keep_freed_memory", lambda: False)
    monkeypatch.setattr(host, "one_blas_thread", lambda: True)
    monkeypatch.setattr(balancer, "enable", lambda: setattr(balancer, "enabled", True))
    assert host.tune_host() == {
        "keep_freed_memory": False,
        "one_blas_thread": True,
        "balance_threads": True,
    }


def test_the_balancer_forgets_samples_exactly_one_horizon_old(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sample exactly ``horizon`` older than the next is dropped: the decision reads
    the last ``horizon`` seconds only (binary-exact times, so the edge is the edge)."""
    samples: list[host.CpuSample] = []
    monkeypatch.setattr(host, "cpu_sample", lambda: samples[-1])
    monkeypatch.setattr(host, "usable_cores", lambda: 2)
    monkeypatch.setattr(host.time, "monotonic", lambda: samples[-1].wall)
    balancer = host._Balancer()
    balancer.window, balancer.horizon = 0.25, 0.5

    def at(wall: float, busy: float) -> int | None:
        samples.append(host.CpuSample(wall, busy, 0.0, 2))
        return balancer.step()

    samples.append(host.CpuSample(0.0, 0.0, 0.0, 2))
    balancer.enable()
    assert at(0.0, 0.0) == 1  # the first step
    assert at(0.25, 1.0) == 1  # others took every core
    assert at(0.75, 1.0) == 2  # then none; 0.25 is a horizon back, so 0.0 drops out


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


def test_product_threads_follow_openblas_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels split products only while OpenBLAS runs on one thread; they never
    set its count themselves. (OpenBLAS is set to two threads first: a command run
    earlier in this process may have tuned it to one.)"""
    _needs_linux_openblas()
    found = host.blas_threads()
    assert found is not None
    monkeypatch.setattr(host, "_OWNER", host._BlasOwner())
    try:
        assert host.set_blas_threads(2) is True
        assert host.product_threads() is None  # OpenBLAS threads its own products
        host.set_blas_threads(1)  # as OPENBLAS_NUM_THREADS=1 would
        assert host.product_threads() == 1  # parts, one after another
        monkeypatch.setattr(host._OWNER, "before", 2)  # as one_blas_thread leaves it
        assert host.product_threads() == 2
        host.set_blas_threads(2)  # set again by someone else: whole products
        assert host.product_threads() is None
    finally:
        host.set_blas_threads(found)


def _training_steps(build: str, x: object, y: object) -> dict:
    import numpy as np

    import xpconv
    from xpconv.models import zoo

    if build == "lenet":
        model = zoo.lenet(backend="numpy", batch_norm=False, seed=0)
    else:  # the fused convolution + dense step, its head product in parts
        model = zoo.lecture(backend="numpy", seed=0)
    optimizer = xpconv.SGD(0.05, momentum=0.9)
    for _ in range(3):
        model.train_batch(x, y)
        optimizer.step(model.parameters())
    return {k: np.array(v) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("build", ["lenet", "lecture"])
@pytest.mark.parametrize("tuned", [False, True])
def test_seeded_training_repeats_bit_for_bit_on_any_thread_count(
    monkeypatch: pytest.MonkeyPatch, tuned: bool, build: str
) -> None:
    """The same seeded steps of LeNet and of the lecture network give the same bits
    whether the NumPy kernels may use one thread or two, or wait for OpenBLAS's
    spinning threads: untuned (OpenBLAS threads the products it is given; the kernels
    give it whole only those they cannot cut into parts it keeps on one thread) and
    tuned (OpenBLAS on one thread, the products cut into the same parts every time)."""
    _needs_linux_openblas()
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((32, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, size=32)
    outside = host.blas_threads()
    monkeypatch.setattr(host, "_OWNER", host._BlasOwner())
    runs = []
    try:
        if tuned:
            host.set_blas_threads(1)
            monkeypatch.setattr(host._OWNER, "before", outside)
        else:  # OpenBLAS's own count decides nothing more (CI's workers have one)
            monkeypatch.setattr(host, "product_threads", lambda: None)
        for workers in (2, 1):
            monkeypatch.setattr(host, "parallel_workers", lambda w=workers: w)
            runs.append(_training_steps(build, x, y))
    finally:
        host.set_blas_threads(outside)
    for name, value in runs[1].items():
        np.testing.assert_array_equal(value, runs[0][name], name)


# In a fresh interpreter pinned to one CPU (its affinity mask, as a container's cpuset or
# `taskset` sets it, while the machine has more): what the host layer sees, and the
# weights of a seeded, tuned training run.
_PINNED = """
import json, sys
import numpy as np
import xpconv
if sys.argv[1] == "pinned":
    os = __import__("os")
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
host = xpconv.backends.numpy.host
sample = host.cpu_sample()
model = xpconv.Sequential([xpconv.Conv2D(4, 3, activation="relu"), xpconv.MaxPool2D(2),
                           xpconv.Flatten(), xpconv.Dense(3)], input_shape=(1, 10, 12),
                          backend="numpy", seed=3)
rng = np.random.default_rng(0)
x, y = rng.random((48, 1, 10, 12), dtype=np.float32), rng.integers(0, 3, size=48)
xpconv.Trainer(model, xpconv.SGD(0.05, momentum=0.9), progress=False, tune_host=True,
               seed=1).fit(x, y, epochs=2, batch_size=16)
print(json.dumps({"usable": host.usable_cores(), "sampled": sample.cores,
                  "balancing": host.parallel_workers() is not None,
                  "weights": {k: np.asarray(v).tolist() for k, v in model.state_dict().items()}}))
"""


def _pinned_run(mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _PINNED, mode], env=_clean_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_restricted_cpu_set_is_what_the_host_layer_counts() -> None:
    """Pinned to one of the machine's CPUs, the process counts one usable core (not
    ``os.cpu_count()``), samples the load of that CPU only, does not balance threads, and
    trains to the same weights, bit for bit, as with every CPU."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs an affinity mask of two CPUs or more (Linux)")
    free, pinned = _pinned_run("free"), _pinned_run("pinned")
    assert free["usable"] == len(os.sched_getaffinity(0)) == free["sampled"]
    assert pinned["usable"] == 1 == pinned["sampled"]
    assert free["balancing"] and not pinned["balancing"]
    assert pinned["weights"] == free["weights"]
