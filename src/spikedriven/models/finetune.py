"""Weights trained for another number of classes (fine-tuning, timm's convention for a pretrained checkpoint).

A checkpoint whose classifier has another number of outputs than the model's loads everything but the
classifier(s); the model keeps its freshly initialised head(s) and the caller reports which ones in one line.
The classifier modules of a family are its registry metadata (``ModelFamily.classifier``: V1 ``head``, V2
``head`` and ``head_kd``), so a new family declares them once and needs nothing here.
"""
from __future__ import annotations

from torch import nn

from .registry import family, list_families

__all__ = ["classifier_names", "checkpoint_classes", "without_classifier"]


def classifier_names(model: nn.Module) -> tuple[str, ...]:
    """The family's classifier modules (registry ``classifier``; ``head`` for a model of no known family)."""
    fam = getattr(model, "model_family", None)
    names = family(fam).classifier if fam in list_families() else "head"
    return (names,) if isinstance(names, str) else tuple(names)


def _is_classifier_key(key: str, names) -> bool:
    return any(key.startswith(n + ".") for n in names)


def checkpoint_classes(sd: dict, names) -> int | None:
    """Number of classes of a state_dict's classifier (rows of its first classifier's weight); None without one."""
    for n in names:
        w = sd.get(f"{n}.weight")
        if w is not None and w.ndim == 2:
            return int(w.shape[0])
    return None


def without_classifier(model: nn.Module, sd: dict, source: str = "checkpoint") -> tuple[dict, str | None]:
    """``(state_dict, note)``: when ``sd``'s classifier has another number of classes than ``model``, a copy of
    ``sd`` whose classifier entries are the model's own (fresh) ones and a one-line note naming them; otherwise
    ``(sd, None)``. Every other key is left to the caller's (strict) loading."""
    names = classifier_names(model)
    ck = checkpoint_classes(sd, names)
    mine = int(getattr(model, "num_classes", -1))
    if ck is None or ck == mine:
        return sd, None
    own = model.state_dict()
    kept = {k: v for k, v in sd.items() if not _is_classifier_key(k, names)}
    fresh = [k for k in own if _is_classifier_key(k, names)]
    kept.update({k: own[k] for k in fresh})
    heads = [n for n in names if any(k.startswith(n + ".") for k in fresh)]
    what = (f"the classifier ({', '.join(heads)}) starts re-initialised for {mine} classes" if heads else
            "the classifier is dropped (the model has no classifier: features only)")
    note = (f"fine-tuning: {source} was trained for {ck} classes, the model has {mine}: loaded every weight but "
            f"the classifier; {what}")
    return kept, note
