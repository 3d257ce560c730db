"""Optimizers under a decaying learning rate, step by step against PyTorch, and the
schedule a multi-epoch ``fit`` follows.

With a constant rate the lecture's momentum form (``v = m v + lr g; w -= v``) and
PyTorch's (``v = m v + g; w -= lr v``) give the same weights; they part as soon as the
rate changes. So every comparison here runs many steps with a rate that decays, taken
from an explicit formula (or ``torch.optim.lr_scheduler.LambdaLR``), never from the
library's own schedule code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import Case, torch_or_skip

import xpconv as xc
from xpconv.nn import layers as L
from xpconv.optim.optimizers import SGD, Adam, ExponentialDecay, LinearDecay, optimizer_from_config

STEPS = 40
LR0, LR1 = 0.2, 0.02


def explicit_rate(kind: str, t: int, total: int) -> float:
    """The lecture's decay from LR0 at step 0 to LR1 at step ``total - 1``."""
    frac = min(t / (total - 1), 1.0)
    if kind == "linear":
        return LR0 + (LR1 - LR0) * frac
    return LR0 * (LR1 / LR0) ** frac


def _problem(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Start weights and moving targets of 0.5 * |w - target_t|^2 (gradient w - target_t)."""
    return rng.normal(size=(3, 4)), rng.normal(size=(STEPS, 3, 4))


def _library_run(case: Case, opt, w0: np.ndarray, targets: np.ndarray) -> np.ndarray:
    opt.setup(STEPS)
    p = L.Parameter(case.asarray(w0), "w")
    for t in range(STEPS):
        p.grad = p.value - case.asarray(targets[t])
        opt.step({"w": p})
    return case.to_numpy(p.value)


def _torch_lecture_sgd(
    kind: str, w0, targets, momentum: float, nesterov: bool, weight_decay: float
) -> np.ndarray:
    """The lecture form through torch.optim: with ``lr=1`` and the gradient scaled by
    the step's rate, torch's ``v = m v + lr_t g; w -= v`` is exactly the lecture update
    (Nesterov: ``w -= lr_t g + m v``)."""
    torch = torch_or_skip()
    w = torch.tensor(w0, requires_grad=True)
    opt = torch.optim.SGD([w], lr=1.0, momentum=momentum, nesterov=nesterov)
    for t in range(STEPS):
        opt.zero_grad()
        loss = 0.5 * ((w - torch.tensor(targets[t])) ** 2).sum() + 0.5 * weight_decay * (w**2).sum()
        loss.backward()
        with torch.no_grad():
            w.grad *= explicit_rate(kind, t, STEPS)
        opt.step()
    return w.detach().numpy()


def _numpy_lecture_sgd(kind: str, w0, targets, momentum: float, nesterov: bool) -> np.ndarray:
    """The lecture update written out: v = m v + lr g; w -= v (Nesterov: w -= m v + lr g)."""
    w, v = w0.copy(), np.zeros_like(w0)
    for t in range(STEPS):
        lr, g = explicit_rate(kind, t, STEPS), w - targets[t]
        v = momentum * v + lr * g
        w = w - (momentum * v + lr * g if nesterov else v)
    return w


SGD_CASES = [
    ("momentum-linear", "linear", 0.9, False, 0.0),
    ("momentum-exponential", "exponential", 0.9, False, 0.0),
    ("momentum-wd-linear", "linear", 0.5, False, 0.01),
    ("nesterov-linear", "linear", 0.8, True, 0.0),
    ("nesterov-exponential", "exponential", 0.9, True, 0.0),
]


@pytest.mark.parametrize(
    "kind, momentum, nesterov, wd", [c[1:] for c in SGD_CASES], ids=[c[0] for c in SGD_CASES]
)
def test_lecture_momentum_under_decay_matches_torch(
    case: Case, kind: str, momentum: float, nesterov: bool, wd: float, rng
) -> None:
    """40 steps with the rate decaying 0.2 -> 0.02: the library's SGD equals the lecture
    form computed by torch.optim (and written out in NumPy)."""
    w0, targets = _problem(rng)
    opt = SGD(LR0, momentum=momentum, nesterov=nesterov, weight_decay=wd, final_lr=LR1, decay=kind)
    got = _library_run(case, opt, w0, targets)
    expected = _torch_lecture_sgd(kind, w0, targets, momentum, nesterov, wd)
    case.assert_close(case.asarray(got), expected, "weights")
    if wd == 0.0:
        np.testing.assert_allclose(
            expected, _numpy_lecture_sgd(kind, w0, targets, momentum, nesterov), rtol=1e-12
        )


@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
def test_torch_form_differs_under_decay(nesterov: bool, rng) -> None:
    """The comparison above can tell the two momentum forms apart: torch's own form
    (``v = m v + g; w -= lr v``) under the same decay (LambdaLR) ends elsewhere."""
    torch = torch_or_skip()
    w0, targets = _problem(rng)
    w = torch.tensor(w0, requires_grad=True)
    opt = torch.optim.SGD([w], lr=LR0, momentum=0.9, nesterov=nesterov)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: explicit_rate("linear", t, STEPS) / LR0
    )
    for t in range(STEPS):
        opt.zero_grad()
        (0.5 * ((w - torch.tensor(targets[t])) ** 2).sum()).backward()
        opt.step()
        sched.step()
    lecture = _numpy_lecture_sgd("linear", w0, targets, 0.9, nesterov)
    assert np.max(np.abs(w.detach().numpy() - lecture)) > 1e-2


ADAM_CASES = [
    ("linear", dict(), {}),
    ("exponential", dict(beta1=0.8, beta2=0.99), dict(betas=(0.8, 0.99))),
    ("linear", dict(weight_decay=0.05, eps=1e-6), dict(weight_decay=0.05, eps=1e-6)),
]


@pytest.mark.parametrize(
    "kind, ours, theirs", ADAM_CASES, ids=["linear", "exponential-betas", "linear-wd-eps"]
)
def test_adam_under_decay_matches_torch_lambdalr(
    case: Case, kind: str, ours: dict, theirs: dict, rng
) -> None:
    """Adam with a decaying rate equals torch.optim.Adam driven by LambdaLR."""
    torch = torch_or_skip()
    w0, targets = _problem(rng)
    got = _library_run(case, Adam(LR0, final_lr=LR1, decay=kind, **ours), w0, targets)
    w = torch.tensor(w0, requires_grad=True)
    opt = torch.optim.Adam([w], lr=LR0, **theirs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: explicit_rate(kind, t, STEPS) / LR0)
    for t in range(STEPS):
        opt.zero_grad()
        (0.5 * ((w - torch.tensor(targets[t])) ** 2).sum()).backward()
        opt.step()
        sched.step()
    case.assert_close(case.asarray(got), w.detach().numpy(), "weights")


# ----------------------------------------------------------- the trainer's schedule


class _RecordingSGD(SGD):
    """SGD that notes the rate every step uses."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.used: list[float] = []

    def step(self, params) -> None:
        self.used.append(self.lr)
        super().step(params)

    def update(self, params, grads, state, lr, step):  # what Trainer's TrainStep calls
        self.used.append(float(lr))
        return super().update(params, grads, state, lr, step)


@pytest.mark.parametrize("kind", ["linear", "exponential"])
def test_multi_epoch_fit_follows_the_schedule_to_its_last_step(kind: str) -> None:
    """3 epochs of 5 steps: the rates decay over all 15 steps (not restarted or finished
    after the first epoch), and ``history.lr`` after each epoch is the next step's rate."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=50)
    model = xc.Sequential([L.Flatten(), L.Dense(3)], input_shape=(1, 4, 4), seed=0)
    opt = _RecordingSGD(LR0, momentum=0.9, final_lr=LR1, decay=kind)
    epochs, steps = 3, math.ceil(50 / 10)
    total = epochs * steps
    hist = xc.Trainer(model, opt, progress=False).fit(x, y, epochs=epochs, batch_size=10)
    expected = [explicit_rate(kind, t, total) for t in range(total)]
    assert opt.used == pytest.approx(expected, rel=1e-12)
    assert opt.used[-1] == pytest.approx(LR1) and opt.used[steps] < LR0
    after = [explicit_rate(kind, (e + 1) * steps, total) for e in range(epochs)]
    assert hist.lr == pytest.approx(after, rel=1e-12)
    assert hist.lr[0] > hist.lr[1] > hist.lr[2] == pytest.approx(LR1)


def test_resumed_fit_continues_the_schedule() -> None:
    """A three-epoch run interrupted after its first epoch and resumed uses the same
    rates as one uninterrupted run."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=40)

    class Stop(Exception):
        pass

    def stop_after_first(trainer: xc.Trainer) -> None:
        if trainer.epochs_done == 1:
            raise Stop

    def run(interrupt: bool) -> list[float]:
        model = xc.Sequential([L.Flatten(), L.Dense(3)], input_shape=(1, 4, 4), seed=0)
        opt = _RecordingSGD(LR0, final_lr=LR1)
        trainer = xc.Trainer(model, opt, progress=False)
        if interrupt:
            with pytest.raises(Stop):
                trainer.fit(x, y, epochs=3, batch_size=8, on_epoch_end=stop_after_first)
        trainer.fit(x, y, epochs=3, batch_size=8)
        return opt.used

    whole = run(False)
    assert whole == pytest.approx([explicit_rate("linear", t, 15) for t in range(15)])
    assert run(True) == pytest.approx(whole, rel=1e-12)


def test_schedule_objects_match_the_explicit_formula() -> None:
    for t in range(STEPS):
        assert LinearDecay(LR0, LR1)(t, STEPS) == pytest.approx(explicit_rate("linear", t, STEPS))


# ------------------------------------------------- schedule and optimizer contract


@pytest.mark.parametrize("make", [LinearDecay, ExponentialDecay], ids=["linear", "exponential"])
def test_short_runs_reach_the_final_rate(make) -> None:
    """A one-step run uses the initial rate, a two-step run ends on the final one."""
    sched = make(LR0, LR1)
    assert sched(0, 1) == LR0 and sched(5, 1) == pytest.approx(LR1)
    assert sched(0, 2) == LR0 and sched(1, 2) == pytest.approx(LR1)
    assert sched(2, 3) == pytest.approx(LR1) and sched(7, 3) == pytest.approx(LR1)


@pytest.mark.parametrize(
    "rates, message",
    [
        ((0.1, 0.0), r"^final_lr: expected a number in \(0, inf\), got 0.0$"),
        ((0.0, 0.1), r"^lr: expected a number in \(0, inf\), got 0.0$"),
        ((-0.1, -0.2), r"^lr: expected a number in \(0, inf\), got -0.1$"),
    ],
)
def test_exponential_decay_needs_positive_rates(rates, message) -> None:
    with pytest.raises(ValueError, match=message):
        ExponentialDecay(*rates)


def test_defaults_and_config_round_trip() -> None:
    """Defaults as documented; get_config holds every argument and rebuilds the optimizer."""
    assert SGD().get_config() == dict(
        type="SGD",
        lr=0.01,
        momentum=0.0,
        nesterov=False,
        weight_decay=0.0,
        final_lr=None,
        decay="linear",
    )
    assert Adam().get_config() == dict(
        type="Adam",
        lr=0.001,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.0,
        final_lr=None,
        decay="linear",
    )
    sgd = SGD(0.3, momentum=0.7, nesterov=True, weight_decay=0.01, final_lr=0.1)
    adam = Adam(0.02, beta1=0.8, beta2=0.9, eps=1e-6, weight_decay=0.1, final_lr=0.01)
    adam_exp = Adam(0.02, final_lr=0.01, decay="exponential")
    for opt in (sgd, adam, adam_exp):
        clone = optimizer_from_config(opt.get_config())
        assert type(clone) is type(opt) and clone.get_config() == opt.get_config()
        clone.setup(5), opt.setup(5)
        assert [clone.schedule(t, 5) for t in range(5)] == [opt.schedule(t, 5) for t in range(5)]
    assert sgd.lr == 0.3 and SGD(0.1, final_lr=0.01).schedule(1, 3) == pytest.approx(0.055)
    assert (sgd.momentum, sgd.nesterov, sgd.weight_decay) == (0.7, True, 0.01)
    assert (adam.beta1, adam.beta2, adam.eps) == (0.8, 0.9, 1e-6)
    with pytest.raises(
        ValueError, match=r"optimizer: expected one of \['Adam', 'AdamW', 'SGD'\], got 'X'"
    ):
        optimizer_from_config({"type": "X"})


def test_argument_errors_name_argument_and_value() -> None:
    for bad in (0, -1.0):
        with pytest.raises(
            ValueError, match=rf"^lr: expected a number in \(0, inf\), got {bad:.1f}$"
        ):
            SGD(bad)
    for bad in (True, "0.1"):
        with pytest.raises(TypeError, match=rf"^lr: expected a real number, got {bad!r}$"):
            SGD(bad)
    with pytest.raises(ValueError, match=r"momentum: expected a number in \[0, 1\), got 1.0"):
        SGD(0.1, momentum=1.0)
    with pytest.raises(ValueError, match=r"momentum: expected a number in \[0, 1\), got -0.1"):
        SGD(0.1, momentum=-0.1)
    with pytest.raises(ValueError, match=r"^nesterov: needs momentum > 0, got momentum 0$"):
        SGD(0.1, nesterov=True)
    with pytest.raises(
        ValueError, match=r"weight_decay: expected a number in \[0, inf\), got -0.1"
    ):
        Adam(weight_decay=-0.1)
    with pytest.raises(ValueError, match=r"decay: expected 'linear' or 'exponential', got 'c'"):
        Adam(final_lr=0.1, decay="c")
    for name in ("beta1", "beta2"):
        for bad in (1.0, -0.5):
            with pytest.raises(ValueError, match=rf"^{name}: expected a number in \[0, 1\), got"):
                Adam(**{name: bad})
    Adam(beta1=0.0, beta2=0.0)  # the closed end of [0, 1)
    SGD(0.1, momentum=0.0, weight_decay=0.0)


def test_plain_sgd_keeps_no_state_and_momentum_state_round_trips(rng) -> None:
    """Plain SGD stores nothing per parameter; momentum and Adam state moved to a fresh
    optimizer (as a checkpoint does) continue the run exactly."""
    w0, targets = _problem(rng)

    def steps(opt, p, ts) -> None:
        for t in ts:
            p.grad = p.value - targets[t]
            opt.step({"w": p})

    plain = SGD(0.1)
    steps(plain, L.Parameter(w0.copy(), "w"), range(3))
    assert plain.state_arrays() == {}
    for make in (lambda: SGD(0.1, momentum=0.9), lambda: Adam(0.05, final_lr=0.01)):
        whole, first = make(), make()
        pw, pf = L.Parameter(w0.copy(), "w"), L.Parameter(w0.copy(), "w")
        whole.setup(STEPS), first.setup(STEPS)
        steps(whole, pw, range(STEPS))
        steps(first, pf, range(10))
        resumed = make()
        resumed.setup(STEPS)
        resumed.load_state_arrays(dict(first.state_arrays()))
        resumed.step_count = first.step_count
        assert sorted(resumed.state) == ["w"] and resumed.state_arrays().keys() == (
            first.state_arrays().keys()
        )
        steps(resumed, pf, range(10, STEPS))
        np.testing.assert_array_equal(pf.value, pw.value)


def test_adam_keeps_state_per_parameter(rng) -> None:
    """Two parameters of different shapes: each has its own moments (torch.optim.Adam)."""
    torch = torch_or_skip()
    a0, b0 = rng.normal(size=(3, 4)), rng.normal(size=(5,))
    ta, tb = rng.normal(size=(STEPS, 3, 4)), rng.normal(size=(STEPS, 5))
    opt = Adam(LR0, final_lr=LR1)
    opt.setup(STEPS)
    pa, pb = L.Parameter(a0.copy(), "a"), L.Parameter(b0.copy(), "b")
    for t in range(STEPS):
        pa.grad, pb.grad = pa.value - ta[t], 3.0 * (pb.value - tb[t])
        opt.step({"a": pa, "b": pb})
    wa, wb = torch.tensor(a0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    ref = torch.optim.Adam([wa, wb], lr=LR0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        ref, lambda t: explicit_rate("linear", t, STEPS) / LR0
    )
    for t in range(STEPS):
        ref.zero_grad()
        loss = 0.5 * ((wa - torch.tensor(ta[t])) ** 2).sum()
        loss = loss + 1.5 * ((wb - torch.tensor(tb[t])) ** 2).sum()
        loss.backward()
        ref.step()
        sched.step()
    np.testing.assert_allclose(pa.value, wa.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pb.value, wb.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_without_setup_a_run_is_one_step_and_gradless_parameters_are_skipped() -> None:
    opt = SGD(0.1, final_lr=0.01)
    assert opt.total_steps == 1 and opt.lr == 0.1
    frozen, trained = L.Parameter(np.ones(2), "a"), L.Parameter(np.ones(2), "b")
    trained.grad = np.full(2, 2.0)
    opt.step({"a": frozen, "b": trained})  # a parameter without gradient comes first
    np.testing.assert_array_equal(frozen.value, [1.0, 1.0])
    np.testing.assert_allclose(trained.value, [0.8, 0.8])
    assert opt.step_count == 1 and opt.lr == pytest.approx(0.01)
    opt.setup(0)
    assert opt.total_steps == 1


def test_state_arrays_round_trip_any_parameter_name() -> None:
    """Flat ``"param/slot"`` keys split at the last slash, so names may contain one."""
    opt = Adam(0.1)
    p = L.Parameter(np.ones(3), "block/dense.weight")
    p.grad = np.arange(3.0)
    opt.step({"block/dense.weight": p})
    flat = opt.state_arrays()
    assert sorted(flat) == ["block/dense.weight/m", "block/dense.weight/v"]
    fresh = Adam(0.1)
    fresh.load_state_arrays(flat)
    assert sorted(fresh.state) == ["block/dense.weight"]
    assert sorted(fresh.state["block/dense.weight"]) == ["m", "v"]
    np.testing.assert_allclose(fresh.state["block/dense.weight"]["m"], 0.1 * np.arange(3.0))
    with pytest.raises(ValueError, match=r"optimizer: expected one of .*, got None"):
        optimizer_from_config({"lr": 0.1})
