"""Closed-form operation counts and energy: layer FLOPs (supplement eq. S1-S2) and self-attention VSA vs SSA vs
SDSA, including the analysis of which counting assumption gives the paper's "up to 87.2x"."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .report import E_AC_PJ, E_MAC_PJ, PJ_PER_MJ, si

__all__ = ["conv_flops", "linear_flops", "AttentionCost", "attention_costs", "theoretical_report", "analyze_87x"]


def conv_flops(conv: nn.Conv2d, out_hw: tuple[int, int]) -> int:
    """Eq. S1: k_h * k_w * (C_in / groups) * C_out * H_out * W_out (one step, one sample)."""
    kh, kw = conv.kernel_size
    return kh * kw * (conv.in_channels // conv.groups) * conv.out_channels * out_hw[0] * out_hw[1]


def linear_flops(lin: nn.Linear, positions: int = 1) -> int:
    """Eq. S2: in * out per position (one step, one sample)."""
    return lin.in_features * lin.out_features * positions


# ==================================================================================================
# Theory: VSA vs SSA vs SDSA (RQ2)
# ==================================================================================================
@dataclass
class AttentionCost:
    name: str
    terms: list[tuple[str, float, str, float]]  # (term, count per sample, op "MAC"|"AC"|"MUL"|"MASK", energy pJ)

    @property
    def energy_pj(self) -> float:
        return sum(t[3] for t in self.terms)

    @property
    def energy_mj(self) -> float:
        return self.energy_pj / PJ_PER_MJ

    def count(self, op: str) -> float:
        return sum(t[1] for t in self.terms if t[2] == op)


def check_theory_inputs(rate_max: float | None = 1.0, **values) -> None:
    """One ValueError naming the first bad value: N, D, T, heads, blocks whole numbers >= 1; rates (``rate*``)
    in [0, ``rate_max``] (None: any value >= 0, for what-if solving); energies (``e_*``) finite and > 0
    (``e_mask`` and ``e_mul`` may be 0). None values are skipped."""
    import math

    for k, v in values.items():
        if v is None:
            continue
        if k in ("N", "D", "T", "heads", "blocks"):
            ok, need = isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a whole number >= 1"
        elif k.startswith("rate"):
            ok = isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= (rate_max or math.inf)
            need = "a rate in [0, 1]" if rate_max == 1.0 else "a finite rate >= 0"
        elif k in ("e_mask", "e_mul"):
            ok, need = isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, "an energy >= 0 pJ"
        elif k.startswith("e_") or k == "target":
            ok, need = isinstance(v, (int, float)) and math.isfinite(v) and v > 0, "a finite energy > 0 pJ"
        else:
            continue
        if not ok:
            raise ValueError(f"{k} = {v!r} is not allowed: it must be {need}")


def attention_costs(N: int, D: int, T: int = 4, rate_q: float = 0.14, rate_k: float = 0.14, rate_v: float = 0.14,
                    rate_kv: float | None = None, *, rate_in: float = 0.14, rate_out: float = 0.14, heads: int = 1,
                    include_projections: bool = False, e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ,
                    e_mul: float | None = None, e_mask: float = 0.0) -> dict[str, AttentionCost]:
    """Operation counts and energy (per sample) of one self-attention of N tokens x D channels.

    VSA (ANN, one pass):  QKᵀ N²D MAC, scale heads·N² MUL, softmax 2·heads·N² MAC-equivalents, AV N²D MAC.
    SSA (Spikformer, T steps): QKᵀ on spikes T·R_q·N²D AC, (QKᵀ)V T·R_v·N²D AC, scale T·N·D MUL.
    SDSA (T steps): K⊙V and Q⊙mask masks (T·N·D each, ``e_mask`` pJ, 0 by default), column sum T·R_kv·N·D AC.
    ``rate_kv`` (non-zero fraction of K⊙V, the paper's R̂) defaults to rate_k·rate_v.
    ``include_projections`` adds Q/K/V (3ND²) and output (ND²) projections: MACs for VSA, T·R·FLOPs ACs for the
    spiking ones (input rate ``rate_in`` for Q/K/V, ``rate_out`` for the output projection).
    ``heads=1`` follows the paper's N² terms; the model's 8 heads multiply the scale/softmax terms by 8.
    """
    check_theory_inputs(N=N, D=D, T=T, rate_q=rate_q, rate_k=rate_k, rate_v=rate_v, rate_kv=rate_kv, rate_in=rate_in,
                        rate_out=rate_out, heads=heads, e_mac=e_mac, e_ac=e_ac, e_mul=e_mul, e_mask=e_mask)
    e_mul = e_mac - e_ac if e_mul is None else e_mul
    rkv = rate_k * rate_v if rate_kv is None else rate_kv
    ND, N2D, N2 = N * D, N * N * D, N * N
    vsa = [("QK^T", N2D, "MAC", e_mac * N2D), ("scale", heads * N2, "MUL", e_mul * heads * N2),
           ("softmax", 2 * heads * N2, "MAC", e_mac * 2 * heads * N2), ("AV", N2D, "MAC", e_mac * N2D)]
    ssa = [("QK^T", T * rate_q * N2D, "AC", e_ac * T * rate_q * N2D),
           ("(QK^T)V", T * rate_v * N2D, "AC", e_ac * T * rate_v * N2D),
           ("scale", T * ND, "MUL", e_mul * T * ND)]
    sdsa = [("K*V mask", T * ND, "MASK", e_mask * T * ND), ("column sum", T * rkv * ND, "AC", e_ac * T * rkv * ND),
            ("Q*mask", T * ND, "MASK", e_mask * T * ND)]
    if include_projections:
        p_in, p_out = 3 * N * D * D, N * D * D
        vsa = [("QKV proj", p_in, "MAC", e_mac * p_in)] + vsa + [("out proj", p_out, "MAC", e_mac * p_out)]
        for lst in (ssa, sdsa):
            lst.insert(0, ("QKV proj", T * rate_in * p_in, "AC", e_ac * T * rate_in * p_in))
            lst.append(("out proj", T * rate_out * p_out, "AC", e_ac * T * rate_out * p_out))
    return {"VSA": AttentionCost("VSA", vsa), "SSA": AttentionCost("SSA", ssa), "SDSA": AttentionCost("SDSA", sdsa)}


def theoretical_report(N: int, D: int, T: int = 4, *, rate: float = 0.14, rate_kv: float | None = None,
                       heads: int = 1, e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ, blocks: int = 1) -> str:
    """Text table: VSA / SSA / SDSA counts and energy for the attention operator and the whole attention module."""
    lines = [f"self-attention cost per sample: N={N} tokens, D={D} channels, T={T}, uniform rate R={rate}, "
             f"R_kv={rate * rate if rate_kv is None else rate_kv:.4g}, heads={heads}, blocks={blocks}, "
             f"E_MAC={e_mac} pJ, E_AC={e_ac} pJ (masks free)"]
    for proj in (False, True):
        c = attention_costs(N, D, T, rate, rate, rate, rate_kv, rate_in=rate, rate_out=rate, heads=heads,
                            include_projections=proj, e_mac=e_mac, e_ac=e_ac)
        lines.append("")
        lines.append("attention module incl. Q/K/V + output projections:" if proj else
                     "attention operator f(Q,K,V) only:")
        lines.append(f"  {'':5s} {'MAC':>12s} {'AC':>12s} {'MUL':>12s} {'mask':>12s} {'energy':>14s} {'vs SDSA':>10s}")
        ref = c["SDSA"].energy_pj
        for k, v in c.items():
            e = v.energy_pj * blocks
            lines.append(f"  {k:5s} {si(v.count('MAC') * blocks):>12s} {si(v.count('AC') * blocks):>12s} "
                         f"{si(v.count('MUL') * blocks):>12s} {si(v.count('MASK') * blocks):>12s} "
                         f"{e / 1e6:11.4f} uJ {v.energy_pj / ref if ref else float('inf'):9.1f}x")
    return "\n".join(lines)


def analyze_87x(N: int = 196, D: int = 512, T: int = 4, rate: float = 0.14, rate_kv: float = 0.02,
                target: float = 87.2, e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ) -> list[dict]:
    """Which counting assumption turns VSA/SDSA into ``target`` (the paper's "up to 87.2x")?

    For each hypothesis: the ratio at the given rates, and the value of the one free rate that would give
    exactly ``target`` (the SDSA energy is linear in it, so it is solved in closed form).
    """
    # a rate above 1 is a valid what-if here (the solver reports which value 87.2x would need)
    check_theory_inputs(None, N=N, D=D, T=T, rate=rate, rate_kv=rate_kv, target=target, e_mac=e_mac, e_ac=e_ac)
    ND, N2D, N2, P = N * D, N * N * D, N * N, 4 * N * D * D
    out = []

    def add(label, vsa_pj, sdsa_fixed_pj, sdsa_per_rate_pj, free, value):
        ratio = vsa_pj / (sdsa_fixed_pj + sdsa_per_rate_pj * value)
        needed = (vsa_pj / target - sdsa_fixed_pj) / sdsa_per_rate_pj
        out.append({"hypothesis": label, "vsa_pj": vsa_pj, "sdsa_pj": sdsa_fixed_pj + sdsa_per_rate_pj * value,
                    "ratio": ratio, "free_parameter": free, "value_used": value, "value_for_target": needed})

    vsa_op = e_mac * 2 * N2D
    vsa_sm = vsa_op + (e_mac - e_ac) * N2 + e_mac * 2 * N2
    add("operator only: E_MAC*2N^2D vs E_AC*T*R_kv*N*D (paper Table 1 f(Q,K,V))", vsa_op, 0, e_ac * T * ND,
        "R_kv", rate_kv)
    add("operator + scale + softmax vs E_AC*T*R_kv*N*D", vsa_sm, 0, e_ac * T * ND, "R_kv", rate_kv)
    add("module (Q/K/V/out projections + operator), projections at rate R", vsa_sm + e_mac * P,
        e_ac * T * rate_kv * ND, e_ac * T * P, "R (projection input rate)", rate)
    add("block (module + MLP 8ND^2), all inputs at rate R", vsa_sm + e_mac * (P + 2 * P),
        e_ac * T * rate_kv * ND, e_ac * T * 3 * P, "R (all layer inputs)", rate)
    add("per-operation: same op count on both sides, E_MAC vs E_AC*T*R_kv", e_mac, 0, e_ac * T, "R_kv", rate_kv)
    add("operator, SDSA counted over N^2D like a matmul: E_MAC*2N^2D vs E_AC*T*R*2N^2D (= SSA-style)", vsa_op, 0,
        e_ac * T * 2 * N2D, "R", rate)
    return out


