"""report.html and the comparison page in a real browser: headless Chromium driven by Selenium.

Checks what a reader would notice: errors in the console, pictures that do not decode, headline numbers that
differ from results.json, anything fetched from outside the page. Screenshots land in the test's tmp folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from transferkit.cli import main


def _need(what: str) -> None:
    # CI installs the browser (.ci/run), so there a missing one is a failure; elsewhere the test steps aside.
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing; .ci/run should have installed it")
    pytest.skip(f"{what} is not installed (apt-get install chromium chromium-driver; pip install '.[test]')")


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
    except ImportError:
        _need("selenium")
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        _need("chromium / chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    yield driver
    driver.quit()


def _viewport(driver, width: int, height: int) -> None:
    # A phone's viewport (window sizes stop at about 500 pixels); mobile: the page may not zoom out to fit.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})


def _load(driver, page: Path) -> None:
    _viewport(driver, 1280, 900)
    driver.get(page.resolve().as_uri())
    driver.get_log("browser")  # start from an empty log for this page


def _check_page(driver) -> list[dict]:
    """No console errors, every image decoded with a size, nothing fetched from outside; returns the images."""
    images = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        Promise.all([...document.images].map(img => img.decode().then(() => true, () => false))).then(decoded =>
            done([...document.images].map((img, i) => ({alt: img.alt, decoded: decoded[i],
                                                        width: img.naturalWidth, height: img.naturalHeight}))));
    """)
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    assert images and all(i["decoded"] and i["width"] > 0 and i["height"] > 0 for i in images), images
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [r for r in resources if not r.startswith("data:")] == []
    return images


def _number(driver, selector: str) -> tuple[float, str]:
    """The exact value behind a headline number and the text the reader sees."""
    element = driver.find_element("css selector", selector)
    assert element.is_displayed(), selector
    return float(element.get_attribute("data-value")), element.text


def _screenshot(driver, path: Path, width: int) -> None:
    """The whole page at `width` CSS pixels; the page must fit that width (wide tables scroll in their box)."""
    _viewport(driver, width, 900)
    assert driver.execute_script("return document.documentElement.scrollWidth") <= width
    _viewport(driver, width, driver.execute_script("return document.documentElement.scrollHeight"))
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000


def _assert_headline(driver, results: dict) -> None:
    for name, phase in results["phases"].items():
        value, text = _number(driver, f'[data-phase="{name}"][data-metric="accuracy"]')
        accuracy = phase[f"{phase['validated_on']}_accuracy"]  # val_accuracy (finetune), test_accuracy (run mnist)
        assert value == accuracy and text == f"{accuracy * 100:.2f}%"
        value, text = _number(driver, f'[data-phase="{name}"][data-metric="train_seconds"]')
        assert value == phase["train_seconds"] and text == f"{phase['train_seconds']:.1f} s"


def test_report_in_chromium(browser, split_run, tmp_path):
    results = json.loads((split_run / "results.json").read_text())
    _load(browser, split_run / "report.html")
    images = _check_page(browser)
    # accuracy and loss of 2 class groups, time bars, samples, 3 confusion matrices, misclassified
    assert len(images) == 10
    _assert_headline(browser, results)
    t, s = results["phases"]["transfer"], results["phases"]["scratch"]
    gain, text = _number(browser, '[data-metric="gain_points"]')
    assert gain == pytest.approx((t["test_accuracy"] - s["test_accuracy"]) * 100, abs=1e-12)
    assert text == f"{gain:+.2f} pts"
    speedup, text = _number(browser, '[data-metric="speedup"]')
    assert speedup == pytest.approx(s["train_seconds"] / t["train_seconds"])
    assert text == f"{max(speedup, 1 / speedup):.1f}x"  # followed by "faster" or "slower"
    assert "classifier.dense1 (Linear)" in browser.find_element("id", "phase-transfer").text
    _screenshot(browser, tmp_path / "report.png", 1280)
    _screenshot(browser, tmp_path / "report-phone.png", 390)


def test_finetune_report_in_chromium(browser, finetune_run, tmp_path):
    results = json.loads((finetune_run / "results.json").read_text())
    _load(browser, finetune_run / "report.html")
    images = _check_page(browser)
    assert len(images) == 7  # accuracy, loss, time bars, samples, 2 confusion matrices, misclassified
    _assert_headline(browser, results)
    assert browser.find_elements("css selector", '[data-metric="gain_points"]') == []  # no scratch control here
    _screenshot(browser, tmp_path / "finetune-report.png", 1280)
    _screenshot(browser, tmp_path / "finetune-report-phone.png", 390)


def test_compare_in_chromium(browser, split_run, finetune_run, tmp_path):
    page = tmp_path / "compare.html"
    main(["compare", str(split_run), str(finetune_run), "--out", str(page)])
    _load(browser, page)
    images = _check_page(browser)
    assert len(images) == 10  # validation accuracy and loss of source, transfer, scratch, frozen, unfrozen
    for i, run in enumerate((split_run, finetune_run)):
        for name, phase in json.loads((run / "results.json").read_text())["phases"].items():
            value, text = _number(browser, f'[data-run="{i}"][data-phase="{name}"][data-metric="accuracy"]')
            accuracy = phase[f"{phase['validated_on']}_accuracy"]
            assert value == accuracy and text == f"{accuracy * 100:.2f}%"
    assert "backbone" in browser.find_element("id", "differences").text
    _screenshot(browser, tmp_path / "compare.png", 1280)
    _screenshot(browser, tmp_path / "compare-phone.png", 390)


def test_study_report_in_chromium(browser, shots_study, tmp_path):
    study = json.loads((shots_study / "study.json").read_text())
    _load(browser, shots_study / "report.html")
    images = _check_page(browser)
    assert len(images) == 1  # accuracy against shots, with the intervals
    assert browser.find_element("id", "finding-list").text.splitlines() == study["findings"]
    for row in study["summary"]:
        x = "all" if row["shots"] == 0 else row["shots"]
        value, text = _number(browser, f'[data-arm="{row["arm"]}"][data-x="{row["shots"]}"][data-metric="test_accuracy"]')
        assert value == row["test_accuracy"] and text == f"{row['test_accuracy']:.4f}", x
    _screenshot(browser, tmp_path / "study.png", 1280)
    _screenshot(browser, tmp_path / "study-phone.png", 390)
