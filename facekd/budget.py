"""Wall-clock budgets: "train the best model you can in N minutes on this machine".

Under a budget a stage measures its progress as time used, not epochs done, and runs its
learning-rate and resolution schedules on that progress, so the rate reaches its floor
just as the time runs out (Li, Yumer and Ramanan, "Budgeted Training", ICLR 2020). A
schedule sized in epochs would either overrun on a slow machine or leave time unused on a
fast one; one driven by the clock lands on time on both, and adapts when a machine slows
down mid-run because progress is re-read at every step.

Everything the stage does counts: decoding the data, loading a teacher, validation and
checkpoints. What a final validation and checkpoint will cost is held back as a reserve,
re-measured at every validation, so that training stops early enough for them to fit. So is
what decoding the training split again at each later resolution will cost (`ahead`): the
switch to the last phase then comes early enough for its decode and its share of training.

Every time charged to a budget is read from one clock, `now()`. Tests put a fake clock in
`clock` that moves on by a fixed amount per training step, so that what the budget logic
computes is checked without depending on how fast, or how busy, the machine is
(tests/test_budget.py); how close a real run lands to its budget is benchmarks/bench_budget.py's.
"""

from __future__ import annotations

import time


class BudgetError(ValueError):
    """A budget that cannot work: not positive, or too small for one step and one validation."""


# The clock budgets run on, in seconds. Read through now(), at call time, so that a test's
# replacement (facekd.budget.clock = fake) reaches every budget and every timing charged to one.
clock = time.monotonic


def now() -> float:
    """Seconds on the budgets' clock: what a budget's spent time and the engine's prices of
    validation, decoding and steps are measured with."""
    return clock()


# A week: a longer budget is a typo (or inf), and would never end.
MAX_BUDGET_MINUTES = 7 * 24 * 60


def check_minutes(minutes: float) -> float:
    """A --budget in minutes, refused unless positive and at most MAX_BUDGET_MINUTES (inf and nan too)."""
    if not 0 < minutes <= MAX_BUDGET_MINUTES:
        raise BudgetError(f"--budget must be a positive number of minutes, at most {MAX_BUDGET_MINUTES} "
                          f"(a week), got {minutes:g}")
    return minutes


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Budget:
    """A wall-clock allowance, started when created. `spent_before` carries the time a killed
    run had used (from its last.pt), so a resumed run spends only what is left."""

    def __init__(self, minutes: float, spent_before: float = 0.0):
        self.seconds = 60.0 * check_minutes(minutes)
        self.spent_before = spent_before
        self._t0 = now()
        self.reserve = 0.0        # seconds held back for the final validation and checkpoint
        self.ahead = 0.0          # seconds of decoding that later resolution phases will need
        # spent() when the training loop began, moved on by the decoding done since (set_aside):
        # progress counts training time from there
        self.train_start = None
        self._progress = 0.0      # the furthest progress read: it never goes back (see progress)

    @classmethod
    def from_minutes(cls, minutes: float) -> Budget | None:
        """None for 0 (no budget: fixed epochs), else a running budget."""
        return cls(minutes) if minutes else None

    def spent(self) -> float:
        return self.spent_before + now() - self._t0

    def left(self) -> float:
        return self.seconds - self.spent()

    def resume(self, spent_before: float, train_start: float | None) -> None:
        """Continue a killed run's budget: the time it used, plus what this process has used since."""
        self.spent_before += spent_before
        self.train_start = train_start

    def start_training(self) -> None:
        if self.train_start is None:
            self.train_start = self.spent()

    def set_aside(self, seconds: float) -> None:
        """`seconds` just spent inside the training loop on work that is not training (decoding
        a new resolution): progress stands still over it rather than jumping ahead."""
        if self.train_start is not None:
            self.train_start += seconds

    def progress(self) -> float:
        """0 when the training loop began, 1 when only the reserve and the decoding ahead are left.
        It never goes back: a decode that took less than was held back for it would otherwise
        move the run back into the resolution phase it has just left, and decode again."""
        start = self.train_start if self.train_start is not None else self.spent()
        window = self.seconds - self.reserve - self.ahead - start
        now = 1.0 if window <= 0 else min(1.0, max(0.0, (self.spent() - start) / window))
        self._progress = max(self._progress, now)
        return self._progress

    def used_fraction(self) -> float:
        return min(1.0, self.spent() / self.seconds)

    def describe(self) -> str:
        return f"{format_seconds(self.left())} of {format_seconds(self.seconds)} left"
