"""A stop asked for by a signal: raised at once, and again by the loop if Python lost it.

The command line's handler (``cli.py``) raises :class:`Terminated` where the signal
lands. Python drops an exception raised while the main thread runs a weakref callback
or a ``__del__`` (it prints "Exception ignored in ..."), which TensorFlow's eager code
does all the time, so the request is also recorded and the optimisation loops raise it
at their next step: a stop is never lost, and it always reaches the loop's own handler,
which keeps the best image. :func:`quiet_lost_stops` keeps Python from printing a
traceback for the dropped copy, so the console shows the one "stopped by" line. Imports
nothing heavy, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

_requested: list[int] = []
_deferring: list[int] = [0]  # depth of deferred() blocks the main thread is in


class Terminated(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP, raised as Ctrl-C would be, so the run stops the same way."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def request(signum: int) -> Terminated:
    """Record a stop asked for by ``signum``; the exception to raise for it now."""
    _requested.append(signum)
    return Terminated(signum)


def signalled(signum: int) -> None:
    """What a signal handler does: record the stop and raise it, unless the main thread is
    in a :func:`deferred` block, which raises it on leaving."""
    stop = request(signum)
    if not _deferring[0]:
        raise stop


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within: a stop is recorded, not raised; one asked for meanwhile is raised on leaving
    (the loops also raise a recorded one at their next step). For writes to the tracking
    store, which must not be cut half-way: an SQLite transaction interrupted by the
    signal's exception kept the store locked, and the run could then record neither its
    best image nor its end (seen in CI: "database is locked", the run ending FAILED)."""
    before = len(_requested)
    _deferring[0] += 1
    try:
        yield
    finally:
        _deferring[0] -= 1
    if not _deferring[0] and len(_requested) > before:  # asked for meanwhile
        raise Terminated(_requested[-1])


def raise_if_requested() -> None:
    """Raise the recorded stop (once one was asked for, every call raises it)."""
    if _requested:
        raise Terminated(_requested[0])


def as_stop(error: BaseException) -> KeyboardInterrupt | None:
    """``error`` as the stop it stands for, or None: Ctrl-C or a :class:`Terminated` itself,
    or, when a stop was asked for, any other exception, since code that catches the
    signal's exception (native code calling back into Python, a library's clean-up) may
    raise something else in its place; the stop is then the one recorded."""
    if isinstance(error, KeyboardInterrupt):
        return error
    if _requested and isinstance(error, Exception):
        return Terminated(_requested[0])
    return None


def requested() -> tuple[int, ...]:
    """The signals whose stops were asked for, in order (for a process that goes on after
    a job: the resident worker tells a signal sent to it from one it relayed)."""
    return tuple(_requested)


def clear() -> None:
    """Forget the recorded stop: for a process that goes on after one (tests)."""
    _requested.clear()


def quiet_lost_stops() -> None:
    """Print nothing for a stop Python dropped (it was recorded): other losses as before."""
    previous = sys.unraisablehook
    if getattr(previous, "quiets_lost_stops", False):  # a process that runs many jobs
        return

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if not isinstance(unraisable.exc_value, Terminated):
            previous(unraisable)

    hook.quiets_lost_stops = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
