"""A printable summary of what trains: tensors and parameters per group (head / lora / backbone)."""

from __future__ import annotations

from torch import nn

from prism.adapters.stages import GROUPS, parameter_groups

__all__ = ["trainable_report"]


def trainable_report(model: nn.Module) -> str:
    """Table of trainable tensors and parameters per group, e.g. (clip_tiny, LoRA stage)

        group        tensors     trainable  % of total
        head             2/2           147       0.11%
        lora           12/12         5,376       4.19%
        backbone        0/43             0       0.00%
        total          14/57         5,523       4.31%   of 128,259 parameters

    "tensors" is trainable / all tensors of the group; "% of total" is the group's trainable parameter
    count over all parameters of `model` (which has .backbone and .heads).
    """
    groups = parameter_groups(model)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    rows = []
    for group in GROUPS:
        names = groups[group]
        trainable = [params[n] for n in names if params[n].requires_grad]
        rows.append((group, len(trainable), len(names), sum(p.numel() for p in trainable)))
    others = set(params) - set().union(*groups.values())
    if others:
        trainable = [params[n] for n in others if params[n].requires_grad]
        rows.append(("other", len(trainable), len(others), sum(p.numel() for p in trainable)))
    n_train = sum(r[1] for r in rows)
    p_train = sum(r[3] for r in rows)

    def pct(count: int) -> str:
        return f"{100.0 * count / total:.2f}%" if total else "-"

    lines = [f"{'group':<10}{'tensors':>10}{'trainable':>14}{'% of total':>12}"]
    for group, n_t, n_all, count in rows:
        lines.append(f"{group:<10}{f'{n_t}/{n_all}':>10}{count:>14,}{pct(count):>12}")
    lines.append(
        f"{'total':<10}{f'{n_train}/{len(params)}':>10}{p_train:>14,}{pct(p_train):>12}   of {total:,} parameters"
    )
    return "\n".join(lines)
