"""Accountability tools: the log's formats as readers see them, the log client, completeness, verification, bundles."""
