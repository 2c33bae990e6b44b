"""fedshield: clients/attacks."""
