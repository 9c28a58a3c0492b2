"""Offline tuning studies: many closed-loop batches over settings and Monte Carlo plants.

``bioimp sweep SWEEP.toml`` reads a sweep file (:mod:`twin.sweep.config`), expands it into cases
(:mod:`twin.sweep.cases`), runs each case in-process (:mod:`twin.sweep.worker`) on a local process pool
or a Dask cluster (:mod:`twin.sweep.execute`), keeps one file per finished case so a sweep resumes
(:mod:`twin.sweep.store`), and writes the table, the per-setting summary and the plots
(:mod:`twin.sweep.summary`, :mod:`twin.sweep.plots`). See docs/sweeps.md.
"""
