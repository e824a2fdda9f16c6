"""Headless Debian Chromium through Selenium, for the browser tests (dashboard, error browser).

The README's test command installs ``chromium`` and ``chromium-driver``, so under CI a missing
browser is a failure, not a skip; nothing here downloads a browser build.
"""
from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def chromium_driver(window_size: str, *, performance_log: bool = False):
    """A headless Chrome WebDriver on the system browser (skips locally, fails under CI without it)."""
    if not (CHROMIUM and DRIVER):
        (pytest.fail if os.environ.get("CI") else pytest.skip)("Debian chromium / chromium-driver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={window_size}"):
        options.add_argument(arg)
    if performance_log:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=options)
