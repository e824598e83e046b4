"""Experiments, in layers (lowest first; a module imports only its own layer and those below, which
tests/test_layers.py checks):

- `specs/`: an experiment spec (experiment.py), a ladder spec (ladder.py), the planned matrix (matrix.py: each run's
  config resolved once), the plan a dry run prints (plan.py) and the confirmation spec at a target (confirm.py);
- `results.py`: the results database (results.sqlite);
- `analysis/`: statistics over results (stats, sequential designs, tuning, scaling fits, yardsticks, ladders);
- `report/`: the Markdown/HTML reports, tables, plots and the leaderboard;
- `run/`: the runner and its scheduler backends (local, SLURM, SkyPilot), the ladder's runner, and status."""
