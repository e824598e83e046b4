"""Experiments: the matrix spec and runner, results database, statistics, report, leaderboard, yardsticks."""
