"""MLflow tracking and registry for Prism: store setup, run logging, plots, registry, pyfunc."""

from prism.tracking.plots import log_figure, log_history_plots
from prism.tracking.registry import Promotion, promote, promote_if_better, set_alias
from prism.tracking.resolve import describe_model, resolve_model_uri
from prism.tracking.runs import flatten_params, log_epoch, log_resolved_config, tag_stages
from prism.tracking.store import browse_command, configure_tracking, get_or_create_experiment, redact_uri

__all__ = [
    "Promotion",
    "browse_command",
    "configure_tracking",
    "describe_model",
    "flatten_params",
    "get_or_create_experiment",
    "log_epoch",
    "log_figure",
    "log_history_plots",
    "log_resolved_config",
    "promote",
    "promote_if_better",
    "redact_uri",
    "resolve_model_uri",
    "set_alias",
    "tag_stages",
]
