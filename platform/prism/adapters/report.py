"""A printable summary of what trains: tensors and parameters per parameter group (see `parameter_groups`)."""

from __future__ import annotations

from torch import nn

from prism.adapters.stages import parameter_groups

__all__ = ["trainable_report"]


def trainable_report(model: nn.Module) -> str:
    """Table of trainable tensors and parameters, one row per group of `parameter_groups(model)`, e.g.
    (dinov2_tiny with backbone LoRA on 2 blocks and a head site "decoder", LoRA stage)

        group             tensors     trainable  % of total
        head                  4/4           243       0.18%
        head.decoder         0/13             0       0.00%
        lora.backbone         8/8         2,304       1.69%
        lora.decoder          8/8           768       0.56%
        backbone             0/48             0       0.00%
        total               20/81         3,315       2.43%   of 136,515 parameters

    "tensors" is trainable / all tensors of the group; "% of total" is the group's trainable parameter
    count over all parameters of `model` (which has .backbone and .heads). Parameters outside every group
    get an "other" row.
    """
    groups = parameter_groups(model)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    rows = []
    for group, names in groups.items():
        trainable = [params[n] for n in names if params[n].requires_grad]
        rows.append((group, len(trainable), len(names), sum(p.numel() for p in trainable)))
    others = set(params) - set().union(*groups.values())
    if others:
        trainable = [params[n] for n in others if params[n].requires_grad]
        rows.append(("other", len(trainable), len(others), sum(p.numel() for p in trainable)))
    n_train = sum(r[1] for r in rows)
    p_train = sum(r[3] for r in rows)
    width = max(10, *(len(r[0]) + 2 for r in rows))

    def pct(count: int) -> str:
        return f"{100.0 * count / total:.2f}%" if total else "-"

    lines = [f"{'group':<{width}}{'tensors':>10}{'trainable':>14}{'% of total':>12}"]
    for group, n_t, n_all, count in rows:
        lines.append(f"{group:<{width}}{f'{n_t}/{n_all}':>10}{count:>14,}{pct(count):>12}")
    lines.append(
        f"{'total':<{width}}{f'{n_train}/{len(params)}':>10}{p_train:>14,}{pct(p_train):>12}"
        f"   of {total:,} parameters"
    )
    return "\n".join(lines)
