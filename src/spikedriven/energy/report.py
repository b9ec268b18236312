"""The energy report: per-layer operation counts, firing rates and energy, with its table / CSV / JSON forms.

Energy model (Horowitz 2014, 45 nm, 32-bit float; the constants the paper uses): E_MAC = 4.6 pJ per
multiply-accumulate, E_AC = 0.9 pJ per accumulate. All energies are **per sample** (one inference).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field

__all__ = ["E_MAC_PJ", "E_AC_PJ", "E_MUL_PJ", "PJ_PER_MJ", "LayerEnergy", "EnergyReport", "si", "energy_str"]

E_MAC_PJ = 4.6  # 32-bit float multiply-accumulate, 45 nm (Horowitz 2014)
E_AC_PJ = 0.9  # 32-bit float add
E_MUL_PJ = 3.7  # 32-bit float multiply (E_MAC = E_MUL + E_AC)
PJ_PER_MJ = 1e9


# ==================================================================================================
# Report
# ==================================================================================================
@dataclass
class LayerEnergy:
    name: str
    kind: str  # "conv" | "linear" | "sdsa" | "matmul"
    op: str  # "MAC" | "AC"
    flops: float  # dense operations of one time step for one sample
    rate_per_t: list[float]  # non-zero fraction of the input at each time step
    rate: float  # mean over t
    sops: float  # operations executed per sample, all steps together (ACs for AC layers, MACs for MAC layers)
    energy_mj: float
    input: str = "binary"  # "binary" | "integer" | "real" | "events" | "assumed"
    note: str = ""


@dataclass
class EnergyReport:
    layers: list[LayerEnergy]
    T: int
    n_samples: int = 0
    e_mac: float = E_MAC_PJ
    e_ac: float = E_AC_PJ
    model: str = ""
    first_layer_T: bool = False
    mode: str = "measured"  # "measured" | "uniform-rate"
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ totals
    @property
    def total_mj(self) -> float:
        return sum(l.energy_mj for l in self.layers)

    @property
    def mac_mj(self) -> float:
        return sum(l.energy_mj for l in self.layers if l.op == "MAC")

    @property
    def ac_mj(self) -> float:
        return sum(l.energy_mj for l in self.layers if l.op == "AC")

    @property
    def sdsa_mj(self) -> float:
        return sum(l.energy_mj for l in self.layers if l.kind == "sdsa")

    @property
    def total_flops(self) -> float:
        """Dense operations of one step (the equivalent ANN's FLOPs), all layers."""
        return sum(l.flops for l in self.layers)

    @property
    def total_macs(self) -> float:
        return sum(l.sops for l in self.layers if l.op == "MAC")

    @property
    def total_sops(self) -> float:
        return sum(l.sops for l in self.layers if l.op == "AC")

    @property
    def mean_rate(self) -> float:
        """FLOPs-weighted mean input rate of the AC layers (the single rate that gives the same AC energy)."""
        fl = sum(l.flops for l in self.layers if l.op == "AC")
        return self.total_sops / (self.T * fl) if fl else 0.0

    def layer(self, name: str) -> LayerEnergy:
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(name)

    # ------------------------------------------------------------------ output
    def summary(self) -> dict:
        return {"total_mj": self.total_mj, "mac_mj": self.mac_mj, "ac_mj": self.ac_mj, "sdsa_mj": self.sdsa_mj,
                "flops_per_step": self.total_flops, "macs": self.total_macs, "sops": self.total_sops,
                "mean_ac_input_rate": self.mean_rate}

    def to_dict(self) -> dict:
        return {"model": self.model, "mode": self.mode, "T": self.T, "n_samples": self.n_samples,
                "e_mac_pj": self.e_mac, "e_ac_pj": self.e_ac, "first_layer_T": self.first_layer_T,
                "totals": self.summary(), "notes": list(self.notes), "layers": [asdict(l) for l in self.layers]}

    def to_json(self, path) -> None:
        """Write :meth:`to_dict` as JSON (atomically: ``outputs.atomic_write_text``)."""
        from ..outputs import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    def to_csv(self, path) -> None:
        """One row per layer and a TOTAL row (atomically: ``outputs.atomic_write_text``)."""
        from ..outputs import atomic_write_text

        cols = ["name", "kind", "op", "input", "flops"] + [f"rate_t{t}" for t in range(self.T)] + [
            "rate", "sops", "energy_mj", "note"]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(cols)
        for l in self.layers:
            rates = list(l.rate_per_t) + [""] * (self.T - len(l.rate_per_t))
            w.writerow([l.name, l.kind, l.op, l.input, l.flops, *rates, l.rate, l.sops, l.energy_mj, l.note])
        w.writerow(["TOTAL", "", "", "", self.total_flops, *([""] * self.T), self.mean_rate,
                    self.total_macs + self.total_sops, self.total_mj, ""])
        atomic_write_text(path, buf.getvalue())

    def table(self) -> str:
        show_t = self.T <= 6
        rate_head = "rate per t" if show_t else "rate min..max"
        rows = [("layer", "kind", "op", "FLOPs/step", rate_head, "mean", "ops", "energy uJ")]
        for l in self.layers:
            if show_t:
                rt = " ".join(f"{r:.3f}" for r in l.rate_per_t)
            else:
                rt = f"{min(l.rate_per_t):.3f}..{max(l.rate_per_t):.3f}" if l.rate_per_t else ""
            rows.append((l.name, l.kind, l.op, si(l.flops), rt, f"{l.rate:.4f}", si(l.sops),
                         f"{l.energy_mj * 1e3:.4g}"))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        right = {3, 5, 6, 7}
        lines = []
        for j, r in enumerate(rows):
            lines.append("  ".join(v.rjust(w) if c in right else v.ljust(w) for c, (v, w) in enumerate(zip(r, widths))))
            if j == 0:
                lines.append("  ".join("-" * w for w in widths))
        head = (f"energy report ({self.mode}) for {self.model or 'model'}: T={self.T}"
                + (f", {self.n_samples} samples" if self.n_samples else "")
                + f", E_MAC={self.e_mac} pJ, E_AC={self.e_ac} pJ, per sample")
        tail = [
            f"total FLOPs/step {si(self.total_flops)}, MACs {si(self.total_macs)}, SOPs (ACs) {si(self.total_sops)}, "
            f"FLOPs-weighted mean AC input rate {self.mean_rate:.4f}",
            f"energy: MAC {energy_str(self.mac_mj, self.total_mj)} + AC {energy_str(self.ac_mj, self.total_mj)}"
            + (f" (of which SDSA column sums {energy_str(self.sdsa_mj, self.total_mj)})"
               if any(l.kind == "sdsa" for l in self.layers) else "")
            + f" = TOTAL {energy_str(self.total_mj)}",
        ]
        return "\n".join([head, *lines, *tail, *(f"note: {n}" for n in self.notes)])

    __str__ = table


def energy_str(mj: float, scale_of: float | None = None) -> str:
    """An energy in the unit that fits the larger of ``mj`` and ``scale_of`` (mJ, uJ or nJ), 4 significant
    digits: a one-block digits model costs about 0.0008 mJ, which reads better as 0.8 uJ."""
    ref = abs(scale_of if scale_of is not None else mj)
    for unit, f in (("mJ", 1.0), ("uJ", 1e3), ("nJ", 1e6)):
        if ref >= 0.1 / f or unit == "nJ":
            return f"{mj * f:.4g} {unit}"
    return f"{mj:.4g} mJ"  # pragma: no cover


def si(x: float) -> str:
    for unit, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= unit:
            return f"{x / unit:.3f}{s}"
    return f"{x:.0f}"


