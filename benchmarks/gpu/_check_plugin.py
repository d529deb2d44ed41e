"""pytest plugin of the GPU check (``check.py``): one JSON line per event, written as it happens.

Loaded with ``-p benchmarks.gpu._check_plugin`` in the pytest processes that ``check.py`` starts. It writes to the
file named by ``DNA_CHECK_EVENTS`` (nothing without it):

- ``{"event": "collected", "nodeids": [...]}`` once the selection (``-m`` / ``-k``) is final;
- ``{"event": "start", "nodeid": ...}`` before each test, so a test killed with its stage is known;
- ``{"event": "result", "nodeid", "outcome", "when", "seconds", "message"}``: ``outcome`` is passed / failed /
  skipped / timeout (the test ran past ``DNA_CHECK_TEST_TIMEOUT`` seconds and was interrupted);
- ``{"event": "figure", "nodeid", "figure"}`` for each figure a benchmark reported through ``conftest.report``
  (any conftest module's ``RESULTS`` list);
- ``{"event": "finish", "exitstatus": ...}``.

The file is flushed after each line, so whatever ran before a stage was killed is kept. ``DNA_CHECK_FIRST`` (comma
separated substrings of test ids) runs the matching tests first, in that order: the figures that matter most are
taken before a stage's budget runs out. This module imports neither torch nor dna_fast.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

_EVENTS = os.environ.get("DNA_CHECK_EVENTS")
_TIMEOUT = float(os.environ.get("DNA_CHECK_TEST_TIMEOUT", "0") or 0)
_FIRST = [s for s in os.environ.get("DNA_CHECK_FIRST", "").split(",") if s]
_config = None
_seen: dict[int, int] = {}  # id(RESULTS list) -> entries already emitted


class BudgetExceeded(Exception):
    """A test ran past its time budget (DNA_CHECK_TEST_TIMEOUT)."""


def _emit(record: dict) -> None:
    if not _EVENTS:
        return
    record["t"] = time.time()
    with open(_EVENTS, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def pytest_configure(config) -> None:
    global _config
    _config = config


def pytest_collection_modifyitems(session, config, items) -> None:
    if _FIRST:
        def rank(item) -> int:
            return next((i for i, s in enumerate(_FIRST) if s in item.nodeid), len(_FIRST))

        items.sort(key=rank)  # stable: the rest keep pytest's order


def pytest_collection_finish(session) -> None:
    _emit({"event": "collected", "nodeids": [item.nodeid for item in session.items]})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _emit({"event": "start", "nodeid": item.nodeid})
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if _TIMEOUT <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _alarm(signum, frame):
        raise BudgetExceeded(f"{item.nodeid} ran past its {_TIMEOUT:g} s budget (DNA_CHECK_TEST_TIMEOUT)")

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, _TIMEOUT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _message(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message.splitlines()[0][:300] if crash.message else ""
    return str(report.longrepr or "").strip().splitlines()[-1][:300] if report.longrepr else ""


def _new_figures(nodeid: str) -> None:
    if _config is None:
        return
    for plugin in _config.pluginmanager.get_plugins():
        results = getattr(plugin, "RESULTS", None)
        if not isinstance(results, list):
            continue
        done = _seen.get(id(results), 0)
        for fig in results[done:]:
            _emit({"event": "figure", "nodeid": nodeid, "figure": fig})
        _seen[id(results)] = len(results)


def pytest_runtest_logreport(report) -> None:
    if report.when == "call" or report.outcome != "passed":
        outcome = report.outcome
        if report.failed and "BudgetExceeded" in (report.longreprtext or ""):
            outcome = "timeout"
        _emit({"event": "result", "nodeid": report.nodeid, "when": report.when, "outcome": outcome,
               "seconds": round(report.duration, 3), "message": "" if report.passed else _message(report)})
    if report.when == "teardown":
        _new_figures(report.nodeid)


def pytest_sessionfinish(session, exitstatus) -> None:
    _emit({"event": "finish", "exitstatus": int(exitstatus)})
