"""Interleaved timing: every contender runs once per round, the order rotating.

For one workload, mode and batch size, each contender first runs its warm-up steps
(and more, one at a time, until ``Policy.warmup_s`` seconds have passed), then one
calibration step that picks how many steps a timed repeat holds (enough to
last about ``target_s``). Then come ``rounds`` rounds; in each, every contender runs
one timed repeat, the order rotating from round to round so that no contender always
follows the same one. A repeat's time divided by its steps is one sample; the result
is the median sample. Machine-wide slow-downs (another process, frequency changes)
then hit all contenders of a round alike instead of whichever ran at that moment.

Before every repeat the garbage collector runs and the process sleeps ``pause_s``
(untimed), so worker threads left spinning by the previous contender do not steal
the next one's cores.

Busy-ness: around every repeat, ``/proc/stat`` says how many cores other processes
kept busy during it (:func:`xpconv.backends.numpy.host.cpu_sample`). A repeat during which they took
more than ``Policy.busy_limit`` cores is not clean; it is run again, at most
``Policy.retries`` times (the benchmarks' settings ask for 2), and the sample kept
records the busy-ness it had.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from xpconv.backends.numpy import host

__all__ = ["Policy", "Timing", "run_interleaved", "steps_for"]


@dataclass(frozen=True)
class Policy:
    """How one contender is timed.

    Attributes:
        warmup: untimed steps before calibration.
        warmup_s: the warm-up goes on, a step at a time, until it has lasted this long.
            xpconv's host balancing (``xpconv.backends.numpy.host.balance_threads``) starts a fresh
            process on one thread and decides every 0.1 s; a user's epoch runs for
            seconds, so the timed repeats measure what comes after that.
        rounds: timed repeats (a contender with fewer rounds than the others takes
            part in the first ones only).
        target_s: a repeat lasts about this long; the step count follows from it.
        max_steps: at most this many steps per repeat; ``fixed_steps`` overrides both.
    """

    warmup: int = 2
    warmup_s: float = 0.0
    rounds: int = 5
    target_s: float = 0.25
    max_steps: int = 50
    fixed_steps: int | None = None
    busy_limit: float = 0.25
    retries: int = 0


@dataclass
class Timing:
    """Per-step seconds of one contender, one sample per round; ``busy`` holds the
    cores other processes took during each kept sample (None: unknown), ``retried``
    the repeats run again because the machine was busy, ``walls`` the host-clock
    seconds per step of the same repeats (equal to ``samples`` unless a device timer
    took them)."""

    steps: int
    samples: list[float] = field(default_factory=list)
    last_value: float = math.nan
    busy: list[float | None] = field(default_factory=list)
    retried: int = 0
    walls: list[float] = field(default_factory=list)

    @property
    def clean(self) -> int:
        """How many kept samples had the machine to themselves (busy under 0.25 cores)."""
        return sum(1 for b in self.busy if b is not None and b < 0.25)

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples)

    @property
    def min_s(self) -> float:
        return min(self.samples)

    @property
    def spread(self) -> float:
        """(max - min) / median of the samples: how steady the rounds were."""
        return (max(self.samples) - min(self.samples)) / self.median_s


def steps_for(step_s: float, policy: Policy) -> int:
    """Steps per repeat so that one repeat lasts about ``policy.target_s``."""
    if policy.fixed_steps is not None:
        return max(1, policy.fixed_steps)
    if step_s <= 0:
        return policy.max_steps
    return max(1, min(policy.max_steps, math.ceil(policy.target_s / step_s)))


class ClockTimer:
    """Times a call with a host clock: ``time(fn)`` returns ``fn()``'s value, the
    seconds it took, and the same seconds again as the wall time. The GPU harness
    passes CUDA-event timers with the same ``time`` method instead."""

    kind = "wall clock"

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock

    def time(self, fn: Callable[[], float]) -> tuple[float, float, float]:
        start = self.clock()
        value = fn()
        seconds = self.clock() - start
        return value, seconds, seconds


def _calibrate(runner: Any, policy: Policy, timer: Any, clock: Callable[[], float]) -> Timing:
    """Warm ``runner`` up as ``policy`` says, time one step, and size the repeats."""
    started = clock()
    if policy.warmup:
        runner.run(policy.warmup)
    while clock() - started < policy.warmup_s:
        runner.run(1)
    gc.collect()
    _, seconds, _ = timer.time(lambda: runner.run(1))
    return Timing(steps_for(seconds, policy))


def _repeat(
    runner: Any, timing: Timing, policy: Policy, timer: Any, pause_s: float, cpu: Callable[[], Any]
) -> None:
    """One timed repeat of ``timing.steps`` steps, run again (up to ``policy.retries``
    times) while other processes keep more than ``policy.busy_limit`` cores busy."""
    for attempt in range(policy.retries + 1):
        gc.collect()
        if pause_s > 0:
            time.sleep(pause_s)
        before = cpu()
        value, seconds, wall = timer.time(lambda: runner.run(timing.steps))
        after = cpu()
        busy = None if before is None or after is None else after.others_since(before)
        if busy is None or busy <= policy.busy_limit:
            break
        if attempt < policy.retries:
            timing.retried += 1
    timing.last_value = value
    timing.samples.append(seconds / timing.steps)
    timing.walls.append(wall / timing.steps)
    timing.busy.append(busy)


def run_interleaved(
    runners: dict[str, Any],
    policies: dict[str, Policy],
    *,
    pause_s: float = 0.02,
    clock: Callable[[], float] = time.perf_counter,
    cpu: Callable[[], Any] = host.cpu_sample,
    timers: dict[str, Any] | None = None,
    after_warmup: Callable[[], None] | None = None,
) -> dict[str, Timing]:
    """Time every runner (``runner.run(steps) -> float``) in interleaved rounds, the
    order rotating from round to round.

    Each runner is warmed up and calibrated first (``after_warmup`` is called once
    they all are), then timed once per round by its timer (``timers``; default: a
    :class:`ClockTimer` on ``clock``). ``cpu`` samples the machine around each repeat
    (a function returning ``None``: never retried as busy).
    """
    names: Sequence[str] = list(runners)
    timers = timers or {name: ClockTimer(clock) for name in names}
    timings = {
        name: _calibrate(runners[name], policies[name], timers[name], clock) for name in names
    }
    if after_warmup is not None:
        after_warmup()
    rounds = max(policies[name].rounds for name in names)
    for r in range(rounds):
        shift = r % len(names)
        for name in [*names[shift:], *names[:shift]]:
            if r < policies[name].rounds:
                _repeat(runners[name], timings[name], policies[name], timers[name], pause_s, cpu)
    return timings


def flat_unique(groups: Sequence[Sequence[Any]] | None) -> tuple[Any, ...] | None:
    """The values of repeated list options (``--batch 8 32 --batch 8``) in first-seen
    order, each once; ``None`` when none were given."""
    if not groups:
        return None
    return tuple(dict.fromkeys(v for group in groups for v in group))


def settings_base(args: Any, presets: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Settings fields from parsed ``python -m benchmarks`` arguments, for the CPU and
    the GPU harness: each preset whose flag is set (``("quick", QUICK)``), in order,
    then the explicit ``--rounds``, ``--warmup`` and ``--target-s``."""
    base: dict[str, Any] = {}
    for flag, preset in presets:
        if getattr(args, flag, False):
            base.update(preset)
    for name in ("rounds", "warmup", "target_s"):
        value = getattr(args, name, None)
        if value is not None:
            base[name] = value
    return base
