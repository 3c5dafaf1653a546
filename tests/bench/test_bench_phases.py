"""The benchmark's time-based phases on made-up durations: warm-up until steady, window sizes, the loop's windows."""

import pytest

from cnn_flax.bench.model import LoopWindows
from cnn_flax.bench.phases import Phase, alternated, median_ratio, run_phase, steps_for
from cnn_flax.training.loop import LoopState


def test_steps_for_fills_the_seconds():
    assert steps_for(2.0, 0.5) == 4
    assert steps_for(2.0, 0.3) == 7  # 6.67 steps: the window may run a little over, never under
    assert steps_for(2.0, 5.0) == 1 and steps_for(1.0, 0.0) == 1


class FakeSteps:
    """Steps whose seconds follow a script: slow ones first (a cold machine), then a steady rate."""

    def __init__(self, cold: list[float], steady: float):
        self.cold, self.steady, self.calls = list(cold), steady, []

    def __call__(self, steps: int) -> float:
        self.calls.append(steps)
        return sum(self.cold.pop(0) if self.cold else self.steady for _ in range(steps))


def test_warm_up_runs_until_two_windows_agree_then_times_frozen_windows():
    steps = FakeSteps(cold=[1.0] * 2 + [0.5] * 3, steady=0.25)
    phase = Phase(seconds=3.0, windows=3)
    phase.start(steps(1))  # 1.0 s: the first window is one step of the one-second window
    run_phase(phase, steps)
    # Warm-up: 1 step at 1 step/s, 1 step at 2 steps/s (not steady), 2 steps at 2 steps/s (steady).
    assert phase.warmup_rates == [1.0, 2.0, 2.0]
    # Sized from the last warm-up window (0.5 s/step) the timed windows were frozen at 2 steps, although
    # the machine then ran at 0.25 s/step: each timed window is 2 steps of 0.25 s.
    assert steps.calls == [1, 1, 1, 2, 2, 2, 2]  # the sizing step, three warm-up windows, three timed
    assert phase.timed_seconds == [0.5, 0.5, 0.5] and phase.steps_per_second == 4.0
    assert phase.timed_steps == 6 and phase.done


def test_warm_up_only_stops_where_the_timed_windows_would_start():
    steps = FakeSteps(cold=[1.0] * 2 + [0.5] * 3, steady=0.25)
    phase = Phase(seconds=3.0, windows=3)
    phase.start(steps(1))
    run_phase(phase, steps, warm_up_only=True)
    assert phase.steady and phase.timed_seconds == [] and phase.steps == 2


def test_a_machine_that_never_settles_starts_timing_after_max_warmup():
    alternating = iter([1.0, 2.0] * 10)
    phase = Phase(seconds=2.0, windows=2, max_warmup=3)
    phase.start(1.0)
    run_phase(phase, lambda steps: steps * next(alternating))
    assert len(phase.warmup_rates) == 3 and len(phase.timed_seconds) == 2
    # The median of an even count is the mean of the middle two: 1 and 0.5 steps/s.
    assert phase.steps_per_second == pytest.approx(0.75)


def test_phase_rejects_nonsense_and_extra_windows():
    with pytest.raises(ValueError, match="seconds > 0"):
        Phase(seconds=0)
    phase = Phase(seconds=1.0, windows=1, max_warmup=1)
    with pytest.raises(RuntimeError, match="no timed window"):
        phase.steps_per_second  # noqa: B018
    phase.record(1.0)  # the only warm-up window
    phase.record(1.0)
    with pytest.raises(RuntimeError, match="all its timed windows"):
        phase.record(1.0)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_loop_windows_stop_their_clock_between_epochs_and_end_the_run():
    """Epochs of 3 steps of 1 s; each epoch end spends 10 s (validation, plot, checkpoint) off the clock, and
    so does the 100 s `between` call after each window."""
    clock, synced = FakeClock(), []
    phase = Phase(seconds=8.0, windows=2, max_warmup=1, steps=4)  # one warm-up window, then 2 of 4 steps
    between = []  # what runs off the clock after each window: the benchmark's bare-step windows

    def bare_window(state):
        assert state is loop  # the bare steps run on the loop's own state
        between.append(len(phase.timed_seconds))
        clock.now += 100.0

    windows = LoopWindows(phase, sync=synced.append, clock=clock, between=bare_window)
    loop = LoopState(epoch=1, batch=0, num_epochs=100, steps_per_epoch=3, state="state", metrics=None)
    steps_run = 0
    while not loop.stop:
        windows.on_epoch_start(loop)
        for _ in range(3):
            clock.now += 1.0
            steps_run += 1
            windows.on_step(loop)
            if loop.stop:
                break
        if loop.stop:
            break
        clock.now += 0.5  # the end-of-epoch metric fetch: part of the steps' time
        windows.on_steps_done(loop)
        clock.now += 10.0
    # Warm-up 4 steps (4.5 s with one fetch), then 4 steps sized to 4 s each window: 4 + 4 + 4 steps.
    assert steps_run == 12 and synced == ["state"] * 3
    assert phase.warmup_rates == [4 / 4.5]
    assert phase.timed_seconds == [4.5, 4.5] and phase.steps == 4
    assert windows.epoch_extras == [10.0, 10.0, 10.0]
    assert between == [0, 1, 2]  # after the warm-up window and after each timed one, never on the clock


def test_alternated_variants_take_turns_and_their_ratio_is_the_median_of_the_pairs():
    """Two variants whose steps take 10 and 20 ms of (made-up) wall clock: after each one's own warm-up they
    take turns, one window each per round, and the faster one's rate is twice the slower one's."""
    calls = []

    def variant(name, step_seconds):
        def window(steps):
            calls.append(name)
            return steps * step_seconds
        return window

    wall, cpu = alternated({"fast": variant("fast", 0.01), "slow": variant("slow", 0.02)}, seconds=0.3,
                           images_per_step=8, rounds=4)
    assert calls[-8:] == ["fast", "slow"] * 4  # the timed windows alternate
    assert wall["fast"] == pytest.approx([800.0] * 4) and wall["slow"] == pytest.approx([400.0] * 4)
    assert len(cpu["fast"]) == len(cpu["slow"]) == 4 and all(rate > 0 for rate in cpu["fast"] + cpu["slow"])
    assert median_ratio(wall["fast"], wall["slow"]) == pytest.approx(2.0)
    assert median_ratio([1.0, 3.0, 10.0], [1.0, 1.0, 1.0]) == 3.0  # a median, not a mean
