"""Runs that will not (or did not) learn, said in one line with what to change.

- a schedule that is mostly learning-rate warm-up (a 1-epoch run with the default 1 warm-up epoch trains at
  ``warmup_lr`` throughout and ends untrained);
- a trained model whose neurons are all silent (no spike reaches the head: its output ignores the input).
"""
from __future__ import annotations

__all__ = ["warmup_warning", "silence_warning", "SILENT_RATE"]

SILENT_RATE = 5e-4  # below this every layer prints as 0.000 in the firing-rate summary


def warmup_warning(r, num_epochs: int) -> str | None:
    """One line when at least half of the ``num_epochs`` epochs run are warm-up, else None."""
    sched = str(r.get("sched") or "none").lower()
    warm = int(r.get("warmup_epochs") or 0)
    if sched in ("none", "constant", "") or warm <= 0 or float(r["warmup_lr"]) >= float(r["lr"]):
        return None
    if 2 * warm < int(num_epochs):
        return None
    return (f"{min(warm, num_epochs)} of the {num_epochs} epoch(s) are learning-rate warm-up (lr rises from "
            f"{float(r['warmup_lr']):g} toward {float(r['lr']):g}): the run may end untrained; raise --epochs to "
            f"several times --warmup-epochs, or lower --warmup-epochs (0: no warm-up)")


def silence_warning(model, batches, r=None) -> str | None:
    """One line when every neuron layer of ``model`` is silent on ``batches`` (tensors), else None."""
    from ..probe import firing_rates

    rates = firing_rates(model, batches)
    if not rates or max(rates.values()) >= SILENT_RATE:
        return None
    n = sum(len(b) for b in batches)
    hint = "train longer (--epochs) or with a larger --lr"
    if r is not None and int(r.get("warmup_epochs") or 0) > 0:
        hint += ", with fewer --warmup-epochs"
    return (f"every neuron is silent after training (firing rate below {SILENT_RATE:g} in all {len(rates)} neuron "
            f"layers on {n} test samples): the prediction does not depend on the input; {hint}")
