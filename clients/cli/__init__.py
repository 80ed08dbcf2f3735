"""The ``intelhub`` command: one click group, a module per user (docs in README.md)."""
