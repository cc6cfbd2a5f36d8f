"""Synthetic demo data and the embedded demo checkpoint."""
