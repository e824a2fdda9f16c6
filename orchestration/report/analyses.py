"""The parts of a study's report, in the order they run: each is ``analysis(context) -> files``.

Adding one is a module with an ``analysis`` function (``recon.orchestration.report.context``) and one
line here. Order matters only where a part reads what an earlier one shared: the tables mark the
comparisons the significance tests found not significant; the error browser shows the pilot pairs and the
predictions that flip under a test view (read by name_reliance).
"""
from __future__ import annotations

from recon.orchestration.report import error_browser, name_leak, name_reliance, pilot, plots, significance, tables
from recon.orchestration.report.context import Analysis

ANALYSES: tuple[Analysis, ...] = (
    significance.analysis,
    tables.analysis,
    plots.analysis,
    pilot.analysis,
    name_leak.analysis,
    name_reliance.analysis,
    error_browser.analysis,
)

__all__ = ["ANALYSES"]
