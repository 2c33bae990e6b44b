"""fedshield: server."""
