"""Aggregation math on lists of arrays (numpy only)."""
