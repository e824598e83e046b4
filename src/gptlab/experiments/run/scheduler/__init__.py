"""Where an experiment's runs execute.

The runner (run/matrix.py) is the only writer of results.sqlite. It hands each run to a backend as a
`RunJob`; the backend starts it (`gptlab train --resume` on the run's config, alone or under torchrun) and reports
its state; the runner then reads the result from the run folder. Backends: `local` (subprocesses on this machine,
in slots: the GPUs split by `plan_slots`, or N CPU processes per run), `slurm` (slurm.py: one sbatch job per run
through submitit, imported only when chosen). skypilot.py is not a backend: it writes a SkyPilot task that runs the
matrix on a cloud node with the local backend. A backend only starts and watches processes (and passes the runner's
stop signals on to them, `stop`): it never reads or writes results."""

from gptlab.experiments.run.scheduler.base import Backend, RunJob, State, train_command
from gptlab.experiments.run.scheduler.local import LocalBackend, plan_slots

__all__ = ["Backend", "LocalBackend", "RunJob", "State", "plan_slots", "train_command"]
