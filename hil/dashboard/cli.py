"""``bioimp dashboard``: argument parsing (being built)."""

from __future__ import annotations

import argparse


def add_dashboard_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bioimp dashboard``."""
    sub.add_parser("dashboard", help="live operator view of a running batch (being built)")
