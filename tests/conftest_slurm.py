"""A real one-node SLURM cluster for the tests (imported explicitly: `from conftest_slurm import slurm_cluster`).

Reuses a working cluster (`sinfo` answers and a node is idle); otherwise, as root, writes a slurm.conf under a tmp
folder (this host as controller and only node, its real core count, one partition, proctrack/linuxproc,
task/none, select/cons_tres with CR_Core, free ports), creates a munge key if missing, starts munged, slurmctld
and slurmd, waits until the node is idle, points SLURM_CONF at it for the session (sbatch and the jobs inherit it)
and stops what it started at the end. Installs slurm-wlm and munge with apt-get when root and they are missing;
skips only when they are missing and this process is not root."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def _ok(cmd: list[str], env=None) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20, env=env).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _node_states(env=None) -> list[str]:
    try:
        r = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%T"], capture_output=True, text=True, timeout=20, env=env
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return r.stdout.split() if r.returncode == 0 else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _munge_works() -> bool:
    if shutil.which("munge") is None:
        return False
    m = subprocess.run(["munge", "-n"], capture_output=True, timeout=20)
    return m.returncode == 0 and _ok_input(["unmunge"], m.stdout)


def _ok_input(cmd, data: bytes) -> bool:
    return subprocess.run(cmd, input=data, capture_output=True, timeout=20).returncode == 0


def _stop(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def _wait(pred, seconds: float, what: str, log: Path | None = None) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    pytest.fail(f"SLURM test cluster: {what} not reached within {seconds:.0f}s\n{tail}")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """Yields the partition name of a working cluster."""
    if any(s.startswith(("idle", "mix")) for s in _node_states()):
        yield None  # a working cluster is already there: use its default partition
        return
    root = os.geteuid() == 0
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        if not root:
            pytest.skip("SLURM binaries (slurmctld, slurmd, munged) are missing and installing them needs root")
        r = subprocess.run(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge",
            shell=True,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, f"apt-get install slurm-wlm munge failed: {r.stderr[-2000:]}"
    if not root:
        pytest.skip("no working SLURM cluster (sinfo) and starting slurmd needs root")

    started: list[Path] = []
    old_conf = os.environ.get("SLURM_CONF")
    d = tmp_path_factory.mktemp("slurm")
    try:
        if not _munge_works():
            key = Path("/etc/munge/munge.key")
            munge = pwd.getpwnam("munge")
            if not key.exists():
                subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True, capture_output=True)
                os.chown(key, munge.pw_uid, munge.pw_gid)
                key.chmod(0o400)
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            os.chown("/run/munge", munge.pw_uid, munge.pw_gid)
            subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True, capture_output=True)
            started.append(Path("/run/munge/munged.pid"))
            _wait(_munge_works, 20, "munged answering")

        host = socket.gethostname().split(".")[0]
        for sub in ("state", "spool", "log"):
            (d / sub).mkdir()
        conf = d / "slurm.conf"
        conf.write_text(f"""\
ClusterName=gptlabtest
SlurmctldHost={host}
SlurmUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
KillWait=30
MinJobAge=300
NodeName={host} CPUs={os.cpu_count() or 1} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
        os.environ["SLURM_CONF"] = str(conf)
        subprocess.run(["slurmctld", "-f", str(conf)], check=True, capture_output=True)
        started.append(d / "slurmctld.pid")
        _wait(lambda: _ok(["scontrol", "ping"]), 30, "slurmctld answering", d / "log/slurmctld.log")
        subprocess.run(["slurmd", "-f", str(conf)], check=True, capture_output=True)
        started.append(d / "slurmd.pid")
        _wait(lambda: "idle" in _node_states(), 60, "node idle", d / "log/slurmd.log")
        yield "test"
    finally:
        if os.environ.get("SLURM_CONF") == str(d / "slurm.conf"):
            subprocess.run(["scancel", "--user", pwd.getpwuid(os.geteuid()).pw_name], capture_output=True)
        for pidfile in reversed(started):
            _stop(pidfile)
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
