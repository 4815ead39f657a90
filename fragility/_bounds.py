"""Every command ends: Ctrl-C works even inside HDF5's C code, and a store operation has a deadline.

While HDF5's C code runs, h5py holds the GIL, so no Python signal handler and no Python thread of this
process can act: a damaged file that stalls HDF5 would also make Ctrl-C and any in-process timer useless.
Both bounds therefore live in a small **helper process** started with the command:

* the command marks each operation on a store's files (opening and validating one file, one read of rows,
  one block of ``verify``/``repair``: :func:`fragility.store._hdf5.guard`); one that runs past
  ``FRAGILITY_IO_TIMEOUT`` seconds (default 60) makes the helper print a one-line error and end the command;
* Python's C-level signal handler writes every signal to a wakeup pipe at once, GIL or not; the helper
  reads it, and if the command's Python handler has not acknowledged Ctrl-C within a second (the main
  thread is stuck in C code) it prints ``interrupted`` and ends the command.

The helper ends the command with SIGKILL (exit status 137 in a shell): the only signal a stuck process
cannot defer. What the command wrote before stays as a killed writer leaves it — readable, by design.
The helper exits by itself when the command does (its pipe closes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import SelectionError
from .store import _hdf5

#: seconds one operation on a store's files may take before the command is ended (FRAGILITY_IO_TIMEOUT)
DEFAULT_IO_TIMEOUT = 60.0
#: how long the main thread has to act on Ctrl-C before it counts as stuck in C code (commands that train
#: get longer: one CPU training step can take seconds, and a clean KeyboardInterrupt beats a kill)
GRACE_S = 1.0
TRAINING_GRACE_S = 10.0

_HELPER = r"""
import os, select, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the whole group: the command decides
parent, grace, seconds, sigs = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
msgs = 0
buf, deadline, what, interrupted = b"", None, "", None

def end(text):
    os.write(2, text.encode("utf-8", "replace") + b"\n")
    try:
        os.kill(parent, signal.SIGKILL)
    finally:
        os._exit(0)

while True:
    now = time.monotonic()
    waits = [t for t in (deadline, None if interrupted is None else interrupted + grace) if t is not None]
    ready, _, _ = select.select([msgs, sigs], [], [], max(0.0, min(waits) - now) if waits else None)
    now = time.monotonic()
    if sigs in ready:
        data = os.read(sigs, 512)
        if signal.SIGINT in data and interrupted is None:
            interrupted = now
    if msgs in ready:
        data = os.read(msgs, 65536)
        if not data:
            os._exit(0)  # the command ended
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            kind, _, rest = line.decode("utf-8", "replace").partition(" ")
            if kind == "begin":
                deadline, what = now + seconds, rest
            elif kind == "end":
                deadline = None
            elif kind == "handled":
                interrupted = None
    if deadline is not None and now >= deadline:
        end(f"error: {what} did not finish within {seconds:g} s: HDF5 is stuck on a damaged file (run `fragility verify` "
            f"on the store, then `fragility repair`), or the disk is that slow (raise FRAGILITY_IO_TIMEOUT)")
    if interrupted is not None and now >= interrupted + grace:
        end("interrupted")
"""


def io_timeout() -> float:
    """``FRAGILITY_IO_TIMEOUT`` in seconds (default 60), or a one-line error."""
    raw = os.environ.get("FRAGILITY_IO_TIMEOUT", "")
    if not raw:
        return DEFAULT_IO_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise SelectionError(f"FRAGILITY_IO_TIMEOUT={raw!r:.40} must be a positive number of seconds (default {DEFAULT_IO_TIMEOUT:g})")
    return value


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


class _Helper:
    """The command's side of the helper process: ``begin``/``end`` of guarded operations, Ctrl-C seen."""

    def __init__(self, seconds: float, grace: float = GRACE_S) -> None:
        sig_r, self.sig_w = os.pipe()
        os.set_blocking(self.sig_w, False)  # the C-level handler must never block
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _HELPER, str(os.getpid()), repr(grace), repr(seconds), str(sig_r)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, pass_fds=(sig_r,),
        )
        os.close(sig_r)
        self.lock = threading.Lock()

    def _send(self, line: str) -> None:
        with self.lock:
            try:
                self.proc.stdin.write((line + "\n").encode("utf-8", "replace"))
                self.proc.stdin.flush()
            except OSError:
                pass  # the helper is gone: the command goes on unbounded rather than failing

    def begin(self, what: str) -> None:
        self._send("begin " + _printable(what))

    def end(self) -> None:
        self._send("end")

    def handled(self) -> None:
        self._send("handled")

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait()
        os.close(self.sig_w)


@contextmanager
def bounded(grace: float = GRACE_S) -> Iterator[None]:
    """Run a command with the helper watching. Only in a process's main thread; Ctrl-C only where SIGINT is
    Python's default (a host that handles or ignores it itself keeps doing so). ``grace``: seconds the main
    thread has to act on Ctrl-C before the helper ends the command."""
    seconds = io_timeout()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        helper = _Helper(seconds, grace)
    except OSError:  # no interpreter to start (an embedded Python): the command runs unwatched
        yield
        return
    ours = signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def on_sigint(signum, frame):  # runs in the main thread once it is back in Python
        helper.handled()
        raise KeyboardInterrupt

    if ours:
        old_fd = signal.set_wakeup_fd(helper.sig_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGINT, on_sigint)
    _hdf5.arm(helper)
    try:
        yield
    finally:
        _hdf5.arm(None)
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.set_wakeup_fd(old_fd)
        helper.close()
