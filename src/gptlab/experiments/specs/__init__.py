"""Experiment specs and their plan (the dry run)."""
