"""fedshield: simulations."""
