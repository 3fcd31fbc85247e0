"""How a command that trains is told to stop: SIGINT (Ctrl-C), SIGTERM (Slurm at a time limit, Kubernetes on
eviction, systemd, `timeout`) and SIGHUP (the terminal went away) all become one exception, `Stopped`, raised in
the main thread, so every one of them takes the same clean way out; the command then exits 128 + the signal's
number.

A signal that was ignored when the process started stays ignored (the convention for background jobs and
`nohup`). `ray.init` installs its own SIGTERM handler (it calls sys.exit), so the handlers are installed after it.
During Ray Tune's fit the first signal asks Tune to stop at its next step (`graceful`), so the experiment snapshot
that --resume restores is consistent. A second signal while the first stop is being carried out raises at once and
leaves the default action for any further one. Around work that must not be cut in half (the final test and
registration), `deferred` holds a signal: the work finishes, and the caller finds the signal in `held`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """The process was told to stop by a signal. A KeyboardInterrupt, so Ctrl-C and the others share one path."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def stopped_by(exc: KeyboardInterrupt) -> Stopped:
    """A plain KeyboardInterrupt (Python's own SIGINT handler) as the Stopped it means."""
    return exc if isinstance(exc, Stopped) else Stopped(signal.SIGINT)


def ignored_at_start() -> frozenset[int]:
    """The stop signals this process inherited as ignored; call it before anything installs a handler."""
    return frozenset(s for s in STOP_SIGNALS if signal.getsignal(s) == signal.SIG_IGN)


class StopHandlers:
    """Handlers that raise Stopped. Inside `graceful()` (the trials: Ray Tune's loop) the first signal only asks
    Tune to stop at its next step, so it writes a consistent experiment snapshot (a trial's latest checkpoint can
    be pruned between two snapshots) and returns; the signal is then in `requested`. Inside `deferred()` a signal
    is only recorded in `held`. A second signal raises at once and leaves the default action for any further one."""

    def __init__(self, ignored: frozenset[int]):
        self.ignored = ignored
        self.requested: int | None = None  # the signal that asked Tune to stop (graceful)
        self.held: int | None = None  # the signal that came during a deferred block
        self._graceful_hooks: list[Callable[[], None]] | None = None
        self._defer = 0

    def _handle(self, signum: int, _frame) -> None:
        if self._defer:
            self.held = self.held or signum
            return
        if self.requested is None and self._graceful_hooks is not None and _tune_listens():
            self.requested = signum
            for hook in self._graceful_hooks:
                hook()
            os.kill(os.getpid(), signal.SIGUSR1)  # Ray Tune's own graceful stop (tune.py, _setup_signal_catching)
            return
        if self.requested is not None:  # a second signal: stop this stop at once, and step aside for the next
            for s in STOP_SIGNALS:
                if s not in self.ignored:
                    signal.signal(s, signal.SIG_DFL)
        self.requested = self.requested or signum
        raise Stopped(signum)

    @contextmanager
    def graceful(self, *hooks: Callable[[], None]) -> Iterator[None]:
        """Around Ray Tune's fit: a first signal runs `hooks`, asks Tune to stop and lets fit return."""
        self._graceful_hooks = list(hooks)
        try:
            yield
        finally:
            self._graceful_hooks = None

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A signal that arrives inside the block does not interrupt it; it is left in `held`."""
        self._defer += 1
        try:
            yield
        finally:
            self._defer -= 1


def _tune_listens() -> bool:
    """Whether Ray Tune's loop has its SIGUSR1 handler in place (not before tune.run installs it: SIGUSR1's
    default action would end the process)."""
    return signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)


@contextmanager
def stop_on_signals(ignored: frozenset[int]) -> Iterator[StopHandlers]:
    """Install the stop handlers for the block (not for signals ignored at start); restore the old ones after."""
    handlers = StopHandlers(ignored)
    previous = {s: signal.signal(s, handlers._handle) for s in STOP_SIGNALS if s not in ignored}
    try:
        yield handlers
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
