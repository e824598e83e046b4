"""Statistics over results: tests, sequential designs, tuning, scaling fits, yardsticks."""
