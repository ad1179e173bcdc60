"""Data: reading files, synthetic data, splits and patches."""
