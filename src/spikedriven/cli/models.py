"""``spikedriven models [PATTERN]``: the model zoo of every family."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model zoo (every family)",
                       description="List registered models. PATTERN is a glob ('sdt_cifar*') or a plain word that "
                                   "matches names containing it ('cifar').")
    p.add_argument("pattern", nargs="?", default="*", help="glob or word to filter names (default: all)")
    p.add_argument("--family", help="only this family (sdt, sdt_v2, sdt_v3)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..models.registry import list_models, model_info

    names = list_models(args.pattern, family=args.family)
    if not names:
        print(f"no registered model matches {args.pattern!r}" + (f" in family {args.family}" if args.family else ""))
        return 1
    rows = [("name", "family", "dataset", "T", "img", "params", "paper top-1", "official config")]
    for n in names:
        i = model_info(n)
        k = i.full_kwargs()
        rows.append((n, i.family, i.dataset, str(k.get("T", "")), str(k.get("img_size", "")),
                     f"{i.params:,}" if i.params else "-",
                     f"{i.paper_top1}" if i.paper_top1 else "-", i.official_config or "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))
    return 0
