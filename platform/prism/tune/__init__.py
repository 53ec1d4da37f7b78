"""Ray Tune sweeps over any job-config key; every trial is a ``prism train`` run (``prism tune``).

Modules: ``space`` (the YAML search space, parsed and validated without Ray), ``trial`` (the function
trainable: one Train run per trial, metrics to Tune and MLflow), ``results`` (the per-trial table,
closing the trials' MLflow runs), ``plots`` (best metric against each searched key), ``sweep``
(:func:`run_sweep`, what the command calls).
"""

from prism.tune.space import (
    DISTRIBUTIONS,
    Dimension,
    SearchSpace,
    SweepSettings,
    load_space,
    parse_space,
    validate_space,
)

__all__ = [
    "DISTRIBUTIONS",
    "Dimension",
    "SearchSpace",
    "SweepOutcome",
    "SweepSettings",
    "load_space",
    "parse_space",
    "run_sweep",
    "validate_space",
]


def __getattr__(name: str):  # run_sweep pulls in Ray Tune and MLflow: import it on first use
    if name in ("run_sweep", "SweepOutcome"):
        from prism.tune import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
