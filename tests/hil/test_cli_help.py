"""Every ``bioimp`` command's ``--help`` renders: argparse formats help strings with ``%``, so a bare
"95 %" in one of them made ``bioimp --help`` die with a traceback."""

from __future__ import annotations

import argparse

import pytest

from hil.cli import build_parser


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:  # argparse has no public walk over its subcommands
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


def test_every_command_formats_its_help() -> None:
    parsers = _parsers(build_parser())
    assert len(parsers) >= 20  # the walk reached the nested commands (plant serve, record verify, ...)
    for parser in parsers:
        assert parser.format_help().startswith("usage: bioimp"), parser.prog


def test_top_level_help_exits_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    assert "calibrate model parameters" in capsys.readouterr().out
