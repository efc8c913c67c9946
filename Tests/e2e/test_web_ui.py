"""The daemon's web UI in a real browser: Debian's headless Chromium, driven by Selenium
through chromium-driver. The browser adds a download by pasting its link, watches it finish,
reads the page, and saves a screenshot (docs/images/web-ui.png when PEERSHARE_SCREENSHOT
names it, else next to the test's files)."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from test_daemon import Daemon, wait_for

selenium = pytest.importorskip("selenium", reason="python3-selenium is not installed (contrib/setup.sh installs it)")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


def chromium_driver():
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.skip("chromium and chromium-driver are not installed (contrib/setup.sh installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service
    service = Service(executable_path=shutil.which("chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def ui_url(daemon: Daemon) -> str:
    result = wait_for(lambda: (r := daemon.cli("ui")).returncode == 0 and r, 20, "the web UI address")
    url = result.stdout.strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=[0-9a-f]{64}", url), url
    return url


def test_a_browser_adds_a_download_by_its_link_and_watches_it_finish(tmp_path):
    seeder = Daemon(tmp_path / "seeder")
    fetcher = Daemon(tmp_path / "fetcher")
    driver = None
    try:
        payload = tmp_path / "holiday photos.bin"
        payload.write_bytes(os.urandom(6 * 1024 * 1024))
        shared = seeder.cli("share", str(payload))
        assert shared.returncode == 0, shared.stderr
        link = shared.stdout.strip()
        # Slow enough that the page sees it part-way (a rate to graph), fast enough for a test.
        assert seeder.cli("limit", "--max-upload", "1MB/s").returncode == 0

        driver = chromium_driver()
        driver.get(ui_url(fetcher))
        wait_for(lambda: driver.find_element(By.ID, "connection").text == "live", 20, "the event stream")

        # A malformed link is refused with a clear message, and nothing is added.
        driver.find_element(By.ID, "link-input").send_keys("peershare://this-is-not-a-link")
        driver.find_element(By.ID, "dir-input").clear()
        driver.find_element(By.ID, "dir-input").send_keys(str(tmp_path / "out"))
        driver.find_element(By.ID, "add-button").click()
        wait_for(lambda: "malformed link" in driver.find_element(By.ID, "message").text, 10, "the refusal")
        assert fetcher.items() == {}

        link_input = driver.find_element(By.ID, "link-input")
        link_input.clear()
        link_input.send_keys(link)
        driver.find_element(By.ID, "add-button").click()
        wait_for(lambda: "added as item 1" in driver.find_element(By.ID, "message").text, 10, "the download")

        # The page redraws its rows on every event: read them afresh each time, in the page.
        def row(script):
            return driver.execute_script(
                "const row = document.querySelector(\"#downloads tr[data-id='1']\"); return row && (" + script + ");")
        wait_for(lambda: row("row.dataset.state") == "downloading", 30, "the download to start")
        wait_for(lambda: row("row.dataset.state") == "seeding", 60, "the download to finish")
        time.sleep(1.2)  # one more event, so the page shows the finished state
        assert (tmp_path / "out" / payload.name).read_bytes() == payload.read_bytes()

        assert row("row.querySelector('.bar').dataset.percent") == "100"
        assert "holiday photos.bin" in row("row.textContent")
        peers = row("[...row.querySelectorAll('.peers tr')].map(r => r.textContent)")
        assert len(peers) >= 2, "no peer listed"
        assert "direct" in peers[1] and "127.0.0.1:" in peers[1], peers
        points = row("row.querySelector('svg.rate polyline').getAttribute('points')")
        assert len(points.split()) >= 2, "no rate graph"
        assert "per-peer upload" in driver.find_element(By.ID, "limits-now").text

        # Limits can be changed from the page, and the daemon takes them.
        driver.find_element(By.ID, "limit-download").send_keys("5MiB/s")
        driver.find_element(By.CSS_SELECTOR, "#limits-form button").click()
        wait_for(lambda: "download 5.0 MiB/s" in driver.find_element(By.ID, "message").text, 10, "the new limit")
        assert "download 5.0 MiB/s" in fetcher.cli("limit").stdout

        # A share of the fetcher's own, with its QR code open, for the screenshot.
        notes = tmp_path / "team notes"
        notes.mkdir()
        (notes / "plan.txt").write_text("ship it\n")
        assert fetcher.cli("share", str(notes)).returncode == 0
        own = "document.querySelector(\"#shares tr[data-id='2']\")"
        wait_for(lambda: driver.execute_script(f"return {own} && {own}.querySelector('input.link').value"), 20,
                 "the fetcher's own share")
        driver.execute_script(f"[...{own}.querySelectorAll('button')].find(b => b.textContent == 'QR').click()")
        wait_for(lambda: driver.execute_script(
            "const i = document.querySelector('#shares img.qr'); return i && i.complete && i.naturalWidth"), 10,
            "the QR code to load")
        shot = pathlib.Path(os.environ.get("PEERSHARE_SCREENSHOT", tmp_path / "web-ui.png"))
        shot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shot))
        print(f"\nweb UI screenshot: {shot}")

        # The seeder's page: its share with the link, a copy button and a QR code drawn locally.
        driver.get(ui_url(seeder))
        share = "document.querySelector(\"#shares tr[data-id='1']\")"
        wait_for(lambda: driver.execute_script(f"return {share} && {share}.querySelector('input.link').value") == link,
                 20, "the share's link")
        assert not driver.execute_script("return document.querySelector('#shares img.qr')")
        driver.execute_script(f"[...{share}.querySelectorAll('button')].find(b => b.textContent == 'QR').click()")
        wait_for(lambda: driver.execute_script(
            "const i = document.querySelector('#shares img.qr'); return i && i.complete && i.naturalWidth"), 10,
            "the QR code to load")
    finally:
        if driver:
            driver.quit()
        seeder.stop()
        fetcher.stop()


def test_the_ui_refuses_requests_without_the_token_or_from_another_origin(tmp_path):
    d = Daemon(tmp_path / "d")
    try:
        url = ui_url(d)
        base, token = url.split("/?token=")

        def request(path, method="GET", headers=None, body=None):
            req = urllib.request.Request(base + path, method=method, headers=headers or {}, data=body)
            try:
                with urllib.request.urlopen(req, timeout=10) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode()

        assert request("/")[0] == 401
        assert request("/api/state?token=" + "0" * 64)[0] == 401
        status, text = request("/api/state", headers={"Authorization": f"Bearer {token}"})
        assert status == 200 and json.loads(text)["items"] == []
        # A page on another site cannot make the browser add a download (CSRF), even with the
        # token in hand, nor reach the port through a rebinding DNS name.
        body = json.dumps({"link": "peershare://" + "ab" * 32 + "?peer=127.0.0.1:9", "directory": str(tmp_path)})
        forged = request("/api/downloads?token=" + token, "POST",
                         {"Origin": "https://evil.example", "Content-Type": "application/json"}, body.encode())
        assert forged[0] == 403
        rebound = request("/api/state?token=" + token, headers={"Host": f"evil.example:{base.rsplit(':', 1)[1]}"})
        assert rebound[0] == 403
        assert d.items() == {}
        # /metrics is on the same port, with the same token.
        status, text = request("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert status == 200
    finally:
        d.stop()
