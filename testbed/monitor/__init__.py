"""Watching a run: the live terminal dashboard, event sources, and the report with plots, all from events."""
