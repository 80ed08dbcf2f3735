"""Reliability: the whole federation as real processes under faults (and, in bench/soak.py, under load)."""
