"""``bioimp dashboard`` options: loopback by default, TLS required off loopback.

Option errors go through the real entry point (``hil.cli.main``) in this process: one line, exit 2,
nothing served. A TLS dashboard really serving is in test_dashboard_page.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hil.cli import main


def _assert_one_line_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``bioimp ARGV`` exits 2 with exactly one line, ``bioimp: error: MESSAGE...``."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"bioimp: error: {message}"), err
    assert len(err.strip().splitlines()) == 1


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
    _assert_one_line_exit_2(["dashboard", "--record", str(tmp_path / "run"), *options], message, capsys)


def test_a_port_in_use_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["dashboard", "--record", str(tmp_path), "--bind", f"127.0.0.1:{port}"]
        _assert_one_line_exit_2(argv, f"--bind 127.0.0.1:{port}: cannot listen there", capsys)


def test_default_bind_is_loopback_port_8050() -> None:
    from hil.cli import build_parser

    args = build_parser().parse_args(["dashboard", "--record", "x"])
    assert args.bind == "127.0.0.1:8050" and args.tls_cert is None and args.operator_key is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--operator-endpoint", "tcp://127.0.0.1:5570"], "--operator-endpoint needs --operator-server-key and"),
        (["--publish", "tcp://0.0.0.0:5570"], "--publish tcp://0.0.0.0:5570: plans are published on a local"),
        (
            ["--operator-endpoint", "tcp://127.0.0.1:5570", "--operator-server-key", "k", "--operator-allow", "."],
            "--operator-server-key 'k': not a readable ZeroMQ certificate",
        ),
    ],
)
def test_bad_run_console_options_are_one_line_exit_2_and_start_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    _assert_one_line_exit_2(["run", "--out", str(tmp_path / "run"), *options], message, capsys)
    assert not (tmp_path / "run").exists()
