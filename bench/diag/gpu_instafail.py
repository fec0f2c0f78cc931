"""pytest plugin (`-p gpu_instafail`, bench/diag on PYTHONPATH): a failing test's report is printed
when it fails, so a GPU run cut short by its time limit still shows why."""

import pytest


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        print(f"\n=== FAILED {report.nodeid} ({report.when})\n{report.longreprtext[-4000:]}\n", flush=True)
