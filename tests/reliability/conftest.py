"""The reliability suite (`make reliability`): each test reports figures into one JSON report.

    def test_x(figures):
        figures["D1"] = {"replies": 500, "unsafe_payloads": 0}

The report is written to $RELIABILITY_REPORT (default: reliability-report.json at the repo
root) when the session ends, with each test's outcome, and printed as a table.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
_FIGURES: dict[str, Any] = {}
_OUTCOMES: dict[str, str] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A dict the test fills with its figures, keyed by the plan's ids (D1, L2, P1, ...)."""
    mine: dict[str, Any] = {}
    started = time.monotonic()
    yield mine
    for key, value in mine.items():
        if isinstance(value, dict):
            value.setdefault("test", request.node.nodeid)
            value.setdefault("seconds", round(time.monotonic() - started, 2))
        _FIGURES[key] = value


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _OUTCOMES[item.nodeid] = report.outcome


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _FIGURES and not _OUTCOMES:
        return
    path = Path(os.environ.get("RELIABILITY_REPORT", REPO / "reliability-report.json"))
    report = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "figures": dict(sorted(_FIGURES.items())),
        "outcomes": _OUTCOMES,
        "passed": sum(1 for o in _OUTCOMES.values() if o == "passed"),
        "failed": sum(1 for o in _OUTCOMES.values() if o != "passed"),
    }
    path.write_text(json.dumps(report, indent=2, default=str))
    lines = [f"reliability report: {path}"]
    for key, value in report["figures"].items():
        shown = (
            {k: v for k, v in value.items() if k not in ("test",)}
            if isinstance(value, dict)
            else value
        )
        lines.append(f"  {key:>4}  {json.dumps(shown, default=str)[:200]}")
    print("\n" + "\n".join(lines))
