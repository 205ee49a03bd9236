"""Synthetic Orininu data: a deterministic bulk generator and a live workload."""
