"""halting-lab slurm against a real single-node Slurm (tests/slurm_cluster.py), not a mock.

The long jobs (the walltime-requeued toy job, the training notebook under a real walltime, a job that
overruns its walltime, a plain job that times out) are submitted by the first test (module fixtures)
and checked last, so their minutes overlap with each other and with the other tests. Timing facts
they rely on (measured here, Slurm 22.05): slurmctld checks limits every 30 s, so with `--time
00:01:00 --signal-seconds 5` USR1 arrives 25-55 s into an allocation and SIGTERM 60-90 s in; a
requeued job starts again ~15 s later. Tests of bad requests that need no cluster run everywhere;
the rest skip with the reason when Slurm/munge are not installed or we are not root.
"""
from __future__ import annotations
import csv, json, math, os, statistics, subprocess, sys, time
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from slurm_cluster import SlurmCluster, unavailable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / 'tests' / 'assets' / 'resumable_job.ipynb'
TRAIN_NB = ROOT / 'nbs' / 'experiments' / 'train.ipynb'
VENV = Path(sys.prefix)
HL = VENV / 'bin' / 'halting-lab'
pytestmark = pytest.mark.timeout(900)


def expected_metric(total_steps, seed=0, scale=1.0):
    v = float(seed)
    for step in range(1, total_steps + 1):
        v = round((v * 1.5 + step * scale) % 1000.0, 6)
    return v


@pytest.fixture(scope='module')
def cluster():
    if (why := unavailable()):
        pytest.skip(why)
    c = SlurmCluster().start()
    yield c
    c.stop()


@pytest.fixture(scope='module')
def runs(tmp_path_factory, cluster):
    return tmp_path_factory.mktemp('slurm_runs')


def hl(runs, *args, check=True, env_extra=None, timeout=120):
    env = {**os.environ, 'HALTING_LAB_RUNS': str(runs), 'SLURM_CONF': os.environ.get('SLURM_CONF', ''), **(env_extra or {})}
    r = subprocess.run([str(HL), *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f'halting-lab {" ".join(map(str, args))} -> {r.returncode}\n{r.stdout}\n{r.stderr}')
    return r


def status(run_dir):
    p = Path(run_dir) / 'status.json'
    return json.loads(p.read_text()) if p.exists() else {}


def wait_for(pred, timeout, what, interval=1.0, log=None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    extra = ''
    if log:
        logs = sorted(Path(log).glob('*.out')) if Path(log).is_dir() else [Path(log)]
        extra = '\n'.join(p.read_text()[-3000:] for p in logs if p.exists())
    sq = subprocess.run(['squeue'], capture_output=True, text=True).stdout
    raise AssertionError(f'timed out after {timeout}s waiting for {what}\nsqueue:\n{sq}\n{extra}')


def job_state(job_id):
    out = subprocess.run(['scontrol', 'show', 'job', '-o', str(job_id)], capture_output=True, text=True).stdout
    fields = dict(kv.split('=', 1) for kv in out.split() if '=' in kv)
    return fields.get('JobState'), fields.get('Reason')


def fake_running_status(run_dir, job_id):
    "A status file as a job leaves it when it is killed too hard to record its end."
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / 'status.json').write_text(json.dumps({
        'run_id': run_dir.name, 'executor': 'slurm', 'state': 'running', 'job_ids': [str(job_id)], 'notebook': str(ASSET),
        'attempts': [{'attempt': 1, 'job_id': str(job_id), 'started': '2026-01-01T00:00:00', 'started_ts': 0, 'state': 'running'}]}))


COMMON = ['--cpus-per-task', '1', '--venv', VENV]
WALLTIME = ['--time', '00:01:00', '--signal-seconds', 5]


# ---- long jobs, submitted first ------------------------------------------------------------------
# toy job: 105 steps of 1 s; an allocation gives at most 55 - startup s before USR1, so the walltime forces >= 2 requeues
WALL_STEPS = 105
# training notebook: enough epochs of 8 batches that the training outlasts one 1-min allocation (USR1 comes
# ~35-50 s after the kernel starts), whatever the machine's speed: measured by a short local run first
# (`train_epochs`), at least 48. One thread, as the job gets: two OpenMP threads on a busy core make an
# epoch of this tiny model take 4-20 s instead of well under one.
TRAIN_EPOCHS_MIN, TRAIN_EPOCHS_MAX, TRAIN_SECONDS = 48, 400, 60
ONE_THREAD = {**os.environ, 'OMP_NUM_THREADS': '1'}   # as the job runs (`--cpus-per-task 1`)
OVERRUN_STEPS = 55


@pytest.fixture(scope='module')
def walltime_job(runs):
    r = hl(runs, 'slurm', 'submit', ASSET, '-p', 'total_steps', WALL_STEPS, '-p', 'step_seconds', 1.0, '-p', 'seed', 3,
           '--run-id', 'wall', *WALLTIME, *COMMON)
    return r.stdout.split()[2], runs / 'wall'


def train_epochs(tmp:Path, params:dict)->int:
    "Epochs whose training takes about TRAIN_SECONDS here: 4 epochs of the same run timed by `halting-lab train`."
    flags = [x for k, v in params.items() if k not in ('num_show', 'max_epochs') for x in (f'--{k}', str(v))]
    r = subprocess.run([str(HL), 'train', *flags, '--max_epochs', '4', '--default_root_dir', str(tmp / 'calib'),
                        '--no-progress_bar'], capture_output=True, text=True, cwd=ROOT, timeout=600, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader((tmp / 'calib' / 'metrics.csv').open()))
    per_epoch = statistics.median(float(x['epoch_time_s']) for x in rows if x['kind'] == 'epoch' and x['epoch_time_s'])
    return int(min(TRAIN_EPOCHS_MAX, max(TRAIN_EPOCHS_MIN, math.ceil(TRAIN_SECONDS / per_epoch))))


@pytest.fixture(scope='module')
def train_job(runs, tmp_path_factory):
    if not TRAIN_NB.exists():
        pytest.skip('nbs/experiments/train.ipynb not there')
    tmp = tmp_path_factory.mktemp('train')
    data = tmp / 'maze'
    subprocess.run([str(HL), 'build-maze', '--size', '7', '--num-train', '256', '--num-test', '64', '--seed', '0',
                    '--output-dir', str(data)], check=True, capture_output=True, cwd=ROOT)
    params = {'data_dir': str(data), 'max_epochs': 0, 'seed': 0, 'hidden_size': 32, 'time_limit': 4, 'batch_size': 32,
              'log_every_n_steps': 1, 'num_show': 2}
    params['max_epochs'] = epochs = train_epochs(tmp, params)
    r = hl(runs, 'slurm', 'submit', TRAIN_NB, *[x for k, v in params.items() for x in ('-p', k, v)], '--run-id', 'trainw',
           *WALLTIME, *COMMON)
    # the uninterrupted reference with the same seed, run locally while the Slurm job trains
    ref_runs = tmp / 'ref'
    ref = subprocess.Popen([str(VENV / 'bin' / 'papermill'), str(TRAIN_NB), str(tmp / 'ref.ipynb'), '-k', 'python3',
                            '--language', 'python', *[a for k, v in params.items() for a in ('-p', k, str(v))],
                            '-p', 'run_id', 'ref', '-p', 'resume_ckpt', 'auto'],
                           env={**ONE_THREAD, 'HALTING_LAB_RUNS': str(ref_runs)}, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield r.stdout.split()[2], runs / 'trainw', ref, ref_runs / 'ref', epochs
    if ref.poll() is None:
        ref.kill()


@pytest.fixture(scope='module')
def overrun_job(runs):
    # the first attempt's stop after USR1 hangs for 300 s (a checkpoint save slower than the signal lead): Slurm's
    # SIGTERM at the limit must record the attempt as 'timeout' and, since it checkpointed, requeue the job
    r = hl(runs, 'slurm', 'submit', ASSET, '-p', 'total_steps', OVERRUN_STEPS, '-p', 'step_seconds', 1.0, '-p', 'seed', 5,
           '-p', 'stall_on_preempt', 300.0, '--run-id', 'overrun', *WALLTIME, *COMMON)
    return r.stdout.split()[2], runs / 'overrun'


@pytest.fixture(scope='module')
def sleeper(runs):
    # a plain job that Slurm ends as TIMEOUT; 'busy' is a run whose file still says running for it
    out = runs / 'sleeper.out'
    jid = subprocess.run(['sbatch', '--parsable', '--time=00:01:00', '-c', '1', f'--output={out}', '--wrap', 'sleep 300'],
                         capture_output=True, text=True, check=True).stdout.strip()
    fake_running_status(runs / 'busy', jid)
    return jid, runs / 'busy'


def test_submit_long_jobs_and_refuse_a_busy_run_dir(walltime_job, train_job, overrun_job, sleeper, runs):
    job_id, rd = walltime_job
    assert job_id.isdigit() and (rd / 'job.sbatch').exists()
    text = (rd / 'job.sbatch').read_text()
    assert '--signal=B:USR1@5' in text and '--open-mode=append' in text and '-r resume_ckpt auto' in text
    assert 'trap on_term TERM' in text and '--requeue 1' in text
    # two live jobs must not share one run directory: the run id is refused while its job is queued or running
    r = hl(runs, 'slurm', 'submit', ASSET, '--run-id', 'wall', *COMMON, check=False)
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert f"run 'wall' already has job {job_id}" in r.stderr and 'must not share a run directory' in r.stderr
    r = hl(runs, 'slurm', 'submit', ASSET, '--run-id', 'busy', *COMMON, check=False)
    assert r.returncode == 1 and f"run 'busy' already has job {sleeper[0]}" in r.stderr


# ---- bad requests: clear errors (no cluster needed up to sbatch) -----------------------------------
def _hl_plain(tmp_path, *args, env_extra=None):
    env = {**os.environ, 'HALTING_LAB_RUNS': str(tmp_path / 'runs'), **(env_extra or {})}
    return subprocess.run([str(HL), *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_notebook_without_parameters_cell(tmp_path):
    nb = json.loads(ASSET.read_text())
    for c in nb['cells']:
        c.get('metadata', {}).pop('tags', None)
    p = tmp_path / 'untagged.ipynb'
    p.write_text(json.dumps(nb))
    for cmd in (['submit', p, '--dry-run'], ['sweep', p, '--grid', 'seed=1,2', '--dry-run']):
        r = _hl_plain(tmp_path, 'slurm', *cmd)
        assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
        assert f'{p}: no cell tagged "parameters"' in r.stderr


def test_unknown_parameter_name(tmp_path):
    r = _hl_plain(tmp_path, 'slurm', 'submit', ASSET, '-p', 'totl_steps', 3, '--dry-run')
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert "unknown parameter 'totl_steps'" in r.stderr and 'total_steps' in r.stderr.split('assigns:')[1]
    r = _hl_plain(tmp_path, 'slurm', 'sweep', ASSET, '--grid', 'sed=1,2', '--dry-run')
    assert r.returncode == 1 and "unknown parameter 'sed'" in r.stderr and not (tmp_path / 'runs').exists()


def test_sbatch_missing(tmp_path):
    r = _hl_plain(tmp_path, 'slurm', 'submit', ASSET, env_extra={'PATH': str(tmp_path)})
    assert r.returncode == 1 and 'sbatch not found on PATH' in r.stderr and '--dry-run' in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path / 'runs').exists()   # nothing was written


def test_bad_partition_shows_sbatch_message(runs):
    r = hl(runs, 'slurm', 'submit', ASSET, '--partition', 'nosuchpartition', '--run-id', 'badpart', *COMMON, check=False)
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert 'sbatch rejected the job' in r.stderr and 'invalid partition' in r.stderr.lower()
    assert status(runs / 'badpart')['state'] == 'failed'


# a job killed at its limit (checked early: scontrol forgets a job MinJobAge=300 s after it ended)
def test_status_shows_timeout_of_a_job_killed_at_its_limit(sleeper, runs):
    jid, rd = sleeper
    wait_for(lambda: job_state(jid)[0] == 'TIMEOUT', 150, f'job {jid} to time out')
    row = next(line for line in hl(runs, 'slurm', 'status').stdout.splitlines() if line.startswith('busy '))
    assert 'timeout (file: running)' in row and 'TIMEOUT' in row
    assert hl(runs, 'slurm', 'status', 'busy').stdout.startswith('run busy: timeout')
    hl(runs, 'slurm', 'submit', ASSET, '--run-id', 'busy', '--time', '00:05:00', *COMMON)   # no live job any more: accepted
    wait_for(lambda: status(rd).get('state') in ('finished', 'failed'), 90, 'the resubmitted busy run', log=rd)
    assert [a['state'] for a in status(rd)['attempts']] == ['lost', 'finished']


# ---- sweep: job array + collector; a resubmission leaves finished elements alone -------------------
def test_sweep_array_and_collector(runs):
    r = hl(runs, 'slurm', 'sweep', ASSET, '--grid', 'seed=1,2', '--grid', 'scale=1,2.5', '-p', 'total_steps', 4,
           '--prefix', 'sw', '--max-parallel', 2, '--time', '00:10:00', *COMMON)
    assert 'submitted array job' in r.stdout
    sweep_dir = runs / 'sw'
    spec = json.loads((sweep_dir / 'sweep.json').read_text())
    assert len(spec['elements']) == 4 and spec['array_job_id'] and spec['collector_job_id']
    assert '--array=0-3%2' in (sweep_dir / 'array.sbatch').read_text()
    assert f"--dependency=afterok:{spec['array_job_id']}" in (sweep_dir / 'collector.sbatch').read_text()
    wait_for(lambda: status(sweep_dir).get('state') in ('finished', 'failed'), 240, 'the collector job', log=sweep_dir)
    assert status(sweep_dir)['state'] == 'finished', status(sweep_dir)
    import pandas as pd
    df = pd.read_csv(sweep_dir / 'summary.csv')
    assert len(df) == 4 and set(df.state) == {'finished'}
    for _, row in df.iterrows():
        assert row.run_id == f'sw_seed{row.seed}_scale{row.scale:g}'
        assert row.final_metric == pytest.approx(expected_metric(4, row.seed, row.scale))
    assert df.final_metric.is_monotonic_decreasing  # ranked by the metric
    assert (sweep_dir / 'sweep_summary.ipynb').exists() and (sweep_dir / 'figures' / 'summary.png').exists()
    for el in spec['elements']:
        st = status(runs / el['run_id'])
        assert st['state'] == 'finished' and st['job_ids'][0].startswith(spec['array_job_id'] + '_')
        assert (runs / el['run_id'] / 'resumable_job.ipynb').exists()

    # element 3 (seed 2, scale 2.5) is made unfinished (as after a crash); resubmitting the sweep runs only it
    redo = runs / 'sw_seed2_scale2.5'
    st = status(redo); st['state'] = 'failed'
    (redo / 'status.json').write_text(json.dumps(st)); (redo / 'resumable_job.ipynb').unlink()
    others = [runs / el['run_id'] for el in spec['elements'] if el['run_id'] != redo.name]
    before = {d: ((d / 'resumable_job.ipynb').stat().st_mtime, len(status(d)['attempts'])) for d in others}
    r = hl(runs, 'slurm', 'sweep', ASSET, '--grid', 'seed=1,2', '--grid', 'scale=1,2.5', '-p', 'total_steps', 4,
           '--prefix', 'sw', '--max-parallel', 2, '--time', '00:10:00', *COMMON)
    assert 'array job' in r.stdout and '(1 runs)' in r.stdout
    assert 'already finished, not resubmitted: sw_seed1_scale1, sw_seed1_scale2.5, sw_seed2_scale1' in r.stdout
    spec2 = json.loads((sweep_dir / 'sweep.json').read_text())
    assert '#SBATCH --array=3%2' in (sweep_dir / 'array.sbatch').read_text() and spec2['array_job_id'] != spec['array_job_id']
    wait_for(lambda: status(sweep_dir).get('state') in ('finished', 'failed') and len(status(sweep_dir)['attempts']) == 2,
             240, 'the second collector job', log=sweep_dir)
    assert status(sweep_dir)['state'] == 'finished'
    for d in others:   # finished elements: not restarted, nothing rewritten
        assert ((d / 'resumable_job.ipynb').stat().st_mtime, len(status(d)['attempts'])) == before[d]
        assert status(d)['state'] == 'finished' and not any(j.startswith(spec2['array_job_id']) for j in status(d)['job_ids'])
    st = status(redo)
    assert st['state'] == 'finished' and st['job_ids'][-1] == f"{spec2['array_job_id']}_3" and len(st['attempts']) == 2
    df = pd.read_csv(sweep_dir / 'summary.csv')   # the collector summarised all four again
    assert len(df) == 4 and set(df.state) == {'finished'}
    assert df.set_index('run_id').final_metric[redo.name] == pytest.approx(expected_metric(4, 2, 2.5))


# ---- a failing element: its collector is cancelled --------------------------------------------------
def test_failed_element_cancels_collector(runs):
    hl(runs, 'slurm', 'sweep', ASSET, '--grid', 'fail_at_step=-1,2', '-p', 'total_steps', 3, '--prefix', 'bad',
       '--time', '00:10:00', *COMMON)
    spec = json.loads((runs / 'bad' / 'sweep.json').read_text())
    cid = spec['collector_job_id']
    wait_for(lambda: job_state(cid)[0] == 'CANCELLED', 120, f'collector {cid} to be cancelled', log=runs / 'bad' / 'logs')
    assert job_state(cid)[1] == 'DependencyNeverSatisfied'
    failed = status(runs / 'bad_fail_at_step2')
    assert failed['state'] == 'failed' and 'exit status 1 in attempt 1' in failed['error']
    assert (runs / 'bad_fail_at_step2' / 'resumable_job.attempt1.ipynb').exists()
    assert not (runs / 'bad_fail_at_step2' / 'resumable_job.ipynb').exists()
    wait_for(lambda: status(runs / 'bad_fail_at_step-1').get('state') == 'finished', 60, 'the good element')


# ---- a command instead of a notebook (submit_command / render_command_job, for recipe modules) ---------
def test_command_job(runs):
    from halting_lab.slurm import SlurmConfig, submit_command
    r = submit_command(['bash', '-c', 'echo "hello from $SLURM_JOB_ID" > "$HALTING_LAB_RUNS/cmd/out.txt"'], 'cmd',
                       SlurmConfig(cpus_per_task=1, time='00:05:00', venv=str(VENV)), root=runs)
    jid = r['job_id']
    wait_for(lambda: status(runs / 'cmd').get('state') in ('finished', 'failed'), 90, 'the command job', log=runs / 'cmd')
    st = status(runs / 'cmd')
    assert st['state'] == 'finished' and st['job_ids'] == [jid] and [a['state'] for a in st['attempts']] == ['finished']
    assert (runs / 'cmd' / 'out.txt').read_text().strip() == f'hello from {jid}' and st['command'].startswith('bash -c ')


# ---- JupyterLab on a compute node ----------------------------------------------------------------
def test_lab_prints_tunnel_and_answers(runs):
    r = hl(runs, 'slurm', 'lab', '--time', '00:05:00', '--wait', 120, '--login-host', 'login.example.org', *COMMON, timeout=180)
    out = r.stdout
    job_id = out.split('(job ')[1].split(')')[0]
    try:
        tunnel = next(line.strip() for line in out.splitlines() if line.strip().startswith('ssh -N -L'))
        url = next(line.strip() for line in out.splitlines() if line.strip().startswith('http://localhost:'))
        port = url.split(':')[2].split('/')[0]
        assert tunnel.endswith('@login.example.org') and f'{port}:' in tunnel and 'token=' in url
        # the tunnel's far end is the node: check the same URL there
        import urllib.request
        node = tunnel.split()[3].split(':')[1]
        with urllib.request.urlopen(url.replace('localhost', node).replace('/lab?', '/api/status?'), timeout=10) as resp:
            assert resp.status == 200
    finally:
        subprocess.run(['scancel', job_id])


# ---- status reconciles files that a dead job left at 'running' ---------------------------------------
def test_status_shows_lost_run_and_allows_resubmission(runs):
    jid = subprocess.run(['sbatch', '--parsable', '-c', '1', f'--output={runs / "true.out"}', '--wrap', 'true'],
                         capture_output=True, text=True, check=True).stdout.strip()
    wait_for(lambda: job_state(jid)[0] == 'COMPLETED', 60, f'job {jid} to complete')
    fake_running_status(runs / 'lostrun', jid)
    out = hl(runs, 'slurm', 'status').stdout
    row = next(line for line in out.splitlines() if line.startswith('lostrun '))
    assert 'lost (file: running)' in row and jid in row
    out = hl(runs, 'slurm', 'status', 'lostrun').stdout
    assert out.startswith('run lostrun: lost') and f"status.json says 'running', but job {jid} left the queue (COMPLETED)" in out
    # its job is gone, so the run id may be used again; the new job resumes the run and marks the dead attempt lost
    hl(runs, 'slurm', 'submit', ASSET, '-p', 'total_steps', 2, '--run-id', 'lostrun', '--time', '00:05:00', *COMMON)
    wait_for(lambda: status(runs / 'lostrun').get('state') in ('finished', 'failed'), 90, 'the resubmitted run', log=runs / 'lostrun')
    assert [a['state'] for a in status(runs / 'lostrun')['attempts']] == ['lost', 'finished']


# ---- walltime overrun: SIGTERM at the limit is recorded, and the checkpointed run requeues --------------
def test_walltime_overrun_records_timeout_and_requeues(overrun_job):
    job_id, rd = overrun_job
    wait_for(lambda: status(rd).get('state') in ('finished', 'failed', 'timeout'), 300, 'the overrunning job', log=rd, interval=2)
    st = status(rd)
    assert st['state'] == 'finished', st
    assert st['attempts'][0]['state'] == 'timeout' and st['attempts'][-1]['state'] == 'finished' and len(st['attempts']) >= 2
    assert st['job_ids'] == [job_id] and [a['restart_count'] for a in st['attempts']] == list(range(len(st['attempts'])))
    log = next(rd.glob('slurm-*.out')).read_text()
    assert 'stalling 300.0s' in log and 'SIGTERM' in log and 'attempt 1: requeue' in log
    resumed = (rd / 'resumes.log').read_text().split()
    assert resumed[0] == 'None' and all(int(x) > 0 for x in resumed[1:])
    steps = [int(line.split(',')[0]) for line in (rd / 'metrics.csv').read_text().splitlines()[1:]]
    assert steps == list(range(1, OVERRUN_STEPS + 1))
    assert json.loads((rd / 'results.json').read_text())['final_metric'] == pytest.approx(expected_metric(OVERRUN_STEPS, seed=5))


# ---- the training notebook under a real walltime: requeued, resumed, same final metrics -------------------
def test_training_notebook_walltime_requeue_matches_uninterrupted(train_job):
    job_id, rd, ref, ref_rd, epochs = train_job
    wait_for(lambda: status(rd).get('state') in ('finished', 'failed', 'timeout'), 600, 'the training job to finish', log=rd, interval=2)
    st = status(rd)
    assert st['state'] == 'finished', st
    n = len(st['attempts'])
    assert n >= 2, 'the walltime never forced a requeue'
    assert all(a['state'] == 'preempted' for a in st['attempts'][:-1]) and st['attempts'][-1]['state'] == 'finished'
    assert st['job_ids'] == [job_id] and [a['restart_count'] for a in st['attempts']] == list(range(n))
    for a in st['attempts']:
        assert (rd / f"train.attempt{a['attempt']}.ipynb").exists()
    assert (rd / 'train.ipynb').read_bytes() == (rd / f'train.attempt{n}.ipynb').read_bytes()
    log = next(rd.glob('slurm-*.out')).read_text()
    assert log.count('USR1: walltime is near') >= n - 1
    assert log.count('resuming from ') == n - 1 and str(rd / 'checkpoints' / 'last.ckpt') in log
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out[-3000:]
    res, ref_res = json.loads((rd / 'results.json').read_text()), json.loads((ref_rd / 'results.json').read_text())
    assert res['status'] == 'finished' and res['global_step'] == ref_res['global_step'] == epochs * 8
    for k, v in ref_res['final'].items():
        assert res['final'][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


# ---- the toy walltime job, requeued at least twice by the walltime alone ---------------------------------
def test_walltime_requeue_resumes_and_matches(walltime_job, runs):
    job_id, rd = walltime_job
    wait_for(lambda: status(rd).get('state') in ('finished', 'failed', 'timeout'), 480, 'the walltime job to finish', log=rd, interval=2)
    st = status(rd)
    assert st['state'] == 'finished', st
    n = len(st['attempts'])
    assert n >= 3, 'the walltime did not force two requeues'
    assert all(a['state'] == 'preempted' for a in st['attempts'][:-1]) and st['attempts'][-1]['state'] == 'finished'
    assert st['job_ids'] == [job_id] and [a['restart_count'] for a in st['attempts']] == list(range(n))
    for a in st['attempts']:
        assert (rd / f"resumable_job.attempt{a['attempt']}.ipynb").exists()
    assert (rd / 'resumable_job.ipynb').exists()
    resumed = (rd / 'resumes.log').read_text().split()
    assert resumed[0] == 'None' and all(int(x) > 0 for x in resumed[1:]), resumed   # later attempts resumed from last.ckpt
    steps = [int(line.split(',')[0]) for line in (rd / 'metrics.csv').read_text().splitlines()[1:]]
    assert steps == list(range(1, WALL_STEPS + 1))   # nothing lost, nothing repeated
    res = json.loads((rd / 'results.json').read_text())
    assert res['final_metric'] == pytest.approx(expected_metric(WALL_STEPS, seed=3))
    log = next(rd.glob('slurm-*.out')).read_text()
    assert log.count('USR1') >= n - 1 and f'attempt {n}' in log   # one log across requeues (--open-mode=append)
    # the uninterrupted run of the same notebook with the same seed ends with the same metric
    from halting_lab.sweep import execute_notebook
    os.environ['HALTING_LAB_RUNS'] = str(runs / 'ref_runs')
    try:
        execute_notebook(ASSET, runs / 'ref_runs' / 'ref', {'run_id': 'ref', 'total_steps': WALL_STEPS, 'step_seconds': 0.0, 'seed': 3})
    finally:
        os.environ.pop('HALTING_LAB_RUNS')
    assert json.loads((runs / 'ref_runs' / 'ref' / 'results.json').read_text())['final_metric'] == res['final_metric']
    # status CLI
    out = hl(runs, 'slurm', 'status').stdout
    assert 'wall' in out and 'finished' in out
    out = hl(runs, 'slurm', 'status', 'wall').stdout
    assert f'attempt {n}: job {job_id}' in out and 'preempted' in out
    # a finished run is never restarted: submit refuses, and re-running its script exits at once
    r = hl(runs, 'slurm', 'submit', ASSET, '--run-id', 'wall', *COMMON, check=False)
    assert r.returncode == 1 and 'already finished' in r.stderr
    again = subprocess.run(['sbatch', '--parsable', str(rd / 'job.sbatch')], capture_output=True, text=True, check=True).stdout.strip()
    wait_for(lambda: job_state(again)[0] == 'COMPLETED', 60, 'the re-submitted finished run to exit')
    assert len(status(rd)['attempts']) == n and 'already finished; not restarting' in (rd / f'slurm-{again}.out').read_text()
