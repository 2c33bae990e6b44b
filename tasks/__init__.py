"""fedshield: tasks."""
