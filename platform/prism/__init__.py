"""Prism."""
