"""``bioimp dashboard`` options: loopback by default, TLS required off loopback, read-only without a key.

Option errors go through the real entry point (``hil.cli.main``) in this process: one line, exit 2,
nothing served. The TLS test starts the real server process with a throw-away self-signed certificate.
"""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from hil.cli import main
from tests.hil.dashboard.test_dashboard_live import CHROMIUM, CHROMIUM_ARGS, free_port, start_dashboard


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--bind", "0.0.0.0:8050"], "--bind 0.0.0.0:8050: a non-loopback address needs --tls-cert and --tls-key"),
        (["--bind", "192.0.2.7:8050"], "--bind 192.0.2.7:8050: a non-loopback address needs --tls-cert"),
        (["--bind", "plant-pc:8050"], "--bind plant-pc:8050: a non-loopback address needs --tls-cert"),
        (["--bind", "[::]:8050"], "--bind [::]:8050: a non-loopback address needs --tls-cert"),
        (["--bind", "0.0.0.0:8050", "--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (
            ["--bind", "0.0.0.0:8050", "--tls-cert", "no.pem", "--tls-key", "no.key"],
            "--tls-cert 'no.pem': no such file",
        ),
        (["--bind", "8050"], "--bind '8050': expected HOST:PORT"),
        (["--bind", "127.0.0.1:99999"], "--bind '127.0.0.1:99999': expected HOST:PORT"),
        (["--stale-after", "-1"], "--stale-after must be a positive number of seconds"),
        (["--operator-endpoint", "tcp://127.0.0.1:5570"], "operator mode needs --operator-endpoint, --operator-key"),
        (
            ["--operator-endpoint", "tcp://127.0.0.1:5570", "--operator-key", "k", "--operator-server-key", "s"],
            "--operator-key 'k': not a readable ZeroMQ certificate",
        ),
    ],
)
def test_bad_options_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    code = main(["dashboard", "--record", str(tmp_path / "run"), *options])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"bioimp: error: {message}"), err
    assert len(err.strip().splitlines()) == 1


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls_read_only_dashboard_serves_the_page_and_refuses_actions(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    dash, lines = start_dashboard(
        ["--record", str(tmp_path / "no-run-yet"), "--bind", f"127.0.0.1:{free_port()}",
         "--tls-cert", str(cert), "--tls-key", str(key)]
    )  # fmt: skip
    try:
        url = lines["ready"]
        assert url.startswith("https://127.0.0.1:") and "operator" not in lines
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

        with sync_playwright() as p:  # the page itself: no operator panel, says it is read-only, waits
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_context(ignore_https_errors=True).new_page()
                page.goto(url + "?token=guess")
                page.wait_for_selector("#run-title:has-text('waiting for the batch record')")
                assert page.locator("#operator").is_hidden()
            finally:
                browser.close()
    finally:
        dash.send_signal(signal.SIGINT)
        dash.wait(10)


def test_default_bind_is_loopback_port_8050() -> None:
    from hil.cli import build_parser

    args = build_parser().parse_args(["dashboard", "--record", "x"])
    assert args.bind == "127.0.0.1:8050" and args.tls_cert is None and args.operator_key is None
