"""A one-node SLURM cluster on localhost for workflow tests (Debian's slurm-wlm and munge).

`SlurmCluster(root).start()` writes a munge key and a slurm.conf under `root`, starts munged,
slurmctld and slurmd as child processes (foreground mode, own sockets, ports, spool, state and
log files, so nothing of the machine's own SLURM or munge set-up is touched), and waits until the
node is idle. `stop()` cancels what is still queued and ends exactly the daemons it started.

The cluster has no accounting database: `MinJobAge=600` keeps finished jobs visible to `squeue`
for ten minutes, which is what snakemake-executor-plugin-slurm's `--slurm-status-command squeue`
relies on. Partition `cpu` (default) and partition `gpu` share the node; the node carries two
GPU GRES backed by /dev/null and /dev/zero, so `--gres=gpu:1` / `--gpus=1` requests are scheduled
for real (SLURM sets CUDA_VISIBLE_DEVICES; torch still finds no CUDA device and runs on the CPU).
Two, not one: the demo's two shards then run their model stages side by side on a two-core CI
machine instead of queueing for a single stand-in GPU (which doubled the model stages' time).
Up to four jobs share a core (OverSubscribe=FORCE:4): a CI machine has two, and a workflow's
waves of short jobs then start together instead of waiting for the next status check.
Clients find this cluster through SLURM_CONF (`client_env()`); bin/srun puts it back for the
`srun` that snakemake's jobstep runs with SLURM_* cleared (see `write_config`).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")
NODE = "gfnode"
GPU_FILES = ("/dev/null", "/dev/zero")


class SlurmUnavailable(RuntimeError):
    pass


def require_slurm() -> None:
    """Raise with what to do when the Debian packages are missing or we are not root."""
    missing = [tool for tool in DAEMONS + CLIENTS if shutil.which(tool) is None]
    if missing:
        raise SlurmUnavailable(
            f"SLURM/munge tools not found: {', '.join(missing)}. "
            "Install Debian's slurm-wlm and munge: run `make system-deps` (as root)."
        )
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            "the one-node SLURM test cluster runs slurmd, which launches jobs, and so needs "
            "root (CI runs as root)."
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_hardware() -> dict[str, str]:
    """The node as slurmd itself sees it (`slurmd -C`), so the config matches the hardware."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0]))
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    return {k: fields[k] for k in keep if k in fields}


class SlurmCluster:
    def __init__(self, root: Path | None = None, min_job_age: int = 600):
        # munged insists that every directory above its socket be searchable by all, so the
        # cluster lives in a fresh 0755 folder (pytest's tmp folders are 0700).
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="gf-slurm-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.conf = self.root / "slurm.conf"
        self.min_job_age = min_job_age
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def env(self) -> dict[str, str]:
        """Environment for SLURM clients (sbatch, squeue, ...) to talk to this cluster."""
        return {**os.environ, **self.client_env()}

    def client_env(self) -> dict[str, str]:
        """SLURM_CONF names this cluster's config; bin/ goes first on PATH for the srun below."""
        return {"SLURM_CONF": str(self.conf), "PATH": f"{self.bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, env=self.env, check=check, timeout=60)

    # -- set-up ------------------------------------------------------------------------------
    def write_config(self) -> None:
        r = self.root
        for sub in ("state", "spool", "log"):
            (r / sub).mkdir(exist_ok=True)
        key = r / "munge.key"
        subprocess.run(["mungekey", "--create", "--force", f"--keyfile={key}"], check=True, capture_output=True)
        key.chmod(0o400)
        host = socket.gethostname().split(".")[0]
        hardware = " ".join(f"{k}={v}" for k, v in _node_hardware().items())
        self.conf.write_text(
            f"""# one-node test cluster written by tests/workflow/slurm_cluster.py
ClusterName=groundflow-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r / "munge.socket"}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "slurmctld.pid"}
SlurmdPidFile={r / "slurmd.pid"}
SlurmctldLogFile={r / "log" / "slurmctld.log"}
SlurmdLogFile={r / "log" / "slurmd.log"}
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge={self.min_job_age}
GresTypes=gpu
NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 {hardware} Gres=gpu:{len(GPU_FILES)} State=UNKNOWN
PartitionName=cpu Nodes={NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
PartitionName=gpu Nodes={NODE} MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""
        )
        # slurmd reads gres.conf beside slurm.conf; character devices every machine has stand in
        # for the GPU device files (one file per GPU)
        (r / "gres.conf").write_text("AutoDetect=off\n" + "".join(
            f"NodeName={NODE} Name=gpu File={path}\n" for path in GPU_FILES))
        # Inside a job, snakemake-executor-plugin-slurm-jobstep (0.6.1) runs the rule with `srun`
        # after dropping every SLURM_* variable, SLURM_CONF included, so srun would look for
        # /etc/slurm/slurm.conf or a configless slurmd's /run/slurm/conf, where a real cluster
        # keeps its config. This cluster lives in a temp folder and names its config through
        # SLURM_CONF only; this srun puts it back and runs the real one.
        self.bin_dir.mkdir(exist_ok=True)
        srun = self.bin_dir / "srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec {shutil.which("srun")} "$@"\n')
        srun.chmod(0o755)

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")
        self.processes[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()

    def start(self, timeout: float = 90) -> "SlurmCluster":
        require_slurm()
        self.write_config()
        r = self.root
        try:
            self._spawn("munged", ["munged", "--foreground", f"--socket={r / 'munge.socket'}",
                                   f"--key-file={r / 'munge.key'}", f"--pid-file={r / 'munged.pid'}",
                                   f"--seed-file={r / 'munged.seed'}", f"--log-file={r / 'log' / 'munged.log'}"])
            self._wait(lambda: (r / "munge.socket").exists(), timeout, "munged to create its socket")
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            self._wait(lambda: self.run("scontrol", "ping", check=False).stdout.count("UP") > 0,
                       timeout, "slurmctld to answer `scontrol ping`")
            self._spawn("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(self.conf)])
            self._wait(lambda: self.node_state() == "idle", timeout, f"node {NODE} to become idle")
        except BaseException:
            self.stop()
            raise
        return self

    def node_state(self) -> str:
        out = self.run("sinfo", "--noheader", "--Node", "--format=%t", check=False)
        return out.stdout.split()[0] if out.returncode == 0 and out.stdout.split() else ""

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.logs()}")

    def logs(self, tail: int = 30) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # -- queries -----------------------------------------------------------------------------
    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still remembers (finished ones for MinJobAge seconds)."""
        fields = {"id": "%i", "name": "%j", "partition": "%P", "comment": "%k", "gres": "%b", "state": "%T",
                  "start": "%S", "end": "%e"}
        fmt = "|".join(fields.values())
        out = self.run("squeue", "--states=all", "--noheader", f"--format={fmt}").stdout
        return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]

    # -- tear-down ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel queued or running jobs (their slurmstepd outlives slurmd), then end the
        daemons this object started, newest first."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run("scancel", "--full", f"--user={os.geteuid()}", check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                active = self.run("squeue", "--noheader", "--format=%i", check=False)
                if active.returncode != 0 or not active.stdout.strip():
                    break
                time.sleep(0.5)
        for name in reversed(list(self.processes)):
            proc = self.processes[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        self.processes.clear()
