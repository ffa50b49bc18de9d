"""A stop signal before training begins ends the block it comes in, however the code it lands in
treats the exception (pretrain.stops)."""

import os
import signal
import threading
import time

import pytest

from pretrain import stops
from pretrain.stops import Stopped, stops_raise


@pytest.fixture(autouse=True)
def quick_redelivery(monkeypatch):
    monkeypatch.setattr(stops, "REDELIVER_S", 0.05)
    own = {sig: signal.getsignal(sig) for sig in stops.STOP_SIGNALS}
    yield
    for sig, handler in own.items():  # a block that stopped leaves them to already_stopping
        signal.signal(sig, handler)


def swallowed_stop(sig=signal.SIGTERM) -> bool:
    """fsspec's exists(), which datasets calls on each source file, catches everything: a stop that
    arrives while it runs is taken for a missing file."""
    import fsspec

    fs = fsspec.filesystem("file")
    info = fs.info

    def info_as_the_signal_comes(path, **kwargs):
        os.kill(os.getpid(), sig)  # as torchrun passes on the launcher's stop
        time.sleep(0.01)  # the handler runs here, in the library's try
        return info(path, **kwargs)

    fs.info = info_as_the_signal_comes
    try:
        return fs.exists(__file__)
    finally:
        del fs.info


def test_a_stop_a_library_swallows_still_ends_the_work_that_goes_on():
    done = []
    started = time.monotonic()
    with pytest.raises(Stopped, match="SIGTERM"), stops_raise():
        assert swallowed_stop() is False  # the library's answer: the file is not there
        for _ in range(1000):  # the rank goes on preparing its data (packing, say), 10 s
            time.sleep(0.01)
        done.append(True)
    assert not done and time.monotonic() - started < 5  # 0.05 s between redeliveries here; a loaded host is slower


def test_a_swallowed_stop_ends_the_block_where_nothing_runs_after_it():
    with pytest.raises(Stopped, match="SIGTERM"), stops_raise():
        swallowed_stop()
    assert signal.getsignal(signal.SIGTERM) is stops.already_stopping
    assert not [t for t in threading.enumerate() if t.name == "stop-redelivery"]


def test_what_fails_after_a_stop_is_reported_as_the_stop():
    """Rank 1 stopped and left the barrier rank 0 waits in: gloo raises there, and rank 0, stopped
    too, ends as stopped (one line), not with the collective's traceback."""
    with pytest.raises(Stopped, match="SIGTERM") as caught, stops_raise():
        swallowed_stop()
        raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:2978")
    assert "Connection closed by peer" in str(caught.value.__cause__)


def test_an_error_with_no_stop_is_itself():
    with pytest.raises(RuntimeError, match="Connection closed"), stops_raise():
        raise RuntimeError("Connection closed by peer")


def test_the_cleanup_a_stop_unwinds_through_is_not_cut_short():
    """A packing removes its unfinished folder as the stop unwinds; a redelivered stop must not
    raise again inside that removal."""
    cleaned = []
    with pytest.raises(Stopped), stops_raise():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        finally:
            for _ in range(30):  # 0.3 s: six redeliveries come meanwhile
                time.sleep(0.01)
            cleaned.append(True)
    assert cleaned == [True]


def test_a_swallowed_ctrl_c_ends_as_stopped_and_not_in_a_keyboard_interrupt_later():
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)  # a test worker may ignore Ctrl-C
    try:
        _ctrl_c_swallowed_then_nothing_after()
    finally:
        signal.signal(signal.SIGINT, ignored)


def _ctrl_c_swallowed_then_nothing_after():
    with pytest.raises(Stopped, match="SIGINT"), stops_raise():
        swallowed_stop(signal.SIGINT)
    for _ in range(20):  # a redelivery left pending would raise KeyboardInterrupt here
        time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is stops.already_stopping


def test_a_second_stop_as_the_first_unwinds_does_not_kill_the_process_before_it_says_why():
    """The launcher signals every rank and torchrun passes its own SIGTERM on: the second one came
    after the handlers were put back, and the rank died by SIGTERM's default action, silent (a
    stop drill's rank 0 never said why it ended; 1 run in about 30)."""
    import subprocess
    import sys

    code = (
        "import os, signal, time\n"
        "from pretrain.stops import Stopped, stops_raise\n"
        "try:\n"
        "    with stops_raise():\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(5)\n"
        "except Stopped as e:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)  # torchrun's, as the first unwinds\n"
        "    time.sleep(0.1)\n"
        "    print(f'stopped on {e}', flush=True)\n"
        "    raise SystemExit(143)\n"
    )  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout.strip()) == (143, "stopped on SIGTERM"), proc.stderr[-2000:]


def test_no_stop_no_exception_and_the_handlers_are_back():
    own = {sig: signal.getsignal(sig) for sig in stops.STOP_SIGNALS}
    with stops_raise():
        assert signal.getsignal(signal.SIGTERM) is not own[signal.SIGTERM]
    assert {sig: signal.getsignal(sig) for sig in stops.STOP_SIGNALS} == own
