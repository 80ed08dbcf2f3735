"""The shared protocol library: no I/O, depended on by the hub, nodes, CLI and auditors.

The specification is docs/protocol.md; modules link to its sections rather than
repeating it.
"""
