"""Running a matrix: the runner, its stop handling and the scheduler backends (local, SLURM, SkyPilot), and status."""
