"""The stop handlers (tune_ct/train/stop_signals.py): SIGINT, SIGTERM and SIGHUP raise one exception with the exit
status 128 + N, a signal ignored at start stays ignored, a second signal while stopping leaves the default action,
and a deferred block finishes with the signal held. (Real searches stopped by real signals:
tests/system/test_stop_signals.py.)"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tune_ct.train.stop_signals import Stopped, stop_on_signals, stopped_by


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_each_stop_signal_raises_stopped_with_its_exit_status(sig):
    with stop_on_signals(frozenset()), pytest.raises(Stopped) as caught:
        signal.raise_signal(sig)
    assert caught.value.signum == sig and caught.value.exit_status == 128 + sig
    assert isinstance(caught.value, KeyboardInterrupt)  # the path Ctrl-C always took
    assert signal.getsignal(signal.SIGTERM) is not None  # handlers restored on the way out


def test_a_plain_keyboard_interrupt_is_a_sigint_stop():
    assert stopped_by(KeyboardInterrupt()).exit_status == 130 and stopped_by(Stopped(15)).name == "SIGTERM"


def test_a_deferred_block_finishes_and_holds_the_signal():
    done = []
    with stop_on_signals(frozenset()) as handlers:
        with handlers.deferred():
            signal.raise_signal(signal.SIGTERM)
            done.append("registered")  # the work is not cut in half
        assert handlers.held == signal.SIGTERM and done == ["registered"]


def test_a_second_signal_while_stopping_leaves_the_default_action():
    with stop_on_signals(frozenset()):
        with pytest.raises(Stopped):
            signal.raise_signal(signal.SIGTERM)
        with pytest.raises(Stopped):  # the second: raised at once, and the handlers step aside
            signal.raise_signal(signal.SIGHUP)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_signal_ignored_at_start_stays_ignored():
    """nohup and background jobs start a command with SIGHUP / SIGINT ignored: the stop handlers leave them so."""
    code = ("import signal, os, time\n"
            "from tune_ct.train.stop_signals import ignored_at_start, stop_on_signals\n"
            "ignored = ignored_at_start()\n"
            "with stop_on_signals(ignored):\n"
            "    os.kill(os.getpid(), signal.SIGHUP)\n"
            "    time.sleep(0.2)\n"
            "    print('still here', sorted(int(s) for s in ignored), flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(5)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    assert f"still here [{int(signal.SIGHUP)}]" in proc.stdout, proc.stderr
    assert "Stopped: SIGTERM" in proc.stderr  # SIGTERM was not ignored: it stopped the block


def test_during_the_trials_a_signal_asks_tune_to_stop_at_its_next_step():
    """Inside `graceful` (around Tune's fit) the first signal runs the hooks and sends SIGUSR1, the signal Ray Tune
    stops its loop on (writing a consistent experiment snapshot); a second signal raises at once."""
    asked, hooks = [], []
    previous = signal.signal(signal.SIGUSR1, lambda *_: asked.append("tune stops at its next step"))
    try:
        with stop_on_signals(frozenset()) as handlers, handlers.graceful(lambda: hooks.append("tracker told")):
            signal.raise_signal(signal.SIGTERM)
            assert handlers.requested == signal.SIGTERM and hooks == ["tracker told"]
            assert asked == ["tune stops at its next step"]
            with pytest.raises(Stopped):
                signal.raise_signal(signal.SIGHUP)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_before_tune_listens_a_signal_raises_instead():
    """SIGUSR1's default action ends the process: with Tune's handler not yet installed, the stop raises."""
    previous = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        with stop_on_signals(frozenset()) as handlers, handlers.graceful():
            with pytest.raises(Stopped):
                signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_second_search_on_one_sqlite_store_is_refused_naming_the_first(tmp_path):
    from tune_ct.search.store_lock import StoreBusyError, one_search_per_store, sqlite_files

    mlflow_db, optuna_db = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    with one_search_per_store(mlflow_db, optuna_db, ("--name", "first")):
        with pytest.raises(StoreBusyError, match=r"mlflow.db is in use by another search \(pid \d+, .*--name first"):
            with one_search_per_store(mlflow_db, None, ("--name", "second")):
                pass
        with one_search_per_store("http://127.0.0.1:5000", None, ()):  # a server takes any number of searches
            pass
    with one_search_per_store(mlflow_db, optuna_db, ()):  # released when the first search ends
        pass
    assert sqlite_files("postgresql+psycopg2://h/db", "sqlite:///:memory:") == []
