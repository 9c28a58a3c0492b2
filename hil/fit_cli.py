"""``bioimp fit``: argument parsing (being built)."""

from __future__ import annotations

import argparse


def add_fit_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bioimp fit``."""
    sub.add_parser("fit", help="calibrate model parameters from batch data (being built)")
