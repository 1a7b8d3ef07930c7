"""Progress bars of the long stages (ingest, fit, scores, groups, validation), in a
terminal and in Jupyter: the one owner of how progress is shown.

Bars are off in a library until asked for: :func:`enable` (the CLI calls it when stderr is
a terminal and ``--quiet`` is not given; :func:`rifscale.show_progress` in a notebook or
script). A Jupyter kernel gets one HTML bar updated in place under the cell (IPython's
display handles: no widget library needed); elsewhere a bar is one line redrawn in place
on the stream given to :func:`enable` (the CLI: stderr, so stdout stays clean for pipes),
and only when that stream is a terminal: a log file never fills with redraws. Updates are
drawn at most :data:`REFRESH` seconds apart, a bar always draws its final state, and
:class:`LogHandler` writes log lines above a bar instead of through it.

Dask work is followed by the tasks it finishes: on dask's local schedulers with a
callback of that one computation, on a distributed client by the scheduler's count of
the tasks leading to the persisted result.
"""

from __future__ import annotations

import functools
import html
import logging
import math
import sys
import threading
import time

import dask
from dask.base import unpack_collections
from dask.callbacks import Callback

#: Seconds between two redraws of a bar.
REFRESH = 0.1
WIDTH = 30

_enabled = False
_stream = None  # where enabled bars are drawn outside Jupyter (None: sys.stderr)
_drawn_line: dict = {}  # stream -> the bar line on it now (log lines clear and redraw it)
_lock = threading.RLock()  # bar redraws and log lines, from any thread


def enable(on: bool = True, stream=None) -> None:
    """Show progress bars (or stop showing them); outside Jupyter they are drawn on
    ``stream`` (default stderr) when it is a terminal."""
    global _enabled, _stream
    _enabled, _stream = bool(on), stream


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's ZMQ shell), never importing IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class _Terminal:
    def __init__(self, stream=None):
        self.stream = stream or sys.stderr

    def draw(self, label: str, fraction: float | None, text: str, final: bool) -> None:
        if fraction is None:
            line = f"{label}: {text}"
        else:
            filled = int(WIDTH * fraction)
            line = f"{label} [{'#' * filled}{' ' * (WIDTH - filled)}] {100 * fraction:3.0f}% {text}"
        line = line.rstrip()
        with _lock:
            self.stream.write("\r" + line.ljust(len(_drawn_line.get(self.stream, ""))))
            if final:
                self.stream.write("\n")
                _drawn_line.pop(self.stream, None)
            else:
                _drawn_line[self.stream] = line
            self.stream.flush()


class _Notebook:
    def __init__(self):
        from IPython.display import HTML, display

        self.HTML = HTML
        self.handle = display(HTML(""), display_id=True)

    def draw(self, label: str, fraction: float | None, text: str, final: bool) -> None:
        bar = "" if fraction is None else (
            f"<progress value='{fraction:.4f}' max='1' style='width:16em;vertical-align:middle'></progress> "
            f"{100 * fraction:3.0f}% ")
        self.handle.update(self.HTML(f"<div style='font-family:monospace'><b>{html.escape(label)}</b> {bar}"
                                     f"{html.escape(text)}</div>"))


class Bar:
    """One stage's bar: ``update(done, total)`` or ``update(fraction=f)``, then ``close``.
    Use it as a context manager. ``show``: None follows :func:`enable`, True always, False
    never; a bar not shown does nothing. ``stream``: draw there (as text) whatever it is;
    by default in Jupyter as HTML, else on :func:`enable`'s stream if it is a terminal."""

    def __init__(self, label: str, total: int | None = None, *, show: bool | None = None, stream=None):
        self.label, self.total = label, total
        self.active = _enabled if show is None else bool(show)
        self.done, self.fraction, self.text, self._drawn = 0, None, "", 0.0
        self.t0 = time.perf_counter()
        self.view = None
        if self.active and stream is not None:
            self.view = _Terminal(stream)
        elif self.active and in_notebook():
            self.view = _Notebook()
        elif self.active and _isatty(_stream or sys.stderr):
            self.view = _Terminal(_stream or sys.stderr)
        self.active = self.view is not None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(failed=exc_type is not None)

    def update(self, done: int | None = None, total: int | None = None, *, fraction: float | None = None,
               text: str = "") -> None:
        if not self.active:
            return
        if total is not None:
            self.total = total
        if done is not None:
            self.done = done
        if fraction is not None:
            self.fraction = min(max(fraction, 0.0), 1.0)
        elif self.total:
            self.fraction = min(self.done / self.total, 1.0)
        self.text = text
        now = time.perf_counter()
        if now - self._drawn >= REFRESH:
            self._drawn = now
            self._draw(final=False)

    def close(self, *, failed: bool = False) -> None:
        if not self.active or self.view is None:
            return
        if not failed and (self.total or self.fraction is not None):
            self.fraction = 1.0
            if self.total:
                self.done = self.total
        self._draw(final=True, failed=failed)
        self.view = None

    def _draw(self, *, final: bool, failed: bool = False) -> None:
        count = f"{self.done}/{self.total}" if self.total else ""
        seconds = f"{time.perf_counter() - self.t0:.1f} s"
        text = " ".join(t for t in (count, self.text, seconds, "(stopped)" if failed else "") if t)
        self.view.draw(self.label, self.fraction, text, final)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no such method, or closed
        return False


class _TaskCounter(Callback):
    """A dask local-scheduler callback moving a bar as tasks finish."""

    def __init__(self, bar: Bar):
        super().__init__()
        self.bar = bar

    def _start_state(self, dsk, state):
        self.total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self.bar.update(len(state["finished"]), self.total)

    def _posttask(self, key, result, dsk, state, worker_id):
        self.bar.update(len(state["finished"]), self.total)


class LogHandler(logging.StreamHandler):
    """A stream handler that keeps a bar on the same terminal intact: the record is
    written on a cleared line and the bar is drawn again below it."""

    def emit(self, record):
        with _lock:
            line = _drawn_line.get(self.stream)
            if line is None:
                return super().emit(record)
            self.stream.write("\r" + " " * len(line) + "\r")
            super().emit(record)
            self.stream.write(line)
            self.stream.flush()


def compute(*collections, label: str, show: bool | None = None, **kwargs):
    """``dask.compute(*collections, **kwargs)`` with a bar of the finished tasks when
    progress is shown (``show`` as for :class:`Bar`). With a distributed client (and no
    local ``scheduler=`` asked for) the bar follows the scheduler's count of the tasks
    leading to the persisted collections."""
    from .cluster import current_client

    with Bar(label, show=show) as bar:
        if not bar.active:
            return dask.compute(*collections, **kwargs)
        client = current_client() if "scheduler" not in kwargs else None
        if client is None:
            # this computation's own callback (a `with Callback()` would see every thread's)
            return dask.compute(*collections, callbacks=[_TaskCounter(bar)._callback], **kwargs)
        from distributed import futures_of

        found, repack = unpack_collections(*collections)  # dicts, lists, tuples of collections
        persisted = client.persist(list(found))
        futures = futures_of(persisted)
        if futures:  # returns when they are done
            _cluster_tasks_class()(futures, bar=bar, scheduler=client.scheduler.address)
        return repack(dask.compute(*persisted, **kwargs))


@functools.cache
def _cluster_tasks_class():
    """Defined on first use, so that importing rifscale does not import distributed."""
    from distributed.diagnostics.progressbar import TextProgressBar

    class ClusterTasks(TextProgressBar):
        """The scheduler's count of the tasks leading to some futures (all of them, also
        those finished already), drawn on a :class:`Bar`; returns when they are done."""

        def __init__(self, futures, *, bar: Bar, scheduler):
            self.bar = bar
            super().__init__(futures, scheduler=scheduler, interval="100ms")

        def _draw_bar(self, remaining, all, **kwargs):
            self.bar.update(all - remaining, all)

        def _draw_stop(self, **kwargs):
            pass

    return ClusterTasks


def newton_fraction(rel: float, tol: float) -> float:
    """How far a Newton fit is on a log scale: 0 at a relative gradient of 1, 1 at ``tol``."""
    if not rel > 0 or not 0 < tol < 1:
        return 1.0 if rel == 0 else 0.0
    return min(max(math.log(rel) / math.log(tol), 0.0), 1.0)
