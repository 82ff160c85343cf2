"""Wall-clock time of named steps, summed over repeated passes (fit and predict timing splits)."""
from __future__ import annotations

import time


class StepClock:
    """``lap(step)`` adds the time since the previous lap (or :meth:`restart`) to ``totals[step]``.

    ``totals`` keeps the step names given to the constructor, in that order, starting at 0.0;
    ``elapsed`` is the time since the clock was made.
    """

    def __init__(self, steps: tuple[str, ...]):
        self.totals = {step: 0.0 for step in steps}
        self._start = self._mark = time.perf_counter()

    def restart(self) -> None:
        """Start the next lap now (time since the last lap is not counted)."""
        self._mark = time.perf_counter()

    def lap(self, step: str) -> None:
        """Add the time since the previous lap to ``totals[step]``."""
        now = time.perf_counter()
        self.totals[step] += now - self._mark
        self._mark = now

    @property
    def elapsed(self) -> float:
        """Seconds since the clock was made."""
        return time.perf_counter() - self._start
