"""A one-node SLURM cluster on localhost for the tests, started from Debian's packages the way ../shared/DESIGN.md
records (field facts, 2026-12-06: slurm 22.05 in a container without systemd).

Everything the cluster owns lives in one state folder: its munge key and munged socket (`AuthInfo=socket=...`), its
slurm.conf, controller state, spool, pid and log files. Clients and daemons find the configuration through
$SLURM_CONF, never /etc/slurm/slurm.conf, and the controller and node daemon listen on free ports of their own, so
a cluster already running on the machine (and its munged) is neither used nor disturbed. The node's line comes from
`slurmd -C` (what the machine has: a configured CPU count above it would drain the node).

    cluster = start_cluster()          # ~15 s; raises with the daemons' log tails when the node does not come up
    subprocess.run(["sinfo"], env=cluster.env())
    cluster.stop()                     # cancels what is left, stops the daemons by their pid files

`shared_cluster(folder)` hands one cluster to every pytest-xdist worker of a session: the first worker starts it,
the last one leaving stops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

# Debian bookworm: slurmctld, slurmd, slurm-client (sinfo, sbatch, srun, squeue, scancel, scontrol) and munge
BINARIES = ("slurmctld", "slurmd", "sinfo", "sbatch", "srun", "squeue", "scancel", "scontrol", "munged")
PARTITION = "debug"
START_TIMEOUT_S = 90.0  # ~15 s measured here; a loaded CI machine gets room
# A requeued job waits the credential lifetime before it may start again (slurm.conf AuthInfo cred_expire, 120 s by
# default); the tests requeue a job and wait for it
CRED_EXPIRE_S = 5
# scancel sends SIGTERM, then SIGKILL after KillWait (30 s by default); submitit's jobs let SIGTERM pass, so without a
# short wait a cancelled job's tiny cell would finish first
KILL_WAIT_S = 2


def missing_binaries() -> list[str]:
    """The SLURM / munge programs this machine lacks (CI installs them: .ci/run)."""
    return [name for name in BINARIES if _which(name) is None]


def _which(name: str) -> str | None:
    # the daemons live in /usr/sbin, outside a non-root PATH
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class SlurmCluster:
    state: str  # the folder holding everything the cluster owns
    node: str  # the node's name (this machine's hostname)
    partition: str = PARTITION

    @property
    def conf(self) -> Path:
        return Path(self.state) / "slurm.conf"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) with $SLURM_CONF naming this cluster's configuration."""
        return {**(os.environ if base is None else base), "SLURM_CONF": str(self.conf)}

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster; its output as text."""
        return subprocess.run(
            [_which(command[0]) or command[0], *command[1:]],
            env=self.env(),
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def node_state(self) -> str:
        done = self.run("sinfo", "-h", "-N", "-o", "%t", check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    def logs(self) -> str:
        """The daemons' log tails, for a start that failed."""
        tails = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            path = Path(self.state) / name
            lines = path.read_text(errors="replace").splitlines()[-15:] if path.exists() else ["(none)"]
            tails.append(f"--- {path}\n" + "\n".join(lines))
        return "\n".join(tails)

    def stop(self) -> None:
        """Cancel every job left, wait a little for them to leave, then stop slurmd, slurmctld and munged by their
        pid files (the order that lets the node report its jobs' ends)."""
        self.run("scancel", "--user", _user(), check=False)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.run("squeue", "-h", check=False).stdout.strip():
            time.sleep(0.5)
        for name in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            _stop_pid_file(Path(self.state) / name)
        shutil.rmtree(self.state, ignore_errors=True)


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _stop_pid_file(path: Path, timeout_s: float = 15.0) -> None:
    """SIGTERM the daemon whose pid `path` holds and wait for it to go (SIGKILL after `timeout_s`)."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # ProcessLookupError once it is gone
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def _node_line() -> tuple[str, str]:
    """(node name, the node's slurm.conf line) from `slurmd -C` (what the hardware has), addressed on localhost."""
    printed = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    line = next(part for part in printed.splitlines() if part.startswith("NodeName="))
    name = line.split()[0].removeprefix("NodeName=")
    return name, f"{line} NodeAddr=127.0.0.1 State=UNKNOWN"


def _write_conf(state: Path, node: str, node_line: str, user: str) -> None:
    conf = f"""\
ClusterName=vistogtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={state}/munge.sock,cred_expire={CRED_EXPIRE_S}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
ReturnToService=2
KillWait={KILL_WAIT_S}
{node_line}
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    (state / "slurm.conf").write_text(conf)


def start_cluster() -> SlurmCluster:
    """munged with a fresh key, slurmctld and slurmd on free ports; returns once `sinfo` shows the node idle."""
    # munged requires every folder above its socket to be searchable by all (pytest's tmp root is mode 700), and its
    # socket path must fit a unix socket name (108 bytes): a short folder under the system's temporary root
    state = Path(tempfile.mkdtemp(prefix="vistog-slurm-"))
    state.chmod(0o755)
    (state / "key").mkdir(mode=0o700)
    (state / "ctld").mkdir()
    (state / "spool").mkdir()
    key = state / "key" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node, node_line = _node_line()
    cluster = SlurmCluster(state=str(state), node=node)
    _write_conf(state, node, node_line, _user())
    try:
        munged = [
            _which("munged"),
            f"--socket={state}/munge.sock",
            f"--key-file={key}",
            f"--pid-file={state}/munged.pid",
            f"--log-file={state}/munged.log",
            f"--seed-file={state}/munged.seed",
        ]
        subprocess.run(munged, check=True, capture_output=True, timeout=30)
        subprocess.run([_which("slurmctld"), "-i", "-f", str(cluster.conf)], env=cluster.env(), check=True, timeout=30)
        subprocess.run([_which("slurmd"), "-f", str(cluster.conf)], env=cluster.env(), check=True, timeout=30)
        deadline = time.monotonic() + START_TIMEOUT_S
        while cluster.node_state() != "idle":
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the node is not idle after {START_TIMEOUT_S:.0f} s (sinfo: {cluster.node_state()!r})"
                )
            time.sleep(0.5)
    except (subprocess.SubprocessError, RuntimeError) as exc:
        logs = cluster.logs()
        cluster.stop()
        raise RuntimeError(f"the one-node SLURM cluster did not start: {exc}\n{logs}") from exc
    return cluster


@contextlib.contextmanager
def shared_cluster(folder: Path) -> Iterator[SlurmCluster]:
    """One cluster for every pytest-xdist worker that asks within `folder` (the session's shared temporary root):
    the record `slurm-cluster.json` names it and counts its users under a file lock."""
    from filelock import FileLock

    record = folder / "slurm-cluster.json"
    with FileLock(str(folder / "slurm-cluster.lock")):
        entry = json.loads(record.read_text()) if record.exists() else None
        cluster = SlurmCluster(**entry["cluster"]) if entry else None
        if cluster is None or not cluster.node_state():  # none yet, or its daemons are gone (a crashed session)
            cluster = start_cluster()
            entry = {"cluster": asdict(cluster), "users": 0}
        entry["users"] += 1
        record.write_text(json.dumps(entry))
    try:
        yield cluster
    finally:
        with FileLock(str(folder / "slurm-cluster.lock")):
            entry = json.loads(record.read_text())
            entry["users"] -= 1
            if entry["users"] == 0:
                record.unlink()
                cluster.stop()
            else:
                record.write_text(json.dumps(entry))
