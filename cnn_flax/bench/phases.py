"""Time-based benchmark phases: warm up until the rate holds still, then time windows of a fixed step count.

A fixed handful of steps says little on a shared machine or for a model whose step takes a second: the
first windows after compiling run slower (caches, allocator, thread pools), and ten steps of MiniVGG last
under two seconds. A `Phase` instead sizes its windows in seconds. Its warm-up windows end when two in a
row agree within `tolerance` (or after `max_warmup` of them); the step count of each window follows the
last measured rate, so a window lasts about `seconds / windows`, and it is then frozen for the timed
windows, whose median rate is the figure. The same phase drives the bare step, inference and the real
training loop (`benchmark.LoopWindows`), so the loop is timed over windows as long as the bare step's.

Callers time their windows and `record` the seconds, so the logic is tested with made-up durations.
`alternated` runs several variants' windows in turn (an A/B in one process, so a shared machine's load
hits each alike) and is the one place here that reads a clock: the process's CPU time beside each window.
"""

import dataclasses
import math
import os
import statistics
from collections.abc import Callable, Mapping

WINDOWS = 3  # timed windows per phase; each figure is their median


def steps_for(seconds: float, step_seconds: float) -> int:
    """How many steps of `step_seconds` fill `seconds` (at least one)."""
    if step_seconds <= 0:
        return 1
    return max(1, math.ceil(seconds / step_seconds - 1e-9))


@dataclasses.dataclass
class Phase:
    """Warm-up windows until the rate is steady, then `windows` timed windows of a frozen step count."""

    seconds: float  # the timed part in all: `windows` windows of about seconds / windows each
    windows: int = 3
    tolerance: float = 0.1  # warm-up ends when a window's rate is within this share of the previous one's
    max_warmup: int = 4  # on a machine too busy to settle, the timed windows start after this many
    steps: int = 1  # the step count of the next window
    warmup_rates: list[float] = dataclasses.field(default_factory=list)  # steps/s of each warm-up window
    timed_seconds: list[float] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.windows < 1:
            raise ValueError(f"a phase needs seconds > 0 and windows >= 1, got {self.seconds} and {self.windows}")

    @property
    def window_seconds(self) -> float:
        return self.seconds / self.windows

    @property
    def steady(self) -> bool:
        """True once the warm-up is over: the rate held within `tolerance`, or `max_warmup` windows ran."""
        rates = self.warmup_rates
        if len(rates) >= self.max_warmup:
            return True
        return len(rates) >= 2 and abs(rates[-1] / rates[-2] - 1) <= self.tolerance

    @property
    def done(self) -> bool:
        return len(self.timed_seconds) >= self.windows

    def start(self, step_seconds: float) -> None:
        """Size the first warm-up window from one step's duration (the step after the compiling one)."""
        self.steps = steps_for(self.window_seconds, step_seconds)

    def record(self, seconds: float) -> None:
        """The window of `self.steps` steps that just ended took `seconds`."""
        if self.done:
            raise RuntimeError("the phase has all its timed windows")
        seconds = max(seconds, 1e-9)
        if self.steady:
            self.timed_seconds.append(seconds)
            return
        self.warmup_rates.append(self.steps / seconds)
        self.steps = steps_for(self.window_seconds, seconds / self.steps)

    @property
    def steps_per_second(self) -> float:
        """The median rate of the timed windows."""
        if not self.timed_seconds:
            raise RuntimeError("no timed window yet")
        return statistics.median(self.steps / seconds for seconds in self.timed_seconds)

    @property
    def timed_steps(self) -> int:
        return self.steps * len(self.timed_seconds)


def run_phase(phase: Phase, window: Callable[[int], float], warm_up_only: bool = False) -> Phase:
    """Drive `phase` with `window(steps)`, which runs that many steps and returns their seconds, until its
    timed windows are done (or, with `warm_up_only`, until its warm-up is over)."""
    while not (phase.steady if warm_up_only else phase.done):
        phase.record(window(phase.steps))
    return phase


def phase_after_one(seconds: float, window: Callable[[int], float], warm_up_only: bool = False) -> Phase:
    """A phase of `WINDOWS` windows whose first is sized from one timed step (`window(1)`, after the step that
    compiled or traced), run until done, or only until its warm-up is over."""
    phase = Phase(seconds, WINDOWS)
    phase.start(window(1))
    return run_phase(phase, window, warm_up_only)


def alternated(runs: Mapping[str, Callable[[int], float]], seconds: float, images_per_step: int,
               rounds: int = WINDOWS) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each run warmed up on its own (`phase_after_one`), then one window of each in turn, `rounds` times;
    the images/s of every window by the wall clock (what `run(steps)` returns) and by the process's CPU
    time (user and system: the work, not the waiting)."""
    sizes = {name: phase_after_one(seconds, run, warm_up_only=True).steps for name, run in runs.items()}
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            cpu_start = _cpu_seconds()
            wall[name].append(sizes[name] * images_per_step / run(sizes[name]))
            cpu[name].append(sizes[name] * images_per_step / max(_cpu_seconds() - cpu_start, 1e-9))
    return wall, cpu


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median of the pairs' ratios: each pair ran back to back, so the load of its moment cancels."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system
