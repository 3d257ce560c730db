"""AdamW and the learning-rate schedules against torch.optim.AdamW and
torch.optim.lr_scheduler, step by step on every backend; configs, resume and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import Case, torch_or_skip
from numerics import assert_scaled_close, composed_tol

import xpconv as xc
from xpconv.nn.layers import Parameter
from xpconv.optim.optimizers import (
    Adam,
    AdamW,
    Constant,
    CosineDecay,
    Schedule,
    StepDecay,
    Warmup,
    optimizer_from_config,
    schedule_from_config,
)

TOTAL = 23


def torch_lrs(make_scheduler, base_lr: float, steps: int) -> list[float]:
    """The learning rate torch uses at each of ``steps`` optimizer steps."""
    torch = torch_or_skip()
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = make_scheduler(torch.optim.lr_scheduler, opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def _sequential(lr, opt, warm: int, after):
    return lr.SequentialLR(
        opt,
        [lr.LinearLR(opt, start_factor=0.2, end_factor=1.0, total_iters=warm), after(opt)],
        milestones=[warm],
    )


SCHEDULES = [
    (
        "cosine",
        lambda: CosineDecay(0.1),
        lambda lr, opt: lr.CosineAnnealingLR(opt, T_max=TOTAL),
    ),
    (
        "cosine-eta-min-period",
        lambda: CosineDecay(0.1, final=0.01, steps=9),
        lambda lr, opt: lr.CosineAnnealingLR(opt, T_max=9, eta_min=0.01),
    ),
    ("step", lambda: StepDecay(0.1, 5, gamma=0.5), lambda lr, opt: lr.StepLR(opt, 5, gamma=0.5)),
    (
        "warmup-cosine",
        lambda: Warmup(CosineDecay(0.1), steps=4, start_factor=0.2),
        lambda lr, opt: _sequential(lr, opt, 4, lambda o: lr.CosineAnnealingLR(o, T_max=TOTAL - 4)),
    ),
    (
        "warmup-step",
        lambda: Warmup(StepDecay(0.1, 3, gamma=0.7), steps=5, start_factor=0.2),
        lambda lr, opt: _sequential(lr, opt, 5, lambda o: lr.StepLR(o, 3, gamma=0.7)),
    ),
    (
        "warmup-constant",
        lambda: Warmup(0.1, steps=6, start_factor=0.2),
        lambda lr, opt: lr.LinearLR(opt, start_factor=0.2, end_factor=1.0, total_iters=6),
    ),
]


@pytest.mark.parametrize(("name", "ours", "theirs"), SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_schedules_match_torch(name, ours, theirs) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's deprecation notes
        expected = torch_lrs(theirs, 0.1, TOTAL)
    schedule = ours()
    got = [schedule(step, TOTAL) for step in range(TOTAL)]
    if name == "cosine-eta-min-period":
        # torch's cosine rises again after T_max; this one stays at the final rate
        assert got[9:] == [0.01] * (TOTAL - 9)
        got, expected = got[:10], expected[:10]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    again = schedule_from_config(schedule.get_config())
    assert [again(s, TOTAL) for s in range(len(got))] == got


def test_warmup_fraction_of_the_run() -> None:
    schedule = Warmup(CosineDecay(1.0), steps=0.1, start_factor=0.5)
    assert schedule.warmup_steps(100) == 10
    assert schedule(0, 100) == 0.5
    assert schedule(10, 100) == 1.0
    assert abs(schedule(55, 100) - 0.5) < 1e-12  # half way through the cosine


def _params(case: Case, seed: int) -> tuple[dict[str, Parameter], dict[str, np.ndarray]]:
    r = np.random.default_rng(seed)
    host = {
        "conv.weight": case.host(r.normal(size=(3, 2, 2))),
        "conv.bias": case.host(r.normal(size=(3,))),
        "batchnorm.weight": case.host(r.normal(1.0, 0.1, size=(3,))),
        "dense.weight": case.host(r.normal(size=(4, 3))),
    }
    return {k: Parameter(case.asarray(v), k) for k, v in host.items()}, host


def _grad(value: np.ndarray, step: int) -> np.ndarray:
    """A gradient that changes with the value and the step (a quadratic bowl that moves)."""
    return value - np.sin(step + np.arange(value.size).reshape(value.shape)) + 0.1 * value**2


@pytest.mark.parametrize(
    "variant", ["plain", "exclude-bias-and-norm", "patterns", "warmup-cosine", "step"]
)
def test_adamw_matches_torch_step_by_step(case: Case, variant: str) -> None:
    torch = torch_or_skip()
    lr = 0.05
    kwargs = dict(beta1=0.8, beta2=0.99, eps=1e-7, weight_decay=0.1)
    schedule: object = lr
    if variant == "warmup-cosine":
        schedule = Warmup(CosineDecay(lr), steps=3, start_factor=0.2)
    elif variant == "step":
        schedule = StepDecay(lr, 4, gamma=0.5)
    exclude = {"exclude-bias-and-norm": "bias_and_norm", "patterns": ["*.bias", "batch*"]}
    ours = AdamW(schedule, exclude=exclude.get(variant, "none"), **kwargs)
    ours.setup(TOTAL)
    params, host = _params(case, 1)

    tparams = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in host.items()}
    no_decay = {"conv.bias", "batchnorm.weight"} if variant in exclude else set()
    groups = [
        {"params": [p for k, p in tparams.items() if k not in no_decay]},
        {"params": [p for k, p in tparams.items() if k in no_decay], "weight_decay": 0.0},
    ]
    topt = torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=lr, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.1
    )
    sched = None
    if variant == "warmup-cosine":
        lrs = torch.optim.lr_scheduler
        sched = _sequential(lrs, topt, 3, lambda o: lrs.CosineAnnealingLR(o, T_max=TOTAL - 3))
    elif variant == "step":
        sched = torch.optim.lr_scheduler.StepLR(topt, 4, gamma=0.5)
    import warnings

    for step in range(TOTAL):
        for k, p in params.items():
            g = _grad(case.to_numpy(p.value), step)
            p.grad = case.asarray(g)
            tparams[k].grad = torch.tensor(case.host(g), dtype=torch.float64)
        ours.step(params)
        topt.step()
        if sched is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sched.step()
        for k, p in params.items():
            expected = tparams[k].detach().numpy().astype(np.float64)
            assert_scaled_close(
                case.to_numpy(p.value), expected, composed_tol(case.dtype),
                f"{variant} step {step} {k} on {case.id}",
            )  # fmt: skip
    assert ours.decays("dense.weight", params["dense.weight"].value)
    assert ours.decays("conv.bias", params["conv.bias"].value) == (variant not in exclude)


def test_adamw_config_round_trip_and_resume(tmp_path) -> None:
    opt = AdamW(Warmup(CosineDecay(3e-3), steps=0.1), weight_decay=5e-4, exclude="bias_and_norm")
    config = opt.get_config()
    assert config["lr"]["type"] == "Warmup" and config["exclude"] == "bias_and_norm"
    again = optimizer_from_config(config)
    assert again.get_config() == config and isinstance(again, AdamW)

    r = np.random.default_rng(0)
    x, y = r.normal(size=(30, 1, 6, 6)).astype(np.float32), r.integers(0, 3, size=30)

    def make():
        model = xc.Sequential(
            [
                xc.Conv2D(2, 3, use_bias=False),
                xc.BatchNorm2D(),
                xc.ReLU(),
                xc.Flatten(),
                xc.Dense(3),
            ],
            input_shape=(1, 6, 6),
            seed=1,
        )
        opt = AdamW(
            Warmup(CosineDecay(0.01), steps=0.2), weight_decay=0.01, exclude="bias_and_norm"
        )
        return xc.Trainer(model, opt, progress=False)

    full = make()
    full.fit(x, y, epochs=3, batch_size=7)
    part = make()

    class Stop(Exception):
        pass

    def save_and_stop(trainer) -> None:  # an interrupted run of 3 epochs
        xc.save_training(trainer, tmp_path / "t.npz")
        raise Stop

    with pytest.raises(Stop):
        part.fit(x, y, epochs=3, batch_size=7, on_epoch_end=save_and_stop)
    resumed = xc.load_training(tmp_path / "t.npz", progress=False)
    assert resumed.optimizer.get_config() == part.optimizer.get_config()
    resumed.fit(x, y, epochs=3, batch_size=7)
    for k, v in full.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], v, err_msg=k)
    assert resumed.history.lr == full.history.lr


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: CosineDecay(0.0), ["CosineDecay", "initial"]),
        (lambda: CosineDecay(0.1, final=-1.0), ["final"]),
        (lambda: CosineDecay(0.1, steps=0), ["steps"]),
        (lambda: StepDecay(0.1, 0), ["step_size"]),
        (lambda: StepDecay(0.1, 2, gamma=0.0), ["gamma"]),
        (lambda: Warmup(CosineDecay(0.1), steps=1.5), ["steps", "(0, 1)"]),
        (lambda: Warmup(CosineDecay(0.1), steps=-2), ["steps"]),
        (lambda: Warmup(CosineDecay(0.1), start_factor=0.0), ["start_factor"]),
        (lambda: AdamW(0.1, weight_decay=-1.0), ["weight_decay"]),
        (lambda: AdamW(0.1, exclude="biases"), ["exclude", "bias_and_norm"]),
        (lambda: AdamW(Constant(0.1), final_lr=0.01), ["final_lr", "schedule"]),
        (lambda: schedule_from_config({"type": "Nope"}), ["schedule", "Nope"]),
        (lambda: schedule_from_config({"lr": 0.1}), ["schedule", "got None"]),
        (lambda: Warmup(CosineDecay(0.1), steps=True), ["Warmup: steps expected", "True"]),
        (lambda: Warmup(-1.0), ["Warmup: after: expected", "-1.0"]),
    ],
)
def test_bad_schedule_arguments(make, words) -> None:
    with pytest.raises(ValueError) as info:
        make()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_warmup_of_zero_steps_is_the_schedule_after_it() -> None:
    after = CosineDecay(0.1)
    warm = Warmup(after, steps=0)
    assert warm.warmup_steps(5) == 0
    assert [warm(i, 5) for i in range(5)] == [after(i, 5) for i in range(5)]


def test_adamw_decays_its_rate_like_adam() -> None:
    """AdamW's ``final_lr`` and ``decay`` build the schedule Adam builds."""
    for decay in ("linear", "exponential"):
        adamw, adam = AdamW(0.1, final_lr=0.01, decay=decay), Adam(0.1, final_lr=0.01, decay=decay)
        assert adamw.schedule.get_config() == adam.schedule.get_config()
        assert [adamw.schedule(i, 4) for i in range(4)] == [adam.schedule(i, 4) for i in range(4)]


#: (class, required arguments, documented defaults): torch.optim's where it has the same
#: (SGD's and Adam's: optim/test_optimizer_decay.py::test_defaults_and_config_round_trip).
DOCUMENTED_DEFAULTS = [
    (
        AdamW,
        (),
        dict(
            lr=1e-3,
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
            weight_decay=0.01,
            exclude="none",
            final_lr=None,
            decay="linear",
        ),
    ),
    (CosineDecay, (0.1,), dict(final=0.0, steps=None)),
    (StepDecay, (0.1, 2), dict(gamma=0.1)),
    (Warmup, (CosineDecay(0.1),), dict(steps=0.1, start_factor=0.1)),
]


@pytest.mark.parametrize(
    "cls, required, defaults", DOCUMENTED_DEFAULTS, ids=lambda v: getattr(v, "__name__", "")
)
def test_leaving_out_a_default_is_passing_it(cls, required, defaults) -> None:
    left_out, written = cls(*required), cls(*required, **defaults)
    assert left_out.get_config() == written.get_config()
    if isinstance(left_out, Schedule):
        assert [left_out(i, 10) for i in range(10)] == [written(i, 10) for i in range(10)]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: StepDecay(-1.0, 2), "StepDecay: initial: expected a number in (0, inf), got -1.0"),
        (
            lambda: StepDecay(0.1, 2, gamma=0.0),
            "StepDecay: gamma: expected a number in (0, inf), got 0.0",
        ),
    ],
)
def test_schedule_errors_name_the_schedule(make, message: str) -> None:
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value) == message


@pytest.mark.parametrize(
    "make, exc, message",
    [
        (
            lambda: AdamW(0.1, weight_decay=-1.0),
            ValueError,
            "weight_decay: expected a number in [0, inf), got -1.0",
        ),
        (
            lambda: AdamW(0.1, exclude=[1]),
            ValueError,
            "exclude: expected 'none', 'bias_and_norm' or a list of name patterns, got [1]",
        ),
        (lambda: Constant(-1), ValueError, "lr: expected a number in (0, inf), got -1.0"),
        (
            lambda: StepDecay(0.1, True),
            ValueError,
            "StepDecay: step_size expected a positive int, got True",
        ),
        (
            lambda: CosineDecay(0.1, steps=0),
            ValueError,
            "CosineDecay: steps expected a positive int or None, got 0",
        ),
    ],
)
def test_optimizer_errors_are_stated_whole(make, exc: type, message: str) -> None:
    with pytest.raises(exc) as info:
        make()
    assert str(info.value) == message


def test_a_one_step_cosine_period_and_name_patterns_are_accepted() -> None:
    assert CosineDecay(0.1, steps=1).get_config()["steps"] == 1
    assert AdamW(0.1, exclude=("bias",)).get_config()["exclude"] == ["bias"]
