"""Measurement and demonstration: evaluation metrics and runners, benchmarks, the demo, synthetic clips."""
