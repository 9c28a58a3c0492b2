"""Extended Kalman filter over a ModelSpec, for multi-rate, delayed measurements.

Prediction integrates the model with RK4 (steps no longer than ``max_step``) and propagates the
covariance with the step's Jacobian, ``P ← A P Aᵀ + Q h`` per step, where ``Q`` is the continuous
process noise (relative to the current value: biological variability scales with the culture). Both the
step and its Jacobian are one frozen CasADi function (:class:`twin.augmented.AugmentedModel`).

Each measurement is a scalar update (the sensors' noises are independent), applied in turn, with the
Joseph form ``P ← (I−KH) P (I−KH)ᵀ + K r Kᵀ`` (stays symmetric positive definite), then the estimate is
clipped to the physical bounds. A measurement is **rejected** — not used, and named in
``Estimate.rejected`` — when its value is missing or not finite, outside its device's physical range, or
its normalised innovation ``|y − ŷ| / sqrt(H P Hᵀ + r)`` exceeds ``reject_sigma`` (5).

**Out-of-sequence measurements.** An offline assay arrives hours after its sample was drawn, carrying its
sample time. The filter keeps a short history of nodes ``(t, x̂, P, u held from t, measurements applied
at t)``. A reading older than the newest node is inserted at its own sample time: the filter rolls back
to the last node at or before it, predicts to the sample time, applies it there, and re-propagates
through the later nodes, re-applying their measurements — the same estimate the filter would have made
had the assay arrived in order (the re-applied measurements are not gated again). A reading older than
the history is rejected. A reading is new only when its ``seq`` differs from the last one seen for that
device; ``seq`` 0 means the device has not sampled yet.

**Two sensor faults the gate alone gets wrong** (found by tests/faults/test_sensor_faults.py):

* *A frozen transmitter.* A probe that repeats its last value looks plausible to the gate while the
  process it should follow drifts away (a heater loop on a frozen temperature can cook a culture). A
  noisy device (``sigma`` or ``rel_sigma`` > 0) whose new samples carry exactly the same value
  ``STUCK_REPEATS`` times in a row is taken as stuck: rejected until its value changes again.
* *A locked-out sensor.* Once the estimate has wandered more than ``reject_sigma`` from the truth (after
  a fault the filter could not see), every good reading fails the gate and the filter never recovers.
  After ``LOCKOUT_REJECTIONS`` consecutive gate rejections of a device, the filter trusts the sensor over
  itself: it widens the variance of the states that device measures just enough for the reading to pass,
  and fuses it.

A plant whose time goes back (a restarted server counting from zero) is taken to have renumbered its
clock, not to have rewound the culture: the history moves onto the new clock (:meth:`_rebase`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from plant_models.spec import ModelSpec
from twin.augmented import AugmentedModel
from twin.estimator_config import EstimatorConfig, MeasurementModel
from twin.interfaces import Estimate, FloatArray, Measurements

__all__ = ["ExtendedKalmanFilter"]

_SAME_TIME_S = 1e-6
#: New samples with exactly the same value, in a row, after which a noisy device is taken as stuck.
STUCK_REPEATS = 10
#: Consecutive gate rejections of a device after which the filter trusts it over its own estimate.
LOCKOUT_REJECTIONS = 12


#: Prediction steps fused into one CasADi call (a 5-min loop period is 2 steps of the default max_step).
MAX_FUSED_STEPS = 4


@dataclass
class _Node:
    """The filter at time ``t_s`` after the measurements in ``meas`` (device index, value)."""

    t_s: float
    z: FloatArray
    P: FloatArray
    u: FloatArray
    meas: list[tuple[int, float]] = field(default_factory=list)
    trusted: set[int] = field(default_factory=set)  # positions in ``meas`` fused by the lock-out rule
    # What the node was computed from, ``[t, u..., count, device, value, ..., n_trusted, position, ...]``,
    # for the checkpoint; None once ``u`` or ``meas`` changed. Cached because the checkpoint is taken at
    # every step and almost every node is unchanged since the previous one.
    packed: FloatArray | None = None

    def pack(self) -> FloatArray:
        """``packed``, computed if stale."""
        if self.packed is None:
            pairs = (x for km in self.meas for x in km)
            self.packed = np.array(
                [self.t_s, *self.u, len(self.meas), *pairs, len(self.trusted), *sorted(self.trusted)]
            )
        return self.packed


class ExtendedKalmanFilter:
    """An EKF with parameter augmentation and re-filtering of late measurements (see the module doc).

    Attributes:
        model: the augmented, scaled model.
        devices: the measurement models, by device.
    """

    def __init__(
        self,
        spec: ModelSpec,
        p: FloatArray,
        config: EstimatorConfig,
        devices: tuple[MeasurementModel, ...],
    ) -> None:
        """Build the filter (CasADi functions once).

        Args:
            spec: the model.
            p: the twin's parameter vector (augmented entries are its initial guess).
            config: tuning (``kind`` is not looked at).
            devices: what each device measures and its noise.
        """
        config.validate(spec)
        self.spec = spec
        self.config = config
        self.p = np.asarray(p, dtype=float)
        self.devices = devices
        x0 = np.array(spec.vector("states", {**spec.x0, **config.x0}))
        signals = tuple(dict.fromkeys(d.measures for d in devices))
        self.model = AugmentedModel(spec, self.p, x0, config.augment, signals)
        m = self.model
        self._signal_of = [signals.index(d.measures) for d in devices]
        self._one_hot = [np.eye(len(signals))[i] for i in self._signal_of]
        self._bounds = [spec.state_bounds.get(d.measures, (-math.inf, math.inf)) for d in devices]
        self._z0 = np.concatenate([x0, self.p[m.aug_idx]]) / m.scale
        rel0 = [config.initial_std.get(n, 0.1) for n in spec.states]
        rel0 += [config.param_std.get(n, 0.2) for n in config.augment]
        # A relative spread of a zero initial value (titer at inoculation) would be zero: floor it at 1 %
        # of the scale, which is also the process noise's absolute floor below.
        self._floor = 1e-2 * np.ones(m.nz)
        self._floor[m.nx :] = 0.0
        self._P0 = np.diag(np.maximum(np.abs(self._z0) * np.array(rel0), self._floor) ** 2)
        q = [config.process_noise.get(n, 0.005) for n in spec.states]
        q += [config.param_drift.get(n, 0.001) for n in config.augment]
        self._q_rel = np.array(q)
        self._q_floor = 1e-3 * self._floor
        self._history: list[_Node] = []
        self._last_seq: dict[str, int] = {}
        # The checkpoint's packed history, kept for the nodes before the newest one (only the newest node
        # changes in the normal course of updates): the checkpoint of every controller step then copies
        # arrays instead of concatenating hundreds of small ones. Dropped when older nodes change
        # (re-filtering, a clock rebase, a restore); trimmed with the history.
        self._pack_prefix: FloatArray | None = None
        self._pack_lengths: deque[int] = deque()
        # Fault detectors (see the module doc); not part of the checkpoint: a resumed filter starts them
        # again from zero, so a stuck probe or a lock-out is noticed at most their length later.
        self._repeats: dict[int, tuple[float, int]] = {}  # device -> (last value, times repeated)
        self._gated: dict[int, int] = {}  # device -> consecutive gate rejections

    # --- the Estimator protocol --------------------------------------------------------------------

    def update(self, meas: Measurements, u_applied: FloatArray | None) -> Estimate:
        """Predict to ``meas.time_s`` with ``u_applied`` held, then fuse the new readings."""
        t = meas.time_s
        u = self._input(u_applied)
        if self._history and t < self._history[-1].t_s - _SAME_TIME_S:
            self._rebase(t - self._history[-1].t_s)
        if not self._history:
            self._history.append(_Node(t, self._z0.copy(), self._P0.copy(), u))
        else:
            last = self._history[-1]
            last.u, last.packed = u, None
            if t > last.t_s + _SAME_TIME_S:
                z, P = self._predict(last.z, last.P, u, t - last.t_s)
                self._history.append(_Node(t, z, P, u.copy()))
        rejected: list[str] = []
        late: list[tuple[float, int, float]] = []
        now = self._history[-1]
        for k, dev in enumerate(self.devices):
            reading = meas.values.get(dev.device)
            if reading is None or reading.seq == 0 or reading.seq == self._last_seq.get(dev.device):
                continue  # not measured by this plant, not sampled yet, or not new
            self._last_seq[dev.device] = reading.seq
            value = reading.value
            lo, hi = self._bounds[k]
            if value is None or not math.isfinite(value) or not lo <= value <= hi or self._stuck(k, value):
                rejected.append(dev.device)
            elif reading.t_s < now.t_s - _SAME_TIME_S:
                late.append((reading.t_s, k, value))
            elif not self._apply(now, k, value):
                self._gated[k] = self._gated.get(k, 0) + 1
                if self._gated[k] < LOCKOUT_REJECTIONS:
                    rejected.append(dev.device)
                else:
                    self._gated[k] = 0
                    self._trust_sensor(now, k, value)
            else:
                self._gated[k] = 0
        for t_s, k, value in sorted(late):
            if not self._insert(t_s, k, value):
                rejected.append(self.devices[k].device)
        self._trim(t)
        return self._estimate(t, tuple(rejected))

    # --- filtering ---------------------------------------------------------------------------------

    def _input(self, u_applied: FloatArray | None) -> FloatArray:
        if u_applied is not None:
            return np.asarray(u_applied, dtype=float).copy()
        if self._history:
            return self._history[-1].u.copy()
        return np.array([self.spec.input_safe[n] for n in self.spec.inputs])

    def _predict(self, z: FloatArray, P: FloatArray, u: FloatArray, dt_s: float) -> tuple[FloatArray, FloatArray]:
        """``z, P`` after ``dt_s`` seconds with ``u`` held (RK4 steps no longer than ``max_step``)."""
        m = self.model
        dt = dt_s / self.spec.seconds_per_time_unit
        n = m.substeps(dt, self.config.max_step)
        h = dt / n
        # In calls of at most MAX_FUSED_STEPS steps: a long gap (a link outage) is many steps, and one
        # function per step count would keep a graph of that many steps in memory for each gap length.
        while n > 0:
            k = min(n, MAX_FUSED_STEPS)
            z, P = m.predictor(k)(z, P, u, self.p, h, self._q_rel, self._q_floor)
            n -= k
        return z, P

    def _rebase(self, shift_s: float) -> None:
        """Move the whole history by ``shift_s`` seconds: the plant's clock went back (its server restarted
        and counts from zero again; the loop records ``plant_time_reset``). The culture did not go back
        with it, so the filter goes on from where it was, on the new clock. Without this every later
        reading was older than the history and rejected: the twin was blind for the rest of the batch
        (found by the soak, tests/faults/soak.py)."""
        self._pack_prefix = None
        for node in self._history:
            node.t_s += shift_s
            node.packed = None

    def _stuck(self, k: int, value: float) -> bool:
        """Whether noisy device ``k`` has now sent ``value`` STUCK_REPEATS times in a row (frozen)."""
        dev = self.devices[k]
        if dev.sigma <= 0 and dev.rel_sigma <= 0:
            return False  # a noiseless device (a totalizer with the pump off) may repeat itself
        last, times = self._repeats.get(k, (math.nan, 0))
        times = times + 1 if value == last else 0
        self._repeats[k] = (value, times)
        return times >= STUCK_REPEATS - 1

    def _trust_sensor(self, node: _Node, k: int, value: float) -> None:
        """Widen the variance of what device ``k`` measures until ``value`` passes the gate; fuse it."""
        m = self.model
        y, H = m.measure(node.z, node.u, self.p)
        h_row = H[self._signal_of[k], :]
        innovation = value - float(y[self._signal_of[k]])
        touched = np.abs(h_row) > 0
        # Innovation variance wanted: the reading at half the gate (2.5 sigma with the default of 5).
        wanted = (2.0 * innovation / self.config.reject_sigma) ** 2
        extra = max(0.0, wanted - float(h_row @ node.P @ h_row)) / max(float(np.sum(h_row[touched] ** 2)), 1e-300)
        node.P = node.P + extra * np.diag(touched.astype(float))
        self._apply(node, k, value, gate=False)
        node.trusted.add(len(node.meas) - 1)

    def _repropagate(self, prev: _Node, node: _Node) -> None:
        """``node`` again from ``prev``: the prediction, then its measurements fused as they were (a trusted
        one with its covariance widening redone), ungated."""
        node.z, node.P = self._predict(prev.z, prev.P, prev.u, node.t_s - prev.t_s)
        stored, trusted = node.meas, node.trusted
        node.meas, node.trusted = [], set()
        for i, (k, v) in enumerate(stored):
            if i in trusted:
                self._trust_sensor(node, k, v)
            else:
                self._apply(node, k, v, gate=False)

    def _apply(self, node: _Node, k: int, value: float, gate: bool = True) -> bool:
        """Fuse device ``k``'s ``value`` into ``node``; False (and no change) if it fails the gate."""
        dev = self.devices[k]
        innovation, s, z, P = self.model.corrector(
            node.z, node.P, node.u, self.p, self._one_hot[k], value, dev.sigma, dev.rel_sigma
        )
        if gate and abs(innovation[0]) > self.config.reject_sigma * math.sqrt(s[0]):
            return False
        node.z, node.P = z, P
        node.meas.append((k, value))
        node.packed = None
        return True

    def _insert(self, t_s: float, k: int, value: float) -> bool:
        """Apply a late reading at its sample time ``t_s`` and re-filter up to now (see the module doc)."""
        self._pack_prefix = None  # older nodes change
        hist = self._history
        j = max((i for i, node in enumerate(hist) if node.t_s <= t_s + _SAME_TIME_S), default=None)
        if j is None:
            return False  # older than the history: cannot be placed
        if abs(hist[j].t_s - t_s) <= _SAME_TIME_S:
            target = hist[j]
            if not self._apply(target, k, value):
                return False
        else:
            z, P = self._predict(hist[j].z, hist[j].P, hist[j].u, t_s - hist[j].t_s)
            target = _Node(t_s, z, P, hist[j].u.copy())
            if not self._apply(target, k, value):
                return False
            hist.insert(j + 1, target)
            j += 1
        for i in range(j + 1, len(hist)):
            self._repropagate(hist[i - 1], hist[i])
        return True

    def _trim(self, t: float) -> None:
        """Forget nodes older than ``history_s`` (keeping one at or before the cut, to roll back to)."""
        cut = t - self.config.history_s
        while len(self._history) > 1 and self._history[1].t_s <= cut:
            self._history.pop(0)
            if self._pack_prefix is not None:
                if self._pack_lengths:
                    self._pack_prefix = self._pack_prefix[self._pack_lengths.popleft() :]
                else:  # the dropped node was not in the prefix: the prefix starts after it
                    self._pack_prefix = None

    def _estimate(self, t: float, rejected: tuple[str, ...]) -> Estimate:
        node = self._history[-1]
        m = self.model
        x = node.z[: m.nx] * m.scale[: m.nx]
        std = np.sqrt(np.maximum(np.diag(node.P), 0.0)) * m.scale
        return Estimate(t, x, m.params(node.z, self.p), std[: m.nx], rejected)

    # --- twin.checkpoint.Checkpointable (a resumed batch continues with the same history) ---------

    def checkpoint(self) -> Mapping[str, FloatArray]:
        """The whole filter state as arrays, compactly: the oldest history node in full (``z0``, ``P0``)
        and, for every node, only what it was computed from — its time, held input and applied
        measurements (``nodes``: :attr:`_Node.packed` per node). A later node is the prediction from the
        one before it followed by its measurements (a lock-out fusion with its widening), which is
        exactly how :meth:`update` and the re-filtering made it, so :meth:`restore` recomputes the same
        floats.
        Storing every node's covariance instead would cost ``nz²`` values per node: 30 h of 1-min nodes
        of a 13-state twin is 2.7 MB per checkpoint, one per controller step."""
        h = self._history
        first = h[0] if h else _Node(0.0, self._z0, self._P0, np.zeros(self.spec.nu))
        return {
            "z0": first.z.copy(),
            "P0": first.P.copy(),
            "nodes": self._packed_history(),
            "last_seq": np.array([self._last_seq.get(d.device, -1) for d in self.devices], dtype=float),
        }

    def _packed_history(self) -> FloatArray:
        """Every node's :meth:`_Node.pack`, concatenated; the prefix before the newest node is kept."""
        h = self._history
        if not h:
            return np.zeros(0)
        if self._pack_prefix is None:
            self._pack_prefix, self._pack_lengths = np.zeros(0), deque()
        new = [n.pack() for n in h[len(self._pack_lengths) :]]
        self._pack_prefix = np.concatenate([self._pack_prefix, *new[:-1]])
        self._pack_lengths.extend(len(a) for a in new[:-1])
        return np.concatenate([self._pack_prefix, new[-1]])

    def restore(self, state: Mapping[str, FloatArray]) -> None:
        """Continue from a :meth:`checkpoint` (re-propagating the history from its oldest node)."""
        self._pack_prefix = None
        packed, nu, i = state["nodes"], self.spec.nu, 0
        nodes: list[_Node] = []
        while i < len(packed):
            t, u, count = float(packed[i]), np.array(packed[i + 1 : i + 1 + nu]), int(packed[i + 1 + nu])
            i += 2 + nu
            meas = [(int(k), float(v)) for k, v in packed[i : i + 2 * count].reshape(count, 2)]
            i += 2 * count
            n_trusted = int(packed[i])
            trusted = {int(x) for x in packed[i + 1 : i + 1 + n_trusted]}
            i += 1 + n_trusted
            node = _Node(t, np.array(state["z0"]), np.array(state["P0"]), u, meas, trusted)
            if nodes:
                self._repropagate(nodes[-1], node)
            nodes.append(node)
        self._history = nodes
        seqs = zip(self.devices, state["last_seq"], strict=True)
        self._last_seq = {d.device: int(q) for d, q in seqs if q >= 0}

    # --- for the MHE and tests ---------------------------------------------------------------------

    def node_at_or_before(self, t_s: float) -> tuple[float, FloatArray, FloatArray] | None:
        """``(t, z, P)`` of the newest history node at or before ``t_s`` (scaled coordinates)."""
        nodes = [n for n in self._history if n.t_s <= t_s + _SAME_TIME_S]
        if not nodes:
            return None
        n = nodes[-1]
        return n.t_s, n.z.copy(), n.P.copy()

    def accepted(self) -> list[tuple[float, int, float]]:
        """Every accepted measurement in the history as ``(t_s, device index, value)``, by time."""
        return [(n.t_s, k, v) for n in self._history for k, v in n.meas]

    def inputs(self) -> list[tuple[float, FloatArray]]:
        """``(t_s, u held from t_s)`` of every history node."""
        return [(n.t_s, n.u.copy()) for n in self._history]

    @property
    def parameter_std(self) -> Mapping[str, float]:
        """Standard deviation of each augmented parameter now (physical units)."""
        node = self._history[-1]
        m = self.model
        std = np.sqrt(np.maximum(np.diag(node.P), 0.0)) * m.scale
        return {n: float(std[m.nx + i]) for i, n in enumerate(self.config.augment)}
