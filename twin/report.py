"""The batch report: one self-contained HTML file with interactive plots (plotly), and PNGs.

Everything comes from the batch record (:mod:`twin.record_read`): measured states and the twin's
estimates with ±2σ bands, other measurements (assays), setpoints intended/applied/refused, controller
compute time and fallbacks, events, alarms and audited changes on the plant-time axis, and the KPI table.

The HTML holds plotly.js inline (it opens offline) and each figure's JSON in a
``<script type="application/json" id="fig-<name>">`` element: exactly the object handed to
``Plotly.newPlot``, so a test can check what the browser draws.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twin.batch import loop_result_from_history
from twin.record import MemoryRecord
from twin.record_read import RunInfo, load_history, open_readonly, read_run
from twin.record_verify import verify_record
from twin.runner import twin_params, write_outputs
from twin.scenario import parse_scenario

__all__ = ["ReportData", "build_figures", "render_report", "report_data"]

HOUR_S = 3600.0


@dataclass(frozen=True)
class ReportData:
    """The record as the plots need it (times in hours of plant time)."""

    run: RunInfo
    history: MemoryRecord
    kpis: dict[str, Any]
    verified: str
    audit: list[dict[str, Any]] = field(default_factory=list)


def _finite(values: Sequence[float | None]) -> list[float | None]:
    return [None if v is None or not math.isfinite(v) else float(v) for v in values]


def report_data(path: Path) -> ReportData:
    """Read everything the report shows from the record at ``path``."""
    check = verify_record(path)
    verified = f"chain verified: {check.rows} rows, head {check.head}" if check.ok else f"NOT VERIFIED: {check.problem}"
    with open_readonly(path) as conn:
        run = read_run(conn)
        history = load_history(conn)
        audit_rows = conn.execute("SELECT rec, wall_s, who, what, why, old, new, ref_rec FROM audit ORDER BY rec")
        audit = []
        for rec, wall, who, what, why, old, new, ref in audit_rows:
            # An audit row has no plant time; place it at the last read committed before it.
            t = conn.execute("SELECT MAX(read_t_s) FROM samples WHERE rec < ?", (rec,)).fetchone()[0]
            audit.append(
                {"rec": rec, "wall_s": wall, "t_s": t, "who": who, "what": what, "why": why, "old": old, "new": new,
                 "ref_rec": ref}
            )
    scenario = parse_scenario(run.scenario_source, "record run row")
    spec = scenario.spec()
    loop = loop_result_from_history(history, scenario.loop.steps)
    kpis = write_outputs(scenario, spec, history, loop, run.controller, twin_params(spec, scenario), None)
    return ReportData(run, history, kpis, verified, audit)


def _hours(t_s: list[float]) -> list[float | None]:
    return _finite([t / HOUR_S for t in t_s])


def build_figures(data: ReportData) -> dict[str, Any]:
    """The plotly figures of the report, by name."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    run, h = data.run, data.history
    figs: dict[str, Any] = {}

    # States: measurements (markers), estimates (line) with ±2σ bands.
    fig = make_subplots(rows=len(run.states), cols=1, shared_xaxes=True, subplot_titles=run.states)
    t_est = _hours([e.t_s for _, e in h.estimates])
    for i, name in enumerate(run.states):
        meas_t, meas_v = [], []
        for _, m in h.reads:
            reading = m.values.get(name)
            if reading is not None:
                meas_t.append(reading.t_s / HOUR_S)
                meas_v.append(reading.value)
        x = [float(e.x[i]) for _, e in h.estimates]
        sd = [float(e.x_std[i]) for _, e in h.estimates]
        upper = [a + 2 * b for a, b in zip(x, sd, strict=True)]
        lower = [a - 2 * b for a, b in zip(x, sd, strict=True)]
        row = i + 1
        fig.add_trace(go.Scatter(x=t_est, y=_finite(upper), name=f"{name} +2σ", mode="lines", line={"width": 0},
                                 showlegend=False, legendgroup="band"), row=row, col=1)
        fig.add_trace(go.Scatter(x=t_est, y=_finite(lower), name=f"{name} −2σ", mode="lines", line={"width": 0},
                                 fill="tonexty", fillcolor="rgba(31,119,180,0.2)", showlegend=False,
                                 legendgroup="band"), row=row, col=1)
        fig.add_trace(go.Scatter(x=t_est, y=_finite(x), name=f"{name} estimate", mode="lines",
                                 line={"color": "rgb(31,119,180)"}), row=row, col=1)
        fig.add_trace(go.Scatter(x=meas_t, y=_finite(meas_v), name=f"{name} measured", mode="markers",
                                 marker={"size": 4, "color": "black"}), row=row, col=1)
    fig.update_layout(title="States: measured and estimated (±2σ)", height=220 * len(run.states))
    fig.update_xaxes(title_text="plant time [h]", row=len(run.states), col=1)
    figs["states"] = fig

    # Other measurements (assays, outputs that are not states).
    others = sorted({d for _, m in h.reads for d in m.values} - set(run.states) - set(run.inputs))
    if others:
        fig = make_subplots(rows=len(others), cols=1, shared_xaxes=True, subplot_titles=others)
        for i, name in enumerate(others):
            pts = [(m.values[name].t_s / HOUR_S, m.values[name].value) for _, m in h.reads if name in m.values]
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=_finite([p[1] for p in pts]), name=name,
                                     mode="markers"), row=i + 1, col=1)
        fig.update_layout(title="Other measurements and assays", height=200 * len(others))
        figs["assays"] = fig

    # Setpoints: intended (what the controller decided) vs applied (what the plant said) vs refused.
    fig = make_subplots(rows=len(run.inputs), cols=1, shared_xaxes=True, subplot_titles=run.inputs)
    for i, name in enumerate(run.inputs):
        for state, mode, style in (
            ("intended", "lines", {"line": {"shape": "hv", "dash": "dot"}}),
            ("applied", "lines+markers", {"line": {"shape": "hv"}, "marker": {"size": 4}}),
            ("refused", "markers", {"marker": {"symbol": "x", "size": 9, "color": "red"}}),
        ):
            rows = [s for s in h.setpoints if s.state == state and name in s.values]
            fig.add_trace(go.Scatter(x=_hours([s.t_s for s in rows]), y=_finite([s.values[name] for s in rows]),
                                     name=f"{name} {state}", mode=mode, **style), row=i + 1, col=1)
    fig.update_layout(title="Setpoints: intended, applied, refused", height=260 * len(run.inputs))
    figs["setpoints"] = fig

    # Controller compute time per step, fallbacks marked.
    fig = go.Figure()
    t_c = _hours([t for _, t, _ in h.controls])
    ms = [c.compute_s * 1e3 for _, _, c in h.controls]
    fig.add_trace(go.Scatter(x=t_c, y=ms, name="compute time [ms]", mode="lines+markers", marker={"size": 3}))
    fb = [(t, v) for t, v, (_, _, c) in zip(t_c, ms, h.controls, strict=True) if c.fallback is not None]
    fig.add_trace(go.Scatter(x=[p[0] for p in fb], y=[p[1] for p in fb], name="fallback", mode="markers",
                             marker={"symbol": "x", "size": 9, "color": "red"}))
    fig.update_layout(title="Controller compute time", xaxis_title="plant time [h]", yaxis_title="ms", height=320)
    figs["compute"] = fig

    # Events, alarms and audited changes on the time axis.
    fig = go.Figure()
    kinds = sorted({e.kind for e in h.events})
    for kind in kinds:
        events = [e for e in h.events if e.kind == kind]
        fig.add_trace(go.Scatter(x=_hours([e.t_s for e in events]), y=[kind] * len(events), name=kind,
                                 mode="markers", text=[e.message for e in events], marker={"size": 10},
                                 hovertemplate="%{text}<extra>" + kind + "</extra>"))
    if data.audit:
        fig.add_trace(go.Scatter(
            x=_hours([a["t_s"] if a["t_s"] is not None else math.nan for a in data.audit]),
            y=["audit: " + a["what"] for a in data.audit], name="audited change", mode="markers",
            text=[f"{a['who']}: {a['old']} → {a['new']} ({a['why']})" for a in data.audit],
            marker={"symbol": "diamond", "size": 11, "color": "purple"},
        ))
    fig.update_layout(title="Events, alarms and changes", xaxis_title="plant time [h]",
                      height=160 + 40 * (len(kinds) + len(data.audit)))
    figs["events"] = fig
    return figs


def _kpi_rows(kpis: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in kpis.items():
        if isinstance(value, dict):
            rows += _kpi_rows(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            rows.append((prefix + key, f"{value:.6g}"))
        else:
            rows.append((prefix + key, str(value)))
    return rows


def _html(data: ReportData, figs: dict[str, Any]) -> str:
    from plotly.offline import get_plotlyjs

    run = data.run
    head = [
        ("scenario", f"{run.scenario_name} (sha256 {run.scenario_sha256[:16]}…)"),
        ("model / controller", f"{run.model} / {run.controller}"),
        ("started (UTC) / operator", f"{run.started_utc} / {run.operator}"),
        ("plant", f"{run.plant_hello.get('plant')} at {run.plant_endpoint} ({run.plant_hello.get('clock')} clock)"),
        ("software", ", ".join(f"{k} {v}" for k, v in sorted(run.software.items()))),
        ("record", data.verified),
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>bioimp batch report — {html.escape(run.scenario_name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}</style>",
        f"<script>{get_plotlyjs()}</script></head><body>",
        f"<h1>Batch report: {html.escape(run.scenario_name)}</h1><table>",
        *(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in head),
        "</table><h2>KPIs</h2><table id='kpis'>",
        *(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in _kpi_rows(data.kpis)),
        "</table>",
    ]
    for name, fig in figs.items():
        payload = fig.to_json().replace("</", "<\\/")
        parts += [
            f"<div id='plot-{name}'></div>",
            f"<script type='application/json' id='fig-{name}'>{payload}</script>",
            "<script>(function(){var f=JSON.parse(document.getElementById("
            f"'fig-{name}').textContent);Plotly.newPlot('plot-{name}',f.data,f.layout,{{responsive:true}});}})();"
            "</script>",
        ]
    if data.audit:
        parts.append("<h2>Audit trail</h2><table><tr><th>rec</th><th>who</th><th>what</th><th>why</th>"
                     "<th>old</th><th>new</th><th>corrects rec</th></tr>")
        for a in data.audit:
            cells = (a["rec"], a["who"], a["what"], a["why"], a["old"], a["new"], a["ref_rec"])
            parts.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _pngs(data: ReportData, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run, h = data.run, data.history
    written = []
    t_est = np.array([e.t_s for _, e in h.estimates]) / HOUR_S
    fig, axes = plt.subplots(len(run.states), 1, sharex=True, figsize=(9, 1.9 * len(run.states) + 0.8))
    for i, (ax, name) in enumerate(zip(np.atleast_1d(axes), run.states, strict=True)):
        x = np.array([e.x[i] for _, e in h.estimates])
        sd = np.array([e.x_std[i] for _, e in h.estimates])
        ax.fill_between(t_est, x - 2 * sd, x + 2 * sd, alpha=0.25, color="tab:blue", lw=0)
        ax.plot(t_est, x, color="tab:blue", label="estimate")
        pts = [(m.values[name].t_s / HOUR_S, m.values[name].value) for _, m in h.reads if name in m.values]
        ax.plot([p[0] for p in pts], [np.nan if p[1] is None else p[1] for p in pts], "k.", ms=3, label="measured")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(loc="best", fontsize=8)
    np.atleast_1d(axes)[-1].set_xlabel("plant time [h]")
    fig.suptitle(f"{run.scenario_name}: states")
    fig.tight_layout()
    written.append(out_dir / "report_states.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(len(run.inputs) + 2, 1, sharex=True, figsize=(9, 2.0 * (len(run.inputs) + 2) + 0.8))
    axes = np.atleast_1d(axes)
    for i, name in enumerate(run.inputs):
        for state, style in (("intended", ":"), ("applied", "-")):
            rows = [s for s in h.setpoints if s.state == state and name in s.values]
            axes[i].step([s.t_s / HOUR_S for s in rows], [s.values[name] for s in rows], style, where="post",
                         label=state)
        refused = [s for s in h.setpoints if s.state == "refused" and name in s.values]
        axes[i].plot([s.t_s / HOUR_S for s in refused], [s.values[name] for s in refused], "rx", label="refused")
        axes[i].set_ylabel(name)
        axes[i].legend(loc="best", fontsize=8)
    axes[-2].plot([t / HOUR_S for _, t, _ in h.controls], [c.compute_s * 1e3 for _, _, c in h.controls], ".-", ms=2)
    axes[-2].set_ylabel("compute [ms]")
    kinds = sorted({e.kind for e in h.events})
    for j, kind in enumerate(kinds):
        ts = [e.t_s / HOUR_S for e in h.events if e.kind == kind]
        axes[-1].plot(ts, [j] * len(ts), "o")
    axes[-1].set_yticks(range(len(kinds)), kinds, fontsize=7)
    axes[-1].set_xlabel("plant time [h]")
    fig.suptitle(f"{run.scenario_name}: setpoints, compute time, events")
    fig.tight_layout()
    written.append(out_dir / "report_control.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)
    return written


def render_report(path: Path, out_dir: Path) -> list[Path]:
    """Write ``out_dir/report.html`` (self-contained, interactive) and the PNGs; return the files."""
    data = report_data(path)
    figs = build_figures(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / "report.html"
    page.write_text(_html(data, figs), encoding="utf-8")
    return [page, *_pngs(data, out_dir)]


def figure_json(page: str, name: str) -> dict[str, Any]:
    """The figure JSON named ``name`` embedded in a report page (what ``Plotly.newPlot`` receives)."""
    marker = f"<script type='application/json' id='fig-{name}'>"
    start = page.index(marker) + len(marker)
    end = page.index("</script>", start)
    result: dict[str, Any] = json.loads(page[start:end].replace("<\\/", "</"))
    return result
