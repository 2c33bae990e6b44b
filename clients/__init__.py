"""fedshield: clients."""
