"""`.ci/run` turns skips into failures: the plugin must do so there and only there."""

import os
import subprocess
import sys

import pytest
from conftest import PROJECT

SUITE = '''
import pytest

def test_needs_a_browser():
    pytest.skip("chromium not installed")

def test_runs():
    pass

@pytest.mark.xfail(reason="known")
def test_expected_to_fail():
    assert False
'''


@pytest.mark.parametrize(("no_skips", "code", "summary"), [
    ("1", 1, "1 failed, 1 passed, 1 xfailed"),
    ("0", 0, "1 passed, 1 skipped, 1 xfailed"),
])
def test_a_skip_fails_only_where_every_test_must_run(tmp_path, no_skips, code, summary):
    (tmp_path / "test_suite.py").write_text(SUITE)
    env = {**os.environ, "STYLE_EXP_NO_SKIPS": no_skips,
           "PYTHONPATH": str(PROJECT / "tests")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no_skips", "-q", "-p", "no:cacheprovider",
         "-c", os.devnull, str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stdout
    assert summary in done.stdout.splitlines()[-1]
    if no_skips == "1":
        assert "demands every test run: Skipped: chromium not installed" in done.stdout
