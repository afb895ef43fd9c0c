"""Measurement and demonstration: evaluation metrics and runners, benchmarks, demo, test clips."""
