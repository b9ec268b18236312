"""Firing rates, operation counts and theoretical energy of spiking models (paper §4 / supplement S1-S2).

    report.py   the per-layer report (LayerEnergy, EnergyReport) and its table / CSV / JSON
    profile.py  measured: hooks on every conv/linear input while the model runs over data; or shapes only
                at a uniform firing rate (``energy_from_config``)
    theory.py   closed form: layer FLOPs, VSA vs SSA vs SDSA attention costs, the "87.2x" analysis
"""
from .profile import energy_from_config, profile_model
from .report import E_AC_PJ, E_MAC_PJ, E_MUL_PJ, PJ_PER_MJ, EnergyReport, LayerEnergy
from .theory import AttentionCost, analyze_87x, attention_costs, conv_flops, linear_flops, theoretical_report

__all__ = [
    "E_MAC_PJ", "E_AC_PJ", "E_MUL_PJ", "PJ_PER_MJ", "LayerEnergy", "EnergyReport", "profile_model",
    "energy_from_config", "conv_flops", "linear_flops", "AttentionCost", "attention_costs", "theoretical_report",
    "analyze_87x",
]
