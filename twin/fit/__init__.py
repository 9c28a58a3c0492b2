"""Calibrating the twin from batch data: parameter estimation with confidence (``bioimp fit``)."""
