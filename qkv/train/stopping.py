"""Stopping a run on request. SIGINT (Ctrl-C) and SIGTERM (SLURM's scancel and time limit, ``timeout``, a laptop
shutting down) end a run at the next step boundary the way a finished run ends: a checkpoint of that step, the run
folder's lock released, one line saying what was saved. ``--resume`` then continues as after any other stop, to the
same weights as an uninterrupted run. Before, Ctrl-C lost every step since the last checkpoint and SIGTERM ended the
process where it stood, leaving the lock behind.

Under torchrun every process gets the signal (from the terminal's process group, and again from the launcher,
which passes the signal it got on to its workers) but not at the same instant; the loop agrees on stopping through
the loss all-reduce every step already makes, so all processes stop after the same step and save one checkpoint
together. The launcher ends workers that are still running 30 s later (SIGKILL): the last checkpoint stands.
"""
from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("qkv.train")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped by a signal. ``signum``: which; ``step``: the last step trained (None before the first);
    ``checkpoint``: the folder saved at that step, or None when nothing was saved (a second Ctrl-C, or a signal
    before training began). ``exit_status`` is 128 + signum, what a shell reports for a process the signal ended
    (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, *, signum: int, step: int | None = None, checkpoint=None):
        super().__init__(message)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopRequests:
    """SIGINT and SIGTERM handlers for the length of a run (installed from the main thread only: elsewhere Python
    cannot, and signals keep their handlers).

    Until ``in_loop`` is set (loading data, building the model) a signal stops at once, as it always did: no step
    is lost. In the loop the first signal is a request (``requested``), acted on at the end of the step. In a run
    of one process a second SIGINT is the user insisting: it stops at once without saving (a checkpoint being
    written is abandoned whole, see ``qkv.checkpoint.save_checkpoint``). Any other repeat only repeats the request:
    SIGTERM is the polite signal (its senders escalate with SIGKILL themselves), and under torchrun each worker gets
    a Ctrl-C twice, from the terminal and from the launcher."""

    def __init__(self, main: bool = True, world: int = 1):
        self.main = main  # the main process says what happens; the others stop quietly
        self.force_on_repeat = world == 1
        self.requested: int | None = None
        self.in_loop = False
        self._previous: dict = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        name = signal_name(signum)
        if not self.in_loop:
            raise TrainingInterrupted(f"stopped by {name} before training began; nothing was trained, nothing to "
                                      f"save", signum=signum)
        if self.requested is None:
            self.requested = signum
            if self.main:
                log.warning("%s: stopping at the end of this step to save a checkpoint%s", name,
                            " (Ctrl-C again stops at once, without saving)"
                            if signum == signal.SIGINT and self.force_on_repeat else "")
            return
        if signum == signal.SIGINT and self.force_on_repeat:
            raise TrainingInterrupted(f"stopped at once by a second {name}, without saving", signum=signum)

    def stopped(self, step: int, checkpoint, procs) -> TrainingInterrupted:
        """The exception that ends a run which stopped on request after ``step``, having saved ``checkpoint``; its
        signal is the first process's that got one (every process stops with the same status)."""
        signum = next(s for s in procs.gather(self.requested) if s is not None)
        return TrainingInterrupted(f"stopped by {signal_name(signum)} after step {step}: saved checkpoint "
                                   f"{checkpoint}; continue the run with resume=True (--resume)", signum=signum,
                                   step=step, checkpoint=checkpoint)
