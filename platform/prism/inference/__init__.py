"""Inference on a trained model: the bundle format, the predictor, evaluation, export and the MLflow
pyfunc flavour. Imports ``prism.tracking`` (to resolve ``models:/`` URIs); tracking never imports this."""
