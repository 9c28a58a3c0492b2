"""Simulation, estimation, the loop and its clocks, records, scenarios."""
