"""The result of comparing the engine with the dense model (``compare_with_model``), for every family."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Agreement"]


@dataclass
class Agreement:
    neurons: int = 0
    mismatched: int = 0
    per_layer: dict = field(default_factory=dict)  # name -> (mismatched, neurons)
    samples: int = 0
    same_prediction: int = 0
    samples_with_flip: int = 0
    max_logit_diff: float = 0.0
    # where the flips start: in each sample with a flip, the first neuron layer (in execution order) that differs has
    # identical input spikes upstream, so its pre-activations differ only by float summation order; every neuron's
    # first differing step there is an "origin", with the model's membrane margin |H - V_th| at that step
    origins: int = 0
    origin_layers: dict = field(default_factory=dict)  # name -> origin count
    origin_margins: list = field(default_factory=list)  # |H - V_th| of every origin (model units)

    @property
    def fraction(self) -> float:
        return 1.0 - self.mismatched / self.neurons if self.neurons else 1.0

    @property
    def max_origin_margin(self) -> float:
        return max(self.origin_margins) if self.origin_margins else 0.0

    def origins_are_ties(self, tol: float = 1e-4) -> bool:
        """Every flip starts within ``tol`` of a threshold (a float tie), or there is no flip."""
        return all(m <= tol for m in self.origin_margins)

    def layer_fractions(self) -> dict:
        """name -> fraction of identical neuron-steps of that layer."""
        return {k: 1.0 - m / n if n else 1.0 for k, (m, n) in self.per_layer.items()}

    def update(self, other: "Agreement") -> "Agreement":
        self.neurons += other.neurons
        self.mismatched += other.mismatched
        for k, (m, n) in other.per_layer.items():
            a, b = self.per_layer.get(k, (0, 0))
            self.per_layer[k] = (a + m, b + n)
        self.samples += other.samples
        self.same_prediction += other.same_prediction
        self.samples_with_flip += other.samples_with_flip
        self.max_logit_diff = max(self.max_logit_diff, other.max_logit_diff)
        self.origins += other.origins
        for k, n in other.origin_layers.items():
            self.origin_layers[k] = self.origin_layers.get(k, 0) + n
        self.origin_margins += other.origin_margins
        return self

    def summary(self) -> str:
        lines = [f"spike agreement {self.fraction:.6%} ({self.mismatched} of {self.neurons} neuron-steps differ; "
                 f"{self.samples_with_flip} of {self.samples} samples have any flip); same prediction "
                 f"{self.same_prediction}/{self.samples}; max |logit diff| {self.max_logit_diff:.3g}"]
        if self.origins:
            where = ", ".join(f"{k}: {n}" for k, n in self.origin_layers.items())
            lines.append(f"flips start at {self.origins} neuron-steps ({where}); max |H - V_th| there "
                         f"{self.max_origin_margin:.3g}")
        for k, (m, n) in self.per_layer.items():
            if m:
                lines.append(f"  {k:40s} {m} / {n}")
        return "\n".join(lines)
