"""Deployment targets (edge bundles, serving engines). Never imports torch."""
