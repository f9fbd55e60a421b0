"""The operator's view of a running ``bpr serve`` that analyzed a real series.

Every endpoint is called over HTTP: ``/healthz``, ``/metrics`` (checked with Prometheus' own
text-format parser), the series list and detail pages and the curve PNG. The pages are then
rendered in headless Chromium (Selenium with Debian's ``chromium-driver``): the corrected term
and the loaded curve image must be visible, and a screenshot is kept under
``$BPR_ARTIFACTS`` (default ``artifacts/``) for CI. Patient names and IDs stay masked, and a
bearer token guards everything but ``/healthz``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from dicom_node.index import Index, Series, SeriesState
from tests.needs import missing
from tests.node_harness import (
    free_port,
    real_ct_series,
    running_node,
    storescu,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.usefixtures("shared_data"), pytest.mark.requires_tool("storescu")]

PATIENT_ID = "WEB-PATIENT-4711"
TOKEN = "s3cret-token"
ARTIFACTS = Path(os.environ.get("BPR_ARTIFACTS", "artifacts"))


@dataclass
class Site:
    base: str
    series_pk: int
    term: str
    instances: int


def _get(url: str, token: str | None = TOKEN) -> tuple[int, bytes, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("web")
    port, web_port = free_port(), free_port()
    config = write_config(folder, port, web={"port": web_port, "bearer_token": TOKEN})
    files = real_ct_series(folder / "in", "openkbp_pt_15", pixel_step=2,
                           patient_id=PATIENT_ID)
    index = Index(f"sqlite:///{folder / 'index.sqlite'}")
    with running_node(config, port):
        assert storescu(port, files).returncode == 0

        def analyzed() -> bool:
            with index.session() as session:
                return session.scalar(select(Series.id).where(
                    Series.state == SeriesState.DONE, Series.is_derived.is_(False))) is not None

        wait_for(analyzed, 120, "the analysis")
        with index.session() as session:
            series = session.scalars(select(Series).where(Series.is_derived.is_(False))).one()
            pk, term = series.id, str(series.corrected_body_part)
        index.close()
        yield Site(f"http://127.0.0.1:{web_port}", pk, term, len(files))


def test_healthz_checks_listener_database_and_storage(site: Site) -> None:
    status, body, kind = _get(f"{site.base}/healthz", token=None)
    assert status == 200 and kind.startswith("application/json")
    health = json.loads(body)
    assert health["status"] == "ok"
    assert {k: v["ok"] for k, v in health["checks"].items()} == {
        "dicom_listener": True, "database": True, "storage": True}


def test_metrics_parse_and_count_what_happened(site: Site) -> None:
    status, body, kind = _get(f"{site.base}/metrics")
    assert status == 200 and kind.startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode())
               for s in family.samples}
    assert samples[("bpr_instances_total", (("outcome", "stored"), ("status", "0x0000")))] \
        == site.instances
    assert samples[("bpr_series", (("state", "DONE"),))] == 1
    assert samples[("bpr_analysis_seconds_count", ())] == 1
    assert ("bpr_forward_jobs", (("state", "PENDING"),)) in samples
    assert samples[("bpr_storage_free_bytes", ())] > 0
    assert samples[("bpr_adaptation_runs", (("promoted", "true"),))] == 0
    assert ("bpr_backfill_jobs", (("state", "FAILED"),)) in samples


def test_pages_show_the_series_and_mask_the_patient(site: Site) -> None:
    status, page, _kind = _get(f"{site.base}/")
    text = page.decode()
    assert status == 200 and site.term in text and "DONE" in text
    assert PATIENT_ID not in text and "•••" in text
    status, detail, _kind = _get(f"{site.base}/series/{site.series_pk}")
    assert status == 200 and site.term in detail.decode() and "curve.png" in detail.decode()
    status, png, kind = _get(f"{site.base}/series/{site.series_pk}/curve.png")
    assert status == 200 and kind == "image/png" and png.startswith(b"\x89PNG")
    filtered = _get(f"{site.base}/?term=PELVIS&state=DONE")[1].decode()
    assert "0 series" in filtered
    assert _get(f"{site.base}/series/999999")[0] == 404


def test_everything_but_health_needs_the_token(site: Site) -> None:
    for path in ("/", "/metrics", f"/series/{site.series_pk}"):
        assert _get(f"{site.base}{path}", token=None)[0] == 401
        assert _get(f"{site.base}{path}", token="wrong")[0] == 401
    basic = base64.b64encode(b"user:pw").decode()
    request = urllib.request.Request(f"{site.base}/")
    request.add_header("Authorization", f"Basic {basic}")
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(request, timeout=30)


def _chrome() -> object:
    driver_path = shutil.which("chromedriver")
    browser = shutil.which("chromium")
    if driver_path is None or browser is None:
        missing("headless Chromium needs Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_a_real_browser_shows_the_term_and_the_curve(site: Site) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    driver = _chrome()
    assert isinstance(driver, WebDriver)
    try:
        # the browser sends the token the way a reverse proxy would add it
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                               {"headers": {"Authorization": f"Bearer {TOKEN}"}})
        driver.get(f"{site.base}/")
        row = driver.find_element(By.ID, f"series-{site.series_pk}")
        assert site.term in row.text and PATIENT_ID not in driver.page_source
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "web-series-list.png"))
        row.find_element(By.TAG_NAME, "a").click()
        assert driver.find_element(By.ID, "term").text == site.term
        curve = driver.find_element(By.ID, "curve")
        wait_for(lambda: bool(driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", curve)), 30,
            "the curve image to load")
        width = driver.execute_script("return arguments[0].naturalWidth", curve)
        assert isinstance(width, int) and width > 500
        driver.save_screenshot(str(ARTIFACTS / "web-series-detail.png"))
    finally:
        driver.quit()
    assert (ARTIFACTS / "web-series-detail.png").stat().st_size > 10_000
