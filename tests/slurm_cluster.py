"""A real single-node Slurm (slurmctld + slurmd + munge) for the tests, following
`../shared/notes/slurm-single-node.md`.

`SlurmCluster().start()` is idempotent: when a cluster configured by this module already answers
(`scontrol ping`), it is reused; otherwise munged (if not running), slurmctld and slurmd are started
from a private config under `/tmp/halting_lab_slurm/` (nothing in `/etc/slurm` is touched). Each
test session holds a lease (`leases/<pid>`) while it uses the cluster; `stop()` drops it and
cancels every job and shuts the cluster down only when no other live session holds one and a test
session started it (two pytest runs on one machine share the cluster without killing each other's
jobs; a cluster started by hand with `python tests/slurm_cluster.py start` is left running).
Clients find the cluster through `SLURM_CONF`, which `env()` returns and `start()` exports.

`unavailable()` gives the reason the cluster cannot be started here (not root, daemons missing), or
None. Run as a script for manual work: `python tests/slurm_cluster.py start|stop|status`.
"""
from __future__ import annotations
import contextlib, fcntl, os, pwd, shutil, socket, subprocess, sys, time
from pathlib import Path

BASE = Path(os.environ.get('HALTING_LAB_SLURM_DIR', '/tmp/halting_lab_slurm'))
DAEMONS = ('slurmctld', 'slurmd', 'munged', 'sbatch', 'scontrol', 'squeue')


def _which(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for d in ('/usr/sbin', '/sbin', '/usr/bin')
                                      if (p := Path(d) / name).exists()), None)


def unavailable() -> str | None:
    "Why a real Slurm cannot be started here, or None."
    missing = [d for d in DAEMONS if not _which(d)]
    if missing:
        return f'Slurm/munge not installed (missing {", ".join(missing)}; `make sysdeps` as root installs them)'
    if os.geteuid() != 0:
        return 'starting slurmctld/slurmd/munged needs root (CI runs as root)'
    return None


def _alive(name: str) -> bool:
    "A live (not defunct) process with this exact name exists."
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            txt = stat.read_text()
        except OSError:
            continue
        comm, rest = txt[txt.index('(') + 1:txt.rindex(')')], txt[txt.rindex(')') + 2:]
        if comm == name and not rest.startswith(('Z', 'X')):
            return True
    return False


def _mem_mb() -> int:
    for line in Path('/proc/meminfo').read_text().splitlines():
        if line.startswith('MemTotal:'):
            return int(line.split()[1]) // 1024
    return 4096


class SlurmCluster:
    def __init__(self, base: Path = BASE):
        self.base = Path(base)
        self.conf = self.base / 'etc' / 'slurm.conf'
        self.host = socket.gethostname().split('.')[0]
        self.started_here = False
        self.munged_pid: int | None = None

    # -- config ---------------------------------------------------------------------------
    def env(self) -> dict:
        return {**os.environ, 'SLURM_CONF': str(self.conf)}

    def _write_conf(self):
        for d in ('etc', 'state', 'spool', 'log', 'run'):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        # at least 8 schedulable CPUs (config_overrides lets slurmd accept more than the machine has), so that the
        # tests' jobs (1 CPU each, most of them sleeping or waiting) can overlap on a 2-core CI machine
        cpus, mem = max(8, os.cpu_count() or 1), max(1024, int(_mem_mb() * 0.85))
        b = self.base
        text = f"""# written by tests/slurm_cluster.py
ClusterName=halting_lab_test
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool
SlurmctldPidFile={b}/run/slurmctld.pid
SlurmdPidFile={b}/run/slurmd.pid
SlurmctldLogFile={b}/log/slurmctld.log
SlurmdLogFile={b}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
DependencyParameters=kill_invalid_depend
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
KillWait=10
InactiveLimit=0
Waittime=0
MaxArraySize=1001
SlurmdParameters=config_overrides
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
"""
        if not self.conf.exists() or self.conf.read_text() != text:
            self.conf.write_text(text)

    # -- helpers --------------------------------------------------------------------------
    def _run(self, *cmd, check=False, timeout=30):
        return subprocess.run(list(cmd), env=self.env(), capture_output=True, text=True,
                              check=check, timeout=timeout)

    def responding(self) -> bool:
        if not self.conf.exists():
            return False
        try:
            r = self._run('scontrol', 'ping', timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0 and 'UP' in r.stdout

    def node_ready(self) -> bool:
        r = self._run('sinfo', '-h', '-N', '-o', '%T', timeout=10)
        st = r.stdout.strip().lower()
        return r.returncode == 0 and bool(st) and all(s.rstrip('*') in ('idle', 'mixed', 'allocated') for s in st.split())

    def _munged_running(self) -> bool:
        "munged answers (a credential round-trip works; a defunct munged process does not count)."
        try:
            return subprocess.run('munge -n | unmunge', shell=True, capture_output=True, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _start_munge(self):
        key = Path('/etc/munge/munge.key')
        try:
            mu = pwd.getpwnam('munge')
        except KeyError:
            mu = None
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_bytes(os.urandom(1024))
            os.chmod(key, 0o400)
            if mu: os.chown(key, mu.pw_uid, mu.pw_gid)
        if self._munged_running():
            return
        for d in ('/run/munge', '/var/log/munge', '/var/lib/munge'):
            Path(d).mkdir(parents=True, exist_ok=True)
            if mu: os.chown(d, mu.pw_uid, mu.pw_gid)
        if mu:
            cmd = ['runuser', '-u', 'munge', '--', _which('munged')]
        else:
            cmd = [_which('munged'), '--force']
        with contextlib.suppress(FileNotFoundError):
            Path('/run/munge/munged.pid').unlink()
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)
        for _ in range(50):
            pid = Path('/run/munge/munged.pid')
            if pid.exists():
                self.munged_pid = int(pid.read_text().split()[0])
                (self.base / 'run' / 'munged_by_tests').write_text(str(self.munged_pid)); break
            time.sleep(0.1)

    # -- sessions sharing the cluster ---------------------------------------------------------
    @property
    def _leases(self) -> Path:
        return self.base / 'leases'

    def _other_sessions(self) -> list[int]:
        "Pids of other live processes holding a lease (stale leases of dead processes are removed)."
        out = []
        for p in self._leases.glob('*') if self._leases.exists() else []:
            try:
                pid = int(p.name)
            except ValueError:
                continue
            if pid == os.getpid():
                continue
            if Path(f'/proc/{pid}').exists():
                out.append(pid)
            else:
                p.unlink(missing_ok=True)
        return out

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 60, lease: bool = True) -> 'SlurmCluster':
        if (why := unavailable()):
            raise RuntimeError(why)
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.base / '.lock', 'w') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            os.environ['SLURM_CONF'] = str(self.conf)
            if lease:
                self._leases.mkdir(exist_ok=True)
                (self._leases / str(os.getpid())).touch()
                self.started_here = True   # this session may be the last one using it; stop() decides
            if self.responding() and self.node_ready():
                return self
            self._write_conf()
            self._start_munge()
            if not self.responding():
                self._run(_which('slurmctld'), '-f', str(self.conf), check=True)
            if lease:
                (self.base / 'run' / 'started_by_tests').touch()
            t0 = time.time()
            while time.time() - t0 < timeout:
                if not _alive('slurmd'):
                    self._run(_which('slurmd'), '-f', str(self.conf), '-N', self.host, check=True)
                if self.responding() and self.node_ready():
                    return self
                time.sleep(0.5)
            log = (self.base / 'log' / 'slurmctld.log')
            tail = log.read_text()[-2000:] if log.exists() else ''
            raise RuntimeError(f'Slurm did not come up within {timeout:.0f}s; slurmctld.log tail:\n{tail}')

    def stop(self, force: bool = False):
        "Drop this session's lease; shut the cluster down if it was the last session of those that started it (or `force`)."
        if not (self.started_here or force):
            return
        with open(self.base / '.lock', 'w') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            (self._leases / str(os.getpid())).unlink(missing_ok=True)
            self.started_here = False
            marker = self.base / 'run' / 'started_by_tests'
            if not force and (self._other_sessions() or not marker.exists()):
                return
            marker.unlink(missing_ok=True)
            self._shutdown()

    def _shutdown(self):
        self._run('scancel', '--user', pwd.getpwuid(os.getuid()).pw_name)
        self._run('scontrol', 'shutdown')
        for name in ('slurmd.pid', 'slurmctld.pid'):   # the daemons we started, by pid
            p = self.base / 'run' / name
            if p.exists():
                try: os.kill(int(p.read_text().split()[0]), 15)
                except (ProcessLookupError, ValueError): pass
        for _ in range(100):
            if not _alive('slurmd') and not _alive('slurmctld'):
                break
            time.sleep(0.2)
        mp = self.base / 'run' / 'munged_by_tests'   # munged, if a test session started it (by its recorded pid)
        pid = self.munged_pid or (int(mp.read_text()) if mp.exists() else None)
        if pid:
            try: os.kill(pid, 15)
            except ProcessLookupError: pass
        mp.unlink(missing_ok=True)


if __name__ == '__main__':
    c = SlurmCluster()
    what = sys.argv[1] if len(sys.argv) > 1 else 'status'
    if what == 'start':
        t = time.time(); c.start(lease=False); print(f'up in {time.time() - t:.1f}s; export SLURM_CONF={c.conf}')
    elif what == 'stop':
        c.munged_pid = int(Path('/run/munge/munged.pid').read_text().split()[0]) if Path('/run/munge/munged.pid').exists() else None
        c.stop(force=True); print('stopped')
    else:
        print('responding' if c.responding() else 'down', unavailable() or '')
