"""Ctrl-C during training (``ecgqa.training.trainer.CtrlC``): the signal only marks the run, the interrupt is raised
at the end of the step, and the usual handler is back at once (a second Ctrl-C interrupts immediately); a process
that ignores SIGINT keeps ignoring it."""

from __future__ import annotations

import os
import signal

import pytest

from ecgqa.training.trainer import CtrlC


@pytest.fixture
def python_handler():
    """Python's own SIGINT handler for the test (a background CI job may start with SIGINT ignored)."""
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, saved)


def test_ctrl_c_is_raised_at_the_step_end_and_the_handler_restored(python_handler):
    cb = CtrlC()
    cb.on_train_begin(None, None, None)
    assert signal.getsignal(signal.SIGINT) == cb._handler
    cb.on_step_end(None, None, None)  # nothing pressed: the step ends normally
    os.kill(os.getpid(), signal.SIGINT)  # delivered here, in the main thread: only marks the run
    assert cb.pending and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        cb.on_step_end(None, None, None)
    assert not cb.pending
    with pytest.raises(KeyboardInterrupt):  # the usual handler again: a second Ctrl-C interrupts at once
        os.kill(os.getpid(), signal.SIGINT)
    cb.on_train_end(None, None, None)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_run_without_ctrl_c_restores_the_handler_at_its_end(python_handler):
    cb = CtrlC()
    cb.on_train_begin(None, None, None)
    cb.on_step_end(None, None, None)
    cb.on_train_end(None, None, None)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and not cb.pending


def test_an_ignored_sigint_stays_ignored():
    saved = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cb = CtrlC()
        cb.on_train_begin(None, None, None)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        cb.on_step_end(None, None, None)  # nothing marked, nothing raised
        cb.on_train_end(None, None, None)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and not cb.pending
    finally:
        signal.signal(signal.SIGINT, saved)
