"""MLflow tracking and registry for Prism: store setup, run logging, plots, registry, pyfunc."""

from prism.tracking.plots import log_figure, log_history_plots
from prism.tracking.registry import promote_if_better, set_alias
from prism.tracking.resolve import describe_model, resolve_model_uri
from prism.tracking.runs import flatten_params, log_epoch, log_resolved_config, tag_stages
from prism.tracking.store import browse_command, configure_tracking, get_or_create_experiment

__all__ = [
    "browse_command",
    "configure_tracking",
    "describe_model",
    "flatten_params",
    "get_or_create_experiment",
    "log_epoch",
    "log_figure",
    "log_history_plots",
    "log_resolved_config",
    "promote_if_better",
    "resolve_model_uri",
    "set_alias",
    "tag_stages",
]
