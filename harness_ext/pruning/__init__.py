"""Pruning engine: plans, target discovery, the one calibration loop, and each method's mask function."""
