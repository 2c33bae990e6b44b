"""Benchmarks: commands that print figures and ratios against a baseline measured in the same run
(``fedshield bench aggregators|simulation|scaling|training``). Not part of the Flower app bundle."""
