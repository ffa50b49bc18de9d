"""Stop signals before training begins (preparing data, building the engine, loading the
checkpoint), when there is no step to save: the process stops where it is.

SIGTERM, SIGHUP and Ctrl-C raise ``Stopped`` where the process is. By default SIGTERM and SIGHUP
kill it mid-write, and Ctrl-C ends in a traceback; ``Stopped`` unwinds instead, and what was being
written (a packed cache, a tokenizer) is cleaned up as on any error.

An exception raised by a signal handler can be lost: it surfaces in whatever code runs, and code
that catches everything swallows it (fsspec's ``exists()``, which datasets calls as it finds a
source's files, has a bare ``except``: the stop became "Unable to find 11.txt", and the rank went
on preparing its data while the others had stopped). So a stop, once received, is delivered again
every ``REDELIVER_S`` until it ends the block; the block ends in ``Stopped`` whatever else it ended
in, since what failed after a stop (a collective another rank left as it stopped) is its consequence.

A rank gets the same stop more than once: the launcher signals every process of a node and torchrun
passes its own signal on (Slurm's scancel, too, signals every process of the step). With the
handlers put back as the stop unwound, the second SIGTERM killed the rank by its default action
before it said why it ended. So once a stop is received, the block leaves the stop signals ignored:
the process is on its way out.
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading

STOPPED_EXIT = 128 + signal.SIGTERM
"""The exit status of a run stopped on a signal (as if killed by SIGTERM), after saving its
checkpoint where training had begun."""
STOP_SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP", signal.SIGINT: "SIGINT (Ctrl-C)"}
REDELIVER_S = 0.5
"""How often a received stop is raised again until it ends the block."""


class Stopped(BaseException):
    """A stop signal before training began: there is no step to save."""


def already_stopping(_sig, _frame) -> None:
    """A stop signal after the first: the process is already ending on that one."""


@contextlib.contextmanager
def stops_raise():
    """Within the block, SIGTERM, SIGHUP and Ctrl-C raise ``Stopped``; a signal the process was
    started ignoring (nohup, a background job) stays ignored. The handlers before it are restored
    at its end, unless a stop came: then ``already_stopping`` takes the stop signals."""
    received: list[int] = []
    closing = threading.Event()

    def redeliver() -> None:  # started before any signal: a handler itself starts nothing
        while not closing.wait(REDELIVER_S):
            if received:
                _thread.interrupt_main(received[0])  # as if it came again, with no system call interrupted

    def stop(sig, _frame):
        if not received:
            received.append(sig)
        if closing.is_set() or isinstance(sys.exc_info()[1], Stopped):
            return  # the block is ending, or a cleanup runs as the stop unwinds: let it finish
        raise Stopped(STOP_SIGNALS[received[0]])

    redelivery = threading.Thread(target=redeliver, daemon=True, name="stop-redelivery")
    redelivery.start()
    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    except Stopped:
        raise
    except BaseException as e:
        if received:
            raise Stopped(STOP_SIGNALS[received[0]]) from e
        raise
    finally:
        closing.set()
        redelivery.join()  # no redelivery is left to meet the handlers restored below
        for sig, handler in previous.items():
            signal.signal(sig, already_stopping if received else handler)
    if received:  # swallowed each time until the block ended
        raise Stopped(STOP_SIGNALS[received[0]])
