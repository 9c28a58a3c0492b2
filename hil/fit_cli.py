"""``bioimp fit SPEC.toml --data DIR_OR_FILES... --out DIR``: calibrate model parameters from batch data.

Registered in :func:`hil.cli.build_parser`. The work is in :mod:`twin.fit` (docs/fit.md). Bad input (fit
spec, data) is a :class:`~plant_models.errors.BioimpError`: one line on stderr, exit 2, nothing written.
Exit 1 when no start of the solver converged (fit.json is still written, with the solver status).
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXIT_NOT_CONVERGED = 1


def _cmd_fit(args: argparse.Namespace) -> int:
    from twin.fit.data import load_batches
    from twin.fit.estimate import fit_batches
    from twin.fit.outputs import write_outputs
    from twin.fit.spec import load_fit_spec

    fit = load_fit_spec(args.spec)
    spec = fit.spec()
    batches = load_batches(args.data, fit, spec)  # every data problem is found before anything is written
    result = fit_batches(fit, batches, spec)
    out = Path(args.out)
    write_outputs(result, out)
    width = max(len(p.name) for p in result.params)
    for p in result.params:
        flag = "" if p.identifiable else "   NOT IDENTIFIABLE: " + "; ".join(p.flags)
        print(
            f"{p.name:<{width}} = {p.estimate:.6g} {p.unit}  (SE {p.se:.3g}; "
            f"95 % CI {p.ci95[0]:.6g} .. {p.ci95[1]:.6g}){flag}"
        )
    status = result.starts[result.best_start].status
    print(f"{len(batches)} batches, {result.n_data} samples, objective {result.objective:.6g} ({status}); wrote {out}/")
    if not result.success:
        print("bioimp fit: no start converged; the estimates in fit.json are the best point reached")
        return EXIT_NOT_CONVERGED
    return 0


def add_fit_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bioimp fit``."""
    fit = sub.add_parser(
        "fit",
        help="calibrate model parameters from batch records and CSV files (estimates, 95 %% CI, plots)",
        description="Fit shared model parameters (and each batch's initial state) to past batches: "
        "maximum likelihood by multiple shooting (CasADi, ipopt), uncertainty from the Fisher information. "
        "See docs/fit.md.",
    )
    fit.add_argument("spec", help="fit spec TOML: model, parameters to estimate (bounds, priors), noise per signal")
    fit.add_argument(
        "--data", nargs="+", required=True, metavar="DIR_OR_CSV",
        help="run directories (record.sqlite), CSV files (t,<signals>; sidecar .toml), or folders of them",
    )
    fit.add_argument("--out", required=True, help="folder for fit.json, params.toml and the figures")
    fit.set_defaults(func=_cmd_fit)
