"""Property-based tests: generated checkpoint JSON, trainer metadata and functional-op
arguments get either a result or the documented exception, never another one, never
run code from the file, and never cost much memory.

Checkpoint properties start from a valid checkpoint and mutate its JSON (replace,
delete or add any value anywhere, with numbers far out of range, NaN, strings that
are Python code, nested containers), so the generated files are near misses of real
ones, the hardest to refuse. Runs on its own: ``python -m pytest tests/test_properties.py``.
"""

from __future__ import annotations

import copy
import functools
import os
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the property tests need hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import xpconv as xc  # noqa: E402
import xpconv.ops as F  # noqa: E402
from xpconv import load_model, load_training, save_training  # noqa: E402
from xpconv.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from xpconv.nn import layers as L  # noqa: E402

#: A crafted file under this size ...
FILE_LIMIT = 100_000
#: ... never costs more than this much traced memory to load (or refuse).
MEMORY_LIMIT = 50 * 2**20

SENTINEL = Path(tempfile.gettempdir()) / f"xpconv-property-ran-code-{os.getpid()}"
CODE = [
    f"__import__('pathlib').Path({str(SENTINEL)!r}).touch()",
    "os.system",
    "builtins.eval",
    "numpy.core.multiarray._reconstruct",
    "Dense",
    "Conv2D",
    "float64",
    "same",
    "relu",
]

#: Examples per property (the suite stays fast); raise it for a thorough search.
EXAMPLES = int(os.environ.get("XPCONV_PROPERTY_EXAMPLES", "40"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

numbers = st.one_of(
    st.integers(-3, 40),
    st.sampled_from([0, 1, 4000, 10**6, 2**31, 2**63, -(2**63), 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.sampled_from(CODE), st.text(max_size=8))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*prefix, i))
    return out


def mutate(data: st.DataObject, document: Any) -> Any:
    """One to three random edits anywhere in a JSON document."""
    document = copy.deepcopy(document)
    if data.draw(st.integers(0, 15)) == 0:
        return data.draw(json_values)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(document)[1:]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        action = data.draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[key] = data.draw(json_values)
        elif action == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=8))] = data.draw(json_values)
        else:
            parent.append(data.draw(json_values))
    return document


def measured(call: Any) -> tuple[BaseException | None, int]:
    tracemalloc.start()
    error = None
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the caller checks the type
        error = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return error, peak


def check_outcome(path: Path, load: Any) -> None:
    assert path.stat().st_size < FILE_LIMIT
    error, peak = measured(load)
    if error is not None and not isinstance(error, CheckpointError):
        raise AssertionError(f"undocumented {type(error).__name__}: {error}") from error
    assert peak < MEMORY_LIMIT, f"peak {peak / 2**20:.1f} MiB"
    assert not SENTINEL.exists(), "the checkpoint ran code"


@functools.cache
def _training_checkpoint() -> tuple[dict, dict]:
    model = xc.Sequential(
        [L.Conv2D(2, 3, activation="relu"), L.MaxPool2D(2), L.Flatten(), L.Dense(3)],
        input_shape=(1, 6, 6),
    )
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 1, 6, 6)).astype(np.float32), rng.integers(0, 3, 12)
    trainer = xc.Trainer(model, xc.SGD(0.05, momentum=0.9, final_lr=0.01), progress=False)
    trainer.fit(x, y, epochs=1, batch_size=6)
    with tempfile.TemporaryDirectory() as tmp:
        save_training(trainer, Path(tmp) / "t.npz")
        arrays, meta = load_checkpoint(Path(tmp) / "t.npz")
    return arrays, {k: v for k, v in meta.items() if k not in ("format", "version")}


@SETTINGS
@given(data=st.data())
def test_generated_architecture_is_loaded_or_refused_cheaply(data: st.DataObject) -> None:
    arrays, meta = _training_checkpoint()
    meta = {"kind": "model", "architecture": mutate(data, meta["architecture"])}
    params = {k: v for k, v in arrays.items() if k.startswith("param/")}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.npz"
        save_checkpoint(path, params, meta)
        check_outcome(path, lambda: load_model(path))


@SETTINGS
@given(data=st.data())
def test_generated_trainer_metadata_is_loaded_or_refused_cheaply(data: st.DataObject) -> None:
    arrays, meta = _training_checkpoint()
    meta = dict(meta, trainer=mutate(data, meta["trainer"]))
    arrays = dict(arrays)
    if data.draw(st.booleans()):
        name = data.draw(st.sampled_from(["dense_0.weight", "conv2d_0.bias", "nope.weight"]))
        slot = data.draw(st.sampled_from(["velocity", "m", "x"]))
        shape = tuple(data.draw(st.lists(st.integers(0, 6), max_size=3)))
        dtype = data.draw(st.sampled_from([np.float32, np.float64, np.int64, np.bool_]))
        arrays[f"trainer/optimizer/{name}/{slot}"] = np.zeros(shape, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "training.npz"
        save_checkpoint(path, arrays, meta)
        check_outcome(path, lambda: load_training(path, progress=False))


VALID_RUN = {
    "dataset": "mnist",
    "limit": 1000,
    "batch_size": 60,
    "model": "lecture",
    "backend": "numpy",
    "device": "cpu",
    "dtype": "float32",
    "dataset_loaded": "mnist",
}


@SETTINGS
@given(data=st.data())
def test_generated_run_records_are_used_or_refused_naming_the_field(data: st.DataObject) -> None:
    """The run record of ``training.npz`` goes through one validation: what it accepts
    the command uses without error; everything else is a CheckpointError naming it."""
    import argparse

    from xpconv.cli.common import CliError
    from xpconv.cli.runs import resume_settings, validate_run_record

    record = mutate(data, VALID_RUN)
    try:
        checked = validate_run_record(record, Path("training.npz"))
    except CheckpointError as exc:
        assert str(exc).startswith("training.npz: the run record is not valid: run"), str(exc)
        return
    assert checked["limit"] is None or (type(checked["limit"]) is int and checked["limit"] >= 1)
    assert type(checked["batch_size"]) is int and checked["batch_size"] >= 1
    given_values = {"dataset": None, "limit": None, "batch_size": None, "model": None}
    args = argparse.Namespace(resume="training.npz", **given_values)
    try:
        resume_settings(args, checked, xc.Sequential([L.Flatten()], input_shape=(2,)))
    except CliError:
        pass
    assert args.batch_size == checked["batch_size"] and args.limit == checked["limit"]


# ----------------------------------------------------------------- functional ops

pairs = st.one_of(
    st.integers(-2, 9),
    st.tuples(st.integers(-1, 6), st.integers(-1, 6)),
    st.tuples(st.integers(0, 3)),
    st.sampled_from([None, True, 2.5, "2", (1, 2, 3), 10**12]),
)
paddings = st.one_of(
    st.integers(-1, 6),
    st.tuples(st.integers(-1, 4), st.integers(-1, 4)),
    st.sampled_from(["same", "valid", "full", "SAME", "bogus", None, 1.5, True]),
)
ops = st.sampled_from(["conv2d", "conv1d", "max_pool2d", "avg_pool2d", "conv2d_backward"])


def _call(op: str, kernel: Any, stride: Any, padding: Any, dilation: Any, groups: Any) -> Any:
    x = np.ones((2, 4, 7, 7))
    if op in ("max_pool2d", "avg_pool2d"):
        return getattr(F, op)(x, kernel, stride, padding)
    k = kernel if isinstance(kernel, int) and not isinstance(kernel, bool) else 3
    k = min(max(k, 0), 9)
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    if op == "conv1d":
        return F.conv1d(np.ones((2, 4, 7)), np.ones((4, 2, k)), **args)
    weight = np.ones((4, 2, k, k))
    if op == "conv2d_backward":
        out = F.conv2d(x, weight, **args)
        return F.conv2d_backward(np.ones(out.shape), x, weight, **args)
    return F.conv2d(x, weight, np.zeros(4), **args)


@settings(max_examples=2 * EXAMPLES, deadline=None)
@given(
    op=ops,
    kernel=pairs,
    stride=pairs,
    padding=paddings,
    dilation=pairs,
    groups=st.one_of(st.integers(-1, 5), st.sampled_from([None, 2.0, True])),
)
def test_functional_op_arguments_give_a_result_or_a_documented_error(
    op: str, kernel: Any, stride: Any, padding: Any, dilation: Any, groups: Any
) -> None:
    error, peak = measured(lambda: _call(op, kernel, stride, padding, dilation, groups))
    if error is not None and not isinstance(error, (ValueError, TypeError)):
        raise AssertionError(f"undocumented {type(error).__name__}: {error}") from error
    if error is not None:
        message = str(error)
        assert ":" in message and message.split(":")[0].strip(), message  # names the argument
    assert peak < MEMORY_LIMIT


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    labels=st.one_of(
        st.lists(st.integers(-3, 6), min_size=0, max_size=6).map(np.array),
        st.lists(st.floats(-2, 2), min_size=1, max_size=24).map(
            lambda v: np.array(v).reshape(len(v), 1)
        ),
        st.sampled_from([np.zeros((4, 4)), np.ones((4, 3), bool), np.zeros((4, 4), np.float32)]),
    )
)
def test_loss_targets_give_a_result_or_a_documented_error(labels: np.ndarray) -> None:
    logits = np.zeros((4, 4))
    try:
        loss = F.softmax_cross_entropy(logits, labels)
    except (ValueError, TypeError) as exc:
        assert str(exc).startswith("labels:"), str(exc)
    else:
        assert np.isfinite(float(loss))
