"""Helpers shared by test modules: tiny models and bundles, images, MLflow stores. No tests in here."""
