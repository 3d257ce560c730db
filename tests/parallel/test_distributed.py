"""Data-parallel training: sharding, the one-bucket gradient average, and whole runs
under ``mpiexec -n 2`` (2 ranks against one process on the global batch), faults and
command-line errors.

The MPI runs are subprocesses with a timeout (the programs are in mpi_programs.py);
mpi4py and the MPICH wheel come with the ``test`` extra, so they run in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import Case

import xpconv as xc
from xpconv.parallel import (
    Communicator,
    DistributedError,
    GradientAverager,
    ShardedSampler,
    SingleProcessCommunicator,
    broadcast_state,
    check_same,
    get_communicator,
    shard_range,
)

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = Path(__file__).with_name("mpi_programs.py")


# --------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("count", [0, 1, 2, 7, 17, 60])
def test_shards_cover_the_batch_in_order(count: int, size: int) -> None:
    ranges = [shard_range(count, r, size) for r in range(size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == count
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [hi - lo for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_shard_range_rejects_a_bad_rank() -> None:
    with pytest.raises(ValueError, match=r"rank: expected a value in \[0, 2\), got 2"):
        shard_range(10, 2, 2)


@pytest.mark.parametrize("size", [2, 3])
def test_sampler_gives_the_one_process_batches(size: int) -> None:
    n, batch = 103, 17  # the last global batch has 1 example: some ranks get none
    one = ShardedSampler(n, batch, seed=4)
    ranks = [ShardedSampler(n, batch, r, size, seed=4) for r in range(size)]
    assert len(one) == len(ranks[0]) == 7
    for epoch in (0, 1):
        reference = [idx for idx, _ in one.epoch(epoch)]
        shares = [list(s.epoch(epoch)) for s in ranks]
        for step, ref in enumerate(reference):
            joined = np.concatenate([shares[r][step][0] for r in range(size)])
            np.testing.assert_array_equal(joined, ref)
            assert {shares[r][step][1] for r in range(size)} == {len(ref)}
    assert not np.array_equal(one.order(0), one.order(1))  # reshuffled every epoch
    np.testing.assert_array_equal(one.order(1), ShardedSampler(n, batch, seed=4).order(1))
    np.testing.assert_array_equal(ShardedSampler(5, 2, shuffle=False).order(3), np.arange(5))


def test_sampler_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="num_examples: expected >= 1, got 0"):
        ShardedSampler(0, 4)
    with pytest.raises(ValueError, match="batch_size: expected >= 1, got 0"):
        ShardedSampler(4, 0)
    with pytest.raises(ValueError, match=r"order: expected shape \(4,\), got \(3,\)"):
        list(ShardedSampler(4, 2).batches(np.arange(3)))


# --------------------------------------------------------------------------- averaging


class _TwoRanks(Communicator):
    """Rank 0 of a simulated pair: the peer's buffer comes from ``peer`` (host)."""

    engine = "test"

    def __init__(self, peer) -> None:
        super().__init__(0, 2)
        self.peer = peer

    def _allreduce(self, buffer):
        from xpconv.backends.registry import backend_of

        be = backend_of(buffer)
        return buffer + be.asarray(self.peer(be.to_numpy(buffer).size), dtype=buffer.dtype)

    def _broadcast(self, buffer, root):
        return buffer


def _grads(case: Case, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "conv.w": rng.normal(size=(4, 1, 3, 3)),
        "conv.b": rng.normal(size=(4,)),
        "dense.w": rng.normal(size=(36, 5)),
    }


def test_averager_weights_unequal_shares(case: Case, rng) -> None:
    """Rank 0 averaged its gradient over 9 examples, rank 1 over 4: the result is the
    mean over all 13, from one all-reduce whatever the number of parameters."""
    mine, theirs = _grads(case, rng), _grads(case, rng)
    flat_theirs = np.concatenate([v.ravel() for v in theirs.values()])
    peer = _TwoRanks(lambda size: np.concatenate([flat_theirs * 4, [4.0]]))
    averager = GradientAverager(peer)
    averager.examples = 9
    out = averager({k: case.asarray(v) for k, v in mine.items()})
    assert peer.allreduce_calls == 1
    for k in mine:
        case.assert_close(out[k], (9 * case.host(mine[k]) + 4 * case.host(theirs[k])) / 13, k)
    plain = GradientAverager(_TwoRanks(lambda size: flat_theirs))
    out = plain({k: case.asarray(v) for k, v in mine.items()})
    for k in mine:
        case.assert_close(out[k], (case.host(mine[k]) + case.host(theirs[k])) / 2, k)


def test_averager_with_one_process_is_the_identity(case: Case, rng) -> None:
    grads = {k: case.asarray(v) for k, v in _grads(case, rng).items()}
    comm = SingleProcessCommunicator()
    averager = GradientAverager(comm)
    averager.examples = 7
    out = averager(grads)
    assert comm.allreduce_calls == 1 and list(out) == list(grads)
    for k, v in grads.items():
        case.assert_close(out[k], case.to_numpy(v), k)


def test_averager_rejects_missing_gradients_and_bad_communicators() -> None:
    with pytest.raises(ValueError, match=r"got None for \['b'\]"):
        GradientAverager(SingleProcessCommunicator())({"a": np.ones(2), "b": None})
    with pytest.raises(TypeError, match="communicator: expected a Communicator, got str"):
        GradientAverager("mpi")


def test_single_process_collectives_copy(case: Case, rng) -> None:
    comm = SingleProcessCommunicator()
    x = case.asarray(rng.normal(size=5))
    for result in (comm.allreduce(x), comm.broadcast(x)):
        case.assert_close(result, case.to_numpy(x))
        assert result is not x
    with pytest.raises(ValueError, match=r"buffer: expected a 1-D array, got shape \(5, 1\)"):
        comm.allreduce(case.xp.reshape(x, (5, 1)))
    with pytest.raises(ValueError, match=r"root: expected a rank in \[0, 1\), got 1"):
        comm.broadcast(x, root=1)
    state = broadcast_state(comm, {"a": case.xp.reshape(x, (1, 5)), "b": x})
    case.assert_close(state["a"], case.to_numpy(x).reshape(1, 5))
    check_same(comm, {"anything": np.arange(3)})  # one rank always agrees with itself


def test_check_same_names_what_differs() -> None:
    """Rank 0's digests (the broadcast) differ from this rank's in the second item."""

    class Peer(_TwoRanks):
        def _broadcast(self, buffer, root):
            return np.concatenate([buffer[:32], 255 - buffer[32:]])

    comm = Peer(lambda size: np.asarray([0.0, 1.0]))  # rank 1 differs too, in item 2
    items = {"the model": np.arange(3), "the training labels": np.arange(4)}
    with pytest.raises(
        DistributedError, match=r"ranks disagree on the training labels \(2 rank\(s\) differ"
    ):
        check_same(comm, items)


def test_a_broadcast_state_that_arrives_changed_is_named() -> None:
    """The state is broadcast, then its digest is compared: a peer whose copy differs
    (here: rank 0's digest, as the peer sees it, is another) stops every rank."""

    class Peer(_TwoRanks):
        def _broadcast(self, buffer, root):
            return 255 - buffer if buffer.dtype == np.uint8 else buffer  # the digest differs

    comm = Peer(lambda size: np.ones(size))  # the peer counts its own mismatch
    state = {"w": np.arange(6.0).reshape(2, 3), "b": np.zeros(2)}
    with pytest.raises(
        DistributedError,
        match=r"^ranks disagree on the broadcast state \(2 rank\(s\) differ from rank 0\)",
    ):
        broadcast_state(comm, state)


def test_get_communicator_by_engine_name() -> None:
    assert isinstance(get_communicator(None), SingleProcessCommunicator)
    assert get_communicator("single").size == 1
    with pytest.raises(ValueError, match="engine: expected 'single', 'mpi' or 'nccl', got 'gloo'"):
        get_communicator("gloo")
    with pytest.raises(ValueError, match="backend: distributed 'nccl' needs the model's backend"):
        get_communicator("nccl")


def test_trainer_with_one_process_communicator_is_unchanged(rng) -> None:
    x = rng.normal(size=(30, 1, 8, 8))
    y = rng.integers(0, 3, size=30)

    def fit(communicator):
        model = xc.Sequential(
            [xc.Flatten(), xc.Dense(3)], input_shape=(1, 8, 8), dtype="float64", seed=1
        )
        xc.Trainer(model, xc.SGD(0.1), progress=False, communicator=communicator).fit(
            x, y, epochs=2, batch_size=7
        )
        return model.state_dict()

    a, b = fit(None), fit(SingleProcessCommunicator())
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(TypeError, match="communicator: expected a Communicator or None, got str"):
        xc.Trainer(xc.models.zoo.lecture(), xc.SGD(0.1), communicator="mpi")


# --------------------------------------------------------------------------- under mpiexec


def _mpiexec() -> str:
    here = Path(sys.executable).with_name("mpiexec")
    found = str(here) if here.exists() else shutil.which("mpiexec")
    assert found, "mpiexec not found: pip install 'xpconv[mpi]' (the test extra brings it)"
    return found


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def _mpirun(
    n: int, *args: str, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_mpiexec(), "-n", str(n), sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=cwd,
    )


def _program(n: int, mode: str, out: Path, *rest: str, timeout: float = 120) -> dict:
    proc = _mpirun(n, str(PROGRAMS), mode, str(out), *rest, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


@pytest.mark.mpi
@pytest.mark.parametrize(
    "n, backend, optimizer, examples",
    [
        (2, "numpy", "sgd", 162),
        (3, "numpy", "sgd", 162),
        (3, "numpy", "sgd", 154),  # the last global batch (1 example): two empty shares
        (2, "numpy", "adam", 162),
        (2, "torch", "sgd", 162),
        (2, "array_api_strict", "sgd", 162),
    ],
)
def test_ranks_train_the_one_process_model_float64(
    tmp_path: Path, n: int, backend: str, optimizer: str, examples: int
) -> None:
    """20 steps, global batch 17 over N=162 (shares 9/8 and a last batch of 9), SGD
    with Nesterov momentum and a decaying rate (or Adam); rank 1 starts from other
    weights (the broadcast from rank 0 must fix them): weights equal to 1e-9."""
    pytest.importorskip(backend, reason=f"backend {backend} not installed")
    r = _program(n, "parity", tmp_path / "out.json", backend, optimizer, str(examples))
    assert r["size"] == n and r["steps"] == 20
    assert r["max_weight_diff"] <= 1e-9 * max(r["weight_scale"], 1.0), r
    assert r["max_step_loss_diff"] <= 1e-12, r
    np.testing.assert_allclose(r["loss"], r["ref_loss"], rtol=1e-12)
    np.testing.assert_allclose(r["val_loss"], r["ref_val_loss"], rtol=1e-12)
    assert r["accuracy"] == r["ref_accuracy"] and r["val_accuracy"] == r["ref_val_accuracy"]


def _model_parity(
    tmp_path: Path, n: int, name: str, backend: str, dtype: str, options: str, **environ: str
):
    pytest.importorskip(backend, reason=f"backend {backend} not installed")
    out = tmp_path / "out.json"
    env = {**_env(), **environ}
    if backend == "jax":
        env["JAX_ENABLE_X64"] = "1"
    args = [str(PROGRAMS), "model", str(out), name, backend, dtype, options]
    proc = subprocess.run(
        [_mpiexec(), "-n", str(n), sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(out.read_text())
    assert r["size"] == n and r["steps"] == 20, r
    return r


def _assert_equal_to_one_process(r: dict, bound: float) -> None:
    """Weights and buffers (each tensor: largest difference over its largest value),
    the step losses, and the validation metrics of the history, which are those of the
    model as saved (evaluated again after the fit)."""
    assert r["weights"] <= bound and r["buffers"] <= bound, r
    h, ref = r["history"], r["ref_history"]
    np.testing.assert_allclose(h["loss"], ref["loss"], rtol=bound)
    np.testing.assert_allclose(h["val_loss"], ref["val_loss"], rtol=bound)
    assert h["accuracy"] == ref["accuracy"] and h["val_accuracy"] == ref["val_accuracy"]
    assert h["val_loss"][-1] == pytest.approx(r["evaluated"]["loss"], rel=1e-12)
    assert h["val_accuracy"][-1] == r["evaluated"]["accuracy"]


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize(
    "name, options",
    [
        ("lecture", ""),
        ("lenet", ""),
        ("resnet", ""),
        ("lenet", "augment"),
        ("dropout", ""),
        ("resnet", "one"),  # a last global batch of one example: empty shares
    ],
)
def test_ranks_train_the_one_process_model_with_batch_norm(
    tmp_path: Path, n: int, name: str, options: str
) -> None:
    """float64, 20 steps, global batch 10 (shares 4/3/3 on 3 ranks, a last batch of 7):
    the weights and the running statistics of N ranks are those of one process to
    1e-9 (synchronised batch norm, dropout masks and augmentation of the global batch)."""
    r = _model_parity(tmp_path, n, name, "numpy", "float64", options)
    _assert_equal_to_one_process(r, 1e-9)
    if name in ("lenet", "resnet", "dropout"):
        assert r["sync_calls"] > 0
    if options == "augment":  # and the augmentation did change the run
        assert r["augmented_vs_plain"] > 1e-3, r


@pytest.mark.mpi
@pytest.mark.parametrize("name", ["lenet", "dropout"])
def test_ranks_train_the_one_process_model_on_torch(tmp_path: Path, name: str) -> None:
    _assert_equal_to_one_process(_model_parity(tmp_path, 2, name, "torch", "float64", ""), 1e-9)


@pytest.mark.mpi
@pytest.mark.slow
def test_ranks_train_the_one_process_model_on_torch_compiled_once(tmp_path: Path) -> None:
    """PyTorch with its steps compiled (the suite runs them eagerly): the batch-norm
    all-reduces are the xpconv::host_call operator inside the compiled gradients,
    compiled once for the one shape of the shares, and the run is one process's."""
    r = _model_parity(tmp_path, 2, "lenet", "torch", "float64", "even", XPCONV_COMPILE="torch")
    _assert_equal_to_one_process(r, 1e-9)
    assert r["sync_calls"] > 0
    assert r["compiled"] == {"whole": 0, "gradients": 1, "update": 1}, r


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("name", ["lenet", "dropout"])
def test_ranks_train_the_one_process_model_on_jax_compiled_once(tmp_path: Path, name: str) -> None:
    """JAX: the distributed step runs compiled (the batch-norm all-reduces are ordered
    host callbacks inside it), compiled once for the one shape of the shares: the
    gradients and the update, one compiled function each, for all 20 steps."""
    r = _model_parity(tmp_path, 2, name, "jax", "float64", "even")
    _assert_equal_to_one_process(r, 1e-9)
    assert r["compiled"] == {"whole": 0, "gradients": 1, "update": 1}, r


@pytest.mark.mpi
def test_float32_ranks_agree_to_float32_rounding(tmp_path: Path) -> None:
    """LeNet in float32 on 3 ranks: within a few float32 roundings of one process
    (measured: 2e-6 for the weights, 3e-6 for the running statistics)."""
    r = _model_parity(tmp_path, 3, "lenet", "numpy", "float32", "")
    assert r["weights"] <= 2e-5 and r["buffers"] <= 2e-5, r
    assert r["weights"] > 0  # not the float64 run


@pytest.mark.mpi
def test_a_share_of_one_example_keeps_the_global_batch(tmp_path: Path) -> None:
    """LeNet, 12 examples, global batch 3 on 2 ranks: rank 1's share is one example,
    too few for BatchNorm1D's statistics on its own; with the global batch's it trains
    what one process trains. (Batches of 3 amplify rounding: one process and the
    ranks sum in another order, measured 2e-10 after 20 steps.)"""
    r = _model_parity(tmp_path, 2, "lenet", "numpy", "float64", "tiny")
    _assert_equal_to_one_process(r, 1e-8)


@pytest.mark.mpi
def test_per_rank_statistics_average_the_running_statistics(tmp_path: Path) -> None:
    """The switch back to per-rank statistics: not the one-process model, but the
    running statistics are combined, so the reported validation is the saved model's."""
    r = _model_parity(tmp_path, 2, "lenet", "numpy", "float64", "persample")
    assert r["sync_calls"] == 0 and r["weights"] > 1e-3
    assert r["history"]["val_loss"][-1] == pytest.approx(r["evaluated"]["loss"], rel=1e-12)


@pytest.mark.mpi
def test_a_non_classifier_reports_what_one_process_reports(tmp_path: Path) -> None:
    r = _program(2, "regression", tmp_path / "out.json")
    h, ref = r["history"], r["ref_history"]
    assert all(np.isnan(h["accuracy"])) and all(np.isnan(h["val_accuracy"]))
    np.testing.assert_allclose(h["loss"], ref["loss"], rtol=1e-12)
    np.testing.assert_allclose(h["val_loss"], ref["val_loss"], rtol=1e-12)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 3])
def test_a_two_rank_run_resumes_on_other_rank_counts(tmp_path: Path, ranks: int) -> None:
    """The Dropout + BatchNorm model: one epoch on 2 ranks, the second on 1 or 3:
    the model of two epochs in one process."""
    checkpoint = tmp_path / "training.npz"
    proc = _mpirun(2, str(PROGRAMS), "resume_start", str(checkpoint))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = _program(ranks, "resume_finish", tmp_path / "out.json", str(checkpoint))
    assert r["diff"] <= 1e-9, r
    np.testing.assert_allclose(r["loss"], r["ref_loss"], rtol=1e-12)


@pytest.mark.mpi
def test_one_allreduce_of_one_bucket_per_step(tmp_path: Path) -> None:
    r = _program(2, "messages", tmp_path / "out.json")
    assert r["parameters"] == 6 and r["one_call"] == 1
    assert r["mean_err"] <= 1e-15 and r["weighted_err"] <= 1e-14
    # 10 steps (one each), metrics after steps 4, 8 and 10 (one each), and the two
    # agreement checks of the start (of the run, and of the broadcast weights).
    assert r["fit_calls"] == 10 + 3 + 2


@pytest.mark.mpi
@pytest.mark.slow
def test_two_ranks_reach_the_one_process_accuracy_on_mnist(tmp_path: Path, mnist_dir) -> None:
    """One float32 epoch of the lecture model on the full MNIST (global batch 128):
    test accuracy within 0.2 percentage points of one process on the same batches."""
    r = _program(2, "accuracy", tmp_path / "out.json", str(mnist_dir), timeout=600)
    assert r["ref_accuracy"] >= 0.915, r
    assert abs(r["accuracy"] - r["ref_accuracy"]) <= 0.002, r


@pytest.mark.mpi
def test_a_rank_that_raises_stops_every_rank(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = _mpirun(2, str(PROGRAMS), "raise", str(tmp_path / "out.json"), timeout=60)
    assert time.monotonic() - start < 60
    assert proc.returncode != 0
    assert "rank 1/2: RuntimeError: injected failure on rank 1; stopping every rank" in (
        proc.stderr
    )
    assert not (tmp_path / "out.json").exists()


@pytest.mark.mpi
def test_a_rank_killed_mid_epoch_ends_the_job_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    checkpoint = tmp_path / "training.npz"
    start = time.monotonic()
    proc = _mpirun(2, str(PROGRAMS), "kill", str(checkpoint), timeout=60)
    assert time.monotonic() - start < 60
    assert proc.returncode != 0
    assert "checkpoint after epoch 1" in proc.stdout
    assert "checkpoint after epoch 2" not in proc.stdout
    assert "Killed" in proc.stdout + proc.stderr  # the launcher names the dead rank
    trainer = xc.load_training(checkpoint, progress=False)
    assert trainer.epochs_done == 1 and trainer.optimizer.step_count == 40


@pytest.mark.mpi
def test_a_stuck_rank_ends_in_a_timeout_not_a_hang(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = _mpirun(2, str(PROGRAMS), "hang", str(tmp_path / "out.json"), timeout=60)
    assert time.monotonic() - start < 30
    assert proc.returncode != 0
    assert "rank 0/2: all-reduce waited more than 2 s for the other ranks" in proc.stderr


# --------------------------------------------------------------------------- command line


def _cli(*args: str) -> list[str]:
    return ["-m", "xpconv", "train", "--no-progress", "--no-plots", *args]


@pytest.mark.mpi
@pytest.mark.slow
def test_cli_distributed_run_and_resume_match_one_process(tmp_path: Path, mnist_dir) -> None:
    """``mpiexec -n 2 xpconv train --distributed mpi`` for one epoch, then ``--resume``
    to two: the same weights (1e-9, float64) and metrics as one process doing the same."""
    data = ["--data-dir", str(mnist_dir), "--limit", "600"]
    dist, one = tmp_path / "dist", tmp_path / "one"
    for out, ranks in ((dist, 2), (one, None)):
        first = _cli(*data, "--dtype", "float64", "--out", str(out))
        resume = _cli(*data, "--resume", str(out / "training.npz"), "--epochs", "2")
        resume += ["--out", str(out)]
        for args in (first, resume):
            if ranks:
                proc = _mpirun(ranks, *args, "--distributed", "mpi", timeout=300)
            else:
                cmd = [sys.executable, *args]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
            assert proc.returncode == 0, proc.stdout + proc.stderr
            if ranks:
                assert proc.stdout.count("test accuracy:") == 1  # rank 0 alone prints
                assert "distributed: 2 ranks over mpi, 60 per step" in proc.stdout
    a, b = xc.load_model(dist / "model.npz"), xc.load_model(one / "model.npz")
    for k, v in a.state_dict().items():
        np.testing.assert_allclose(v, b.state_dict()[k], rtol=0, atol=1e-9)
    metrics = json.loads((dist / "metrics.json").read_text())
    assert metrics["distributed"] == {"engine": "mpi", "ranks": 2, "global_batch_size": 60}
    reference = json.loads((one / "metrics.json").read_text())
    assert metrics["epochs"] == reference["epochs"] == 2
    np.testing.assert_allclose(metrics["train_loss"], reference["train_loss"], rtol=1e-10)
    np.testing.assert_allclose(metrics["val_loss"], reference["val_loss"], rtol=1e-10)
    assert metrics["test_accuracy"] == reference["test_accuracy"]


@pytest.mark.mpi
def test_cli_ranks_that_disagree_on_the_data_stop_with_an_error(tmp_path: Path, mnist_dir) -> None:
    base = [sys.executable, *_cli("--data-dir", str(mnist_dir), "--distributed", "mpi")]
    cmd = [_mpiexec(), "-n", "1", *base, "--limit", "100", "--out", str(tmp_path / "a")]
    cmd += [":", "-n", "1", *base, "--limit", "120", "--out", str(tmp_path / "b")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode != 0
    assert "ranks disagree on the training images (1 rank(s) differ from rank 0)" in proc.stderr


def test_cli_distributed_without_mpiexec_is_a_clear_error(tmp_path: Path) -> None:
    launcher = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "SLURM_PROCID")
    env = {k: v for k, v in _env().items() if k not in launcher}
    proc = subprocess.run(
        [sys.executable, *_cli("--distributed", "mpi", "--out", str(tmp_path / "x"))],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "--distributed mpi: this process was not started by an MPI launcher" in proc.stderr
    assert "mpiexec -n 2 xpconv train --distributed mpi" in proc.stderr


def test_cli_distributed_without_mpi4py_is_a_clear_error(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['mpi4py'] = None; from xpconv.cli import main; "
        f"sys.exit(main(['train', '--distributed', 'mpi', '--out', {str(tmp_path)!r}]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env()
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "distributed 'mpi' needs mpi4py and an MPI library: pip install 'xpconv[mpi]'" in (
        proc.stderr
    )


def test_cli_nccl_on_a_cpu_backend_is_a_clear_error(tmp_path: Path) -> None:
    proc = _mpirun(1, *_cli("--distributed", "nccl", "--out", str(tmp_path)), timeout=120)
    assert proc.returncode != 0
    assert "distributed 'nccl': expected backend cupy or torch on a CUDA device, got 'numpy'" in (
        proc.stderr
    )


# --------------------------------------------------------------------------- NCCL (GPU)


def _gpus() -> int:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


@pytest.mark.gpu
@pytest.mark.mpi
def test_nccl_collectives_on_gpus(tmp_path: Path) -> None:
    """NCCL all-reduce and broadcast of CuPy arrays, one rank per GPU (2 when there are 2)."""
    gpus = _gpus()
    if gpus < 1:
        pytest.skip("NCCL needs a CUDA GPU and CuPy; none here")
    n = min(gpus, 2)
    code = (
        "import json, sys, cupy, numpy as np; from xpconv.backends.registry import get_backend; "
        "from xpconv.parallel import MPICommunicator, NCCLCommunicator; "
        "m = MPICommunicator(timeout=60); be = get_backend('cupy', m.rank); "
        "c = NCCLCommunicator(be, m); x = cupy.arange(5, dtype=cupy.float32) + c.rank; "
        "s = cupy.asnumpy(c.allreduce(x)); b = cupy.asnumpy(c.broadcast(x)); "
        "ok = np.allclose(s, sum(np.arange(5) + r for r in range(c.size))) and "
        "np.allclose(b, np.arange(5)) and float(x[0]) == c.rank; "
        f"c.is_root and open({str(tmp_path / 'r.json')!r}, 'w').write(json.dumps(ok))"
    )
    proc = _mpirun(n, "-c", code, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "r.json").read_text()) is True


@pytest.mark.mpi
def test_scaling_harness_measures_the_three_layouts(tmp_path: Path) -> None:
    from benchmarks.distributed import main

    out = tmp_path / "scaling.json"
    argv = ["--workload", "W1", "--batch", "16", "--steps", "2", "--warmup", "1"]
    assert main([*argv, "--rounds", "1", "--json", str(out)]) == 0
    layouts = json.loads(out.read_text())["layouts"]
    assert [row["ranks"] for row in layouts] == [1, 1, 2]
    assert [row["threads_per_rank"] for row in layouts] == [2, 1, 1]
    assert all(row["images_per_second"] > 0 for row in layouts)
    two = layouts[-1]
    assert 0 < two["allreduce_share"] < 1 and two["pure_allreduce_ms"] > 0
    assert two["bucket_bytes"] == 4 * (125_866 + 1)  # W1's gradients and the count


def _ranks_of(marker: str) -> dict[int, int]:
    """The process ids of the ranks (by ``PMI_RANK``) whose command line holds ``marker``."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() not in cmdline or b"mpiexec" in cmdline:
            continue
        for entry in env:
            if entry.startswith(b"PMI_RANK="):
                found[int(entry[len("PMI_RANK=") :])] = int(pid)
    return found


@pytest.mark.mpi
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux's /proc")
def test_cli_sigint_to_one_rank_ends_the_job_at_once(tmp_path: Path, mnist_dir) -> None:
    """SIGINT to rank 1 alone: every rank ends within 10 s (not after the collective
    timeout), with status 130 and the message printed once."""
    import signal

    out = tmp_path / "run"
    args = _cli("--data-dir", str(mnist_dir), "--limit", "3000", "--epochs", "30")
    cmd = [_mpiexec(), "-n", "2", sys.executable, *args, "--distributed", "mpi", "--out", str(out)]
    pipe = subprocess.PIPE
    proc = subprocess.Popen(cmd, stdout=pipe, stderr=pipe, text=True, env=_env())
    try:
        for line in proc.stdout:
            if line.startswith("distributed:"):
                break
        time.sleep(2)  # into the first epoch
        ranks = _ranks_of(str(out))
        assert set(ranks) == {0, 1}, ranks
        start = time.monotonic()
        os.kill(ranks[1], signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.monotonic() - start < 10
    assert proc.returncode == 130, err
    assert err.count("interrupted") == 1, err
    assert "rank 1/2: interrupted; stopping every rank" in err


@pytest.mark.slow  # trains in a new process
def test_cli_a_last_batch_of_one_example_is_refused_before_training(
    tmp_path: Path, mnist_dir
) -> None:
    """``--model lenet --limit 129`` (batch 128): refused before the first step, with
    the way out named; ``--drop-last`` trains the one full batch."""
    base = _cli("--data-dir", str(mnist_dir), "--model", "lenet", "--limit", "129")
    cmd = [sys.executable, *base, "--out", str(tmp_path / "a")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 1
    assert "the last batch has 1 example(s)" in proc.stderr and "--drop-last" in proc.stderr
    assert not (tmp_path / "a" / "training.npz").exists()
    cmd = [sys.executable, *base, "--drop-last", "--out", str(tmp_path / "b")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert _run_record(tmp_path / "b")["drop_last"] is True


@pytest.mark.mpi
def test_cli_lenet_with_a_one_example_share_trains_on_two_ranks(tmp_path: Path, mnist_dir) -> None:
    """``--model lenet --limit 12 --batch-size 3`` trains in one process and, with the
    global batch's statistics, on 2 ranks (rank 1's share is one example)."""
    args = _cli("--data-dir", str(mnist_dir), "--model", "lenet", "--limit", "12")
    args += ["--batch-size", "3", "--dtype", "float64", "--distributed", "mpi"]
    proc = _mpirun(2, *args, "--out", str(tmp_path / "run"), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _run_record(tmp_path / "run")["batch_norm_stats"] == "global"
    # the reported test metrics are those of the saved model
    from xpconv.data.datasets import mnist

    data = mnist(mnist_dir, progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    model = xc.load_model(tmp_path / "run" / "model.npz")
    again = model.evaluate(data.x_test.astype(np.float64), data.y_test)
    assert metrics["test_loss"] == pytest.approx(again["loss"], rel=1e-12)
    assert metrics["test_accuracy"] == again["accuracy"]


def _run_record(out: Path) -> dict:
    from xpconv.io.checkpoint import load_checkpoint

    return load_checkpoint(out / "training.npz")[1]["run"]


@pytest.mark.slow  # trains in a new process
def test_cli_resume_checks_the_batch_norm_statistics_setting(tmp_path: Path, mnist_dir) -> None:
    """The statistics setting is part of the run record: a resume with another one is
    refused, naming it."""
    base = _cli("--data-dir", str(mnist_dir), "--model", "lenet", "--limit", "130")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, *base, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert _run_record(out)["batch_norm_stats"] == "global"
    resume = _cli("--resume", str(out / "training.npz"), "--epochs", "2")
    resume += ["--batch-norm-stats", "per-rank", "--out", str(tmp_path / "more")]
    proc = subprocess.run(
        [sys.executable, *resume], capture_output=True, text=True, timeout=300, env=_env()
    )
    assert proc.returncode == 1
    assert "--batch-norm-stats per-rank (the checkpoint's run: global)" in proc.stderr
