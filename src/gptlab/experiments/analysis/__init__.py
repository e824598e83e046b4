"""Statistics over results: tests (stats), sequential designs, tuning, scaling fits (curves, scaling), yardsticks,
and what a screen says about its target (regime, seeds, rank)."""
