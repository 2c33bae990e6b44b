"""A quickstart-style Flower app for fedshield's tests."""
