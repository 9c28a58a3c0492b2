"""A read-only dashboard over TLS, and a page that keeps every plot current as rows arrive.

The dashboard is served over HTTPS with a throw-away self-signed certificate: the page and plotly.js
come over TLS only, actions are refused (read-only), and the page, opened before the batch exists, says
it waits for the record and shows no operator panel even with a guessed token. Then the test writes a
batch record itself, step by step, through the record's own writer (``BatchRecord``,
the only writer, as ``bioimp run`` would), with an extra instrument (``pH``) and a sparse assay that are
not states: they get plots of their own. After each burst of rows the page must have *drawn* (plotly's
calcdata, not only its input) the newest point of every trace: a plot whose traces reuse their arrays is
not redrawn by ``Plotly.react`` and would freeze at its first drawing.
"""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Page, sync_playwright
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.typing import Origin

from plant_models.fedbatch_haldane import fedbatch_haldane
from tests.hil.dashboard.test_dashboard_live import CHROMIUM, CHROMIUM_ARGS, free_port, start_dashboard
from twin.batch_record import RECORD_FILE, BatchRecord, RecordConfig, RunMeta
from twin.interfaces import ControlStep, Estimate, Measurements, Reading
from twin.record import EventRow, SetpointRow

PERIOD_S = 300.0


def _record(path: Path) -> BatchRecord:
    spec = fedbatch_haldane()
    meta = RunMeta(
        operator="test", scenario_name="page_test", scenario_sha256="0" * 64,
        scenario_source="[controller]\nbudget_s = 0.5\n", software={}, model=spec.name, controller="nmpc",
        plant_endpoint="tcp://127.0.0.1:1", plant_client_id="00", plant_hello={}, states=spec.states,
        inputs=spec.inputs, params=spec.params, period_s=PERIOD_S, steps=1000,
    )  # fmt: skip
    return BatchRecord.create(path / RECORD_FILE, meta, RecordConfig(period_s=PERIOD_S))


def _write_steps(record: BatchRecord, steps: range) -> None:
    for k in steps:
        t = k * PERIOD_S
        x = np.array([1.0 + 0.01 * k, 0.5, 0.01 * k, 120.0])
        values = {name: Reading(float(v), t, k) for name, v in zip(("X_s", "S_s", "P_s", "V_s"), x, strict=True)}
        values["pH"] = Reading(7.0 - 0.001 * k, t, k)
        values["titer_assay"] = Reading(0.01 * (k // 5 * 5), (k // 5) * 5 * PERIOD_S, k // 5)  # sparse, stale
        record.measurements(k, Measurements(t, values))
        record.estimate(k, Estimate(t, x, np.array([0.5, 200.0]), np.full(4, 0.01)))
        record.control(k, t, ControlStep(np.array([0.01]), "ok", 0.001 * (1 + k % 3)))
        record.setpoint(SetpointRow(k, k + 1, t, "intended", {"inp": 0.01}))
        record.setpoint(SetpointRow(k, k + 1, t, "applied", {"inp": 0.01}))
    record.event(EventRow(steps[-1] * PERIOD_S, "deadline_miss", "controller took 0.6 s > budget 0.5 s"))


def _drawn_to_the_end(page: Page, steps: int) -> None:
    """Wait until the page holds ``steps`` steps and has drawn the newest point of every trace."""
    page.wait_for_function(
        """(steps) => { try {
            const drawnLast = (id, name) => { const d = document.getElementById(id); if (!d || !d.calcdata) return null;
                const cd = d.calcdata[d.data.findIndex(t => t.name === name)]; return cd ? cd.at(-1).x : null; };
            return data.samples['pH'].t.length === steps && data.ctl.t.length === steps
                && drawnLast('signal-pH', 'measured') === data.samples['pH'].t.at(-1)
                && drawnLast('signal-titer_assay', 'measured') === data.samples['titer_assay'].t.at(-1)
                && drawnLast('state-X_s', 'measured') === data.samples['X_s'].t.at(-1)
                && drawnLast('input-inp', 'applied') === data.sp.applied['inp'].t.at(-1)
                && drawnLast('health', 'compute') === data.ctl.t.at(-1)
                && drawnLast('health', 'deadline miss') === data.misses.at(-1);
            } catch (e) { return false; } }""",  # not all there yet
        arg=steps,
        timeout=10_000,
    )


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def _check_tls_and_read_only(url: str) -> None:
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(url, context=unverified, timeout=10) as page:
        assert page.status == 200 and b"bioimp" in page.read()
    with urllib.request.urlopen(url + "vendor/plotly.min.js", context=unverified, timeout=10) as js:
        assert len(js.read()) > 1_000_000  # plotly.js itself, from the installed package
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plain HTTP on a TLS port
        urllib.request.urlopen(url.replace("https", "http"), timeout=10)
    request = urllib.request.Request(
        url + "api/action", data=json.dumps({"op": "arm", "who": "x", "why": "y"}).encode(), method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=unverified, timeout=10)
    assert refused.value.code == 403
    assert "read-only dashboard" in json.loads(refused.value.read())["error"]
    # The websocket answers the dashboard's own page only: another site's page gets no data.
    ws_url = url.replace("https://", "wss://") + "ws"
    with pytest.raises(InvalidStatus):
        ws_connect(ws_url, ssl=unverified, origin=Origin("https://evil.example"), open_timeout=10).close()
    with ws_connect(ws_url, ssl=unverified, origin=Origin(url.rstrip("/")), open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "status"  # the record is not there yet


def test_tls_read_only_page_follows_the_growing_record(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    dash, lines = start_dashboard(
        ["--record", str(tmp_path), "--bind", f"127.0.0.1:{free_port()}", "--tls-cert", str(cert),
         "--tls-key", str(key)]
    )  # fmt: skip
    try:
        url = lines["ready"]
        assert url.startswith("https://127.0.0.1:") and "operator" not in lines
        _check_tls_and_read_only(url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_context(ignore_https_errors=True).new_page()
                page.goto(url + "?token=guess")
                page.wait_for_selector("#run-title:has-text('waiting for the batch record')")
                record = _record(tmp_path)
                page.wait_for_selector("#run-title:has-text('page_test')")
                assert page.locator("#operator").is_hidden()
                assert "Read-only view" in page.locator("#read-only").inner_text()
                for burst in (range(0, 10), range(10, 20), range(20, 40)):
                    _write_steps(record, burst)
                    _drawn_to_the_end(page, burst.stop)
                record.close()
                assert page.evaluate("() => data.samples['titer_assay'].t.length") == 8  # stale reads skipped
                assert page.locator("#signals-panel").is_visible()
            finally:
                browser.close()
    finally:
        dash.send_signal(signal.SIGINT)
        dash.wait(10)
