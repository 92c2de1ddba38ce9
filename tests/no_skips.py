"""A pytest plugin: with ``STYLE_EXP_NO_SKIPS=1`` (set by ``.ci/run``) a skip is a failure.

CI installs every component (PostgreSQL, Chromium, Ray, the shared images), so a test
that skips there is a guard that did not run: a missing browser or package must turn
CI red, not quietly thin the suite.
"""

import os

import pytest

NO_SKIPS = os.environ.get("STYLE_EXP_NO_SKIPS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, but STYLE_EXP_NO_SKIPS=1 demands every test run: {reason}"
