"""Decisions: NMPC (CasADi), do-mpc reference, baselines — all behind the ``Controller`` protocol."""
