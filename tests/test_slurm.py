"""halting-lab slurm against a real single-node Slurm (tests/slurm_cluster.py), not a mock.

The walltime job is submitted first (module fixture) and checked last, so that its two minutes
overlap with the other tests. Skipped with the reason when Slurm/munge are not installed or we
are not root (`make sysdeps` installs them in CI).
"""
from __future__ import annotations
import json, os, shutil, subprocess, sys, time
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from slurm_cluster import SlurmCluster, unavailable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / 'tests' / 'assets' / 'resumable_job.ipynb'
TRAIN_NB = ROOT / 'nbs' / 'experiments' / 'train.ipynb'
VENV = Path(sys.prefix)
HL = VENV / 'bin' / 'halting-lab'
pytestmark = pytest.mark.timeout(600)


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


COMMON = ['--cpus-per-task', '1', '--venv', VENV]


# ---- 1. walltime: USR1 before the limit -> checkpoint -> requeue -> resume (submitted first, checked last) ----
WALL_STEPS = 60


@pytest.fixture(scope='module')
def walltime_job(runs):
    # 60 steps of 1 s cannot finish inside a 1-minute allocation whose USR1 comes 5 s (+ up to ~30 s
    # scheduler slack) before the limit, so at least one requeue is forced by the walltime itself.
    r = hl(runs, 'slurm', 'submit', ASSET, '-p', 'total_steps', WALL_STEPS, '-p', 'step_seconds', 1.0, '-p', 'seed', 3,
           '--run-id', 'wall', '--time', '00:01:00', '--signal-seconds', 5, *COMMON)
    job_id = r.stdout.split()[2]
    return job_id, runs / 'wall'


def test_submit_starts_walltime_job(walltime_job):
    job_id, rd = walltime_job
    assert job_id.isdigit() and (rd / 'job.sbatch').exists()
    text = (rd / 'job.sbatch').read_text()
    assert '--signal=B:USR1@5' in text and '--open-mode=append' in text and '-r resume_ckpt auto' in text


# ---- 2. sweep: job array + collector -------------------------------------------------------------
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


# ---- 3. a failing element: its collector is cancelled; bad requests get clear errors ----------------
def test_failed_element_cancels_collector(runs):
    r = hl(runs, 'slurm', 'sweep', ASSET, '--grid', 'fail_at_step=-1,2', '-p', 'total_steps', 3, '--prefix', 'bad',
           '--time', '00:10:00', *COMMON)
    spec = json.loads((runs / 'bad' / 'sweep.json').read_text())
    cid = spec['collector_job_id']
    wait_for(lambda: job_state(cid)[0] == 'CANCELLED', 120, f'collector {cid} to be cancelled', log=runs / 'bad' / 'logs')
    assert job_state(cid)[1] == 'DependencyNeverSatisfied'
    failed = status(runs / 'bad_fail_at_step2')
    assert failed['state'] == 'failed' and 'papermill exited' in failed['error']
    assert (runs / 'bad_fail_at_step2' / 'resumable_job.attempt1.ipynb').exists()
    assert not (runs / 'bad_fail_at_step2' / 'resumable_job.ipynb').exists()
    wait_for(lambda: status(runs / 'bad_fail_at_step-1').get('state') == 'finished', 60, 'the good element')


def test_bad_partition_shows_sbatch_message(runs):
    r = hl(runs, 'slurm', 'submit', ASSET, '--partition', 'nosuchpartition', '--run-id', 'badpart', *COMMON, check=False)
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert 'sbatch rejected the job' in r.stderr and 'invalid partition' in r.stderr.lower()
    assert status(runs / 'badpart')['state'] == 'failed'


def test_sbatch_missing(runs, tmp_path):
    r = hl(runs, 'slurm', 'submit', ASSET, check=False, env_extra={'PATH': str(tmp_path)})
    assert r.returncode == 1 and 'sbatch not found on PATH' in r.stderr and 'Traceback' not in r.stderr


# ---- JupyterLab on a compute node ----------------------------------------------------------------
def test_lab_prints_tunnel_and_answers(runs):
    r = hl(runs, 'slurm', 'lab', '--time', '00:05:00', '--wait', 90, '--login-host', 'login.example.org', *COMMON, timeout=150)
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


# ---- training notebook (helper C's): two forced requeues, same final metrics as uninterrupted ----
@pytest.mark.skipif(not TRAIN_NB.exists(), reason='nbs/experiments/train.ipynb not there yet')
def test_training_notebook_requeued_twice_matches_uninterrupted(runs, tmp_path):
    data = tmp_path / 'maze'
    subprocess.run([str(HL), 'build-maze', '--size', '7', '--num-train', '256', '--num-test', '64', '--seed', '0',
                    '--output-dir', str(data)], check=True, capture_output=True, cwd=ROOT)
    # 8 epochs: runway enough that the second signal lands before the last epoch (a stop request in the final
    # epoch's last batch just lets the run finish, which would leave only two attempts)
    params = {'data_dir': str(data), 'max_epochs': 8, 'seed': 0, 'hidden_size': 32, 'time_limit': 4, 'batch_size': 32,
              'log_every_n_steps': 1, 'num_show': 2}
    pargs = [x for k, v in params.items() for x in ('-p', k, v)]
    r = hl(runs, 'slurm', 'submit', TRAIN_NB, *pargs, '--run-id', 'trainq', '--time', '00:10:00', *COMMON)
    job_id = r.stdout.split()[2]
    rd = runs / 'trainq'
    ref_runs = tmp_path / 'ref'
    # the uninterrupted reference, run locally while the Slurm job trains
    ref = subprocess.Popen([str(VENV / 'bin' / 'papermill'), str(TRAIN_NB), str(tmp_path / 'ref.ipynb'), '-k', 'python3',
                            '--language', 'python', *[a for k, v in params.items() for a in ('-p', k, str(v))],
                            '-p', 'run_id', 'ref', '-p', 'resume_ckpt', 'auto'],
                           env={**os.environ, 'HALTING_LAB_RUNS': str(ref_runs)}, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rows = lambda: len((rd / 'metrics.csv').read_text().splitlines()) if (rd / 'metrics.csv').exists() else 0
    for n in (1, 2):   # preempt attempt 1 and attempt 2 once each has trained a few more steps
        before = rows()
        def progressed():
            st = status(rd)
            return st.get('state') == 'running' and len(st['attempts']) == n and rows() >= before + 3
        wait_for(progressed, 240, f'attempt {n} to make progress', log=rd)
        subprocess.run(['scancel', '--signal=USR1', '--batch', job_id], check=True)
        wait_for(lambda: len(status(rd).get('attempts', [])) > n or status(rd).get('state') == 'finished', 240,
                 f'the requeue after attempt {n}', log=rd)
    wait_for(lambda: status(rd).get('state') in ('finished', 'failed'), 300, 'the training job to finish', log=rd)
    st = status(rd)
    assert st['state'] == 'finished', st
    assert len(st['attempts']) >= 3 and [a['state'] for a in st['attempts'][:2]] == ['preempted', 'preempted']
    assert [a['restart_count'] for a in st['attempts']] == list(range(len(st['attempts'])))
    for a in st['attempts']:
        assert (rd / f"train.attempt{a['attempt']}.ipynb").exists()
    assert (rd / 'train.ipynb').read_bytes() == (rd / f"train.attempt{len(st['attempts'])}.ipynb").read_bytes()
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out[-3000:]
    res, ref_res = json.loads((rd / 'results.json').read_text()), json.loads((ref_runs / 'ref' / 'results.json').read_text())
    assert res['status'] == 'finished' and res['global_step'] == ref_res['global_step']
    for k, v in ref_res['final'].items():
        assert res['final'][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


# ---- 1 (checked last). the walltime job -------------------------------------------------------------
def test_walltime_requeue_resumes_and_matches(walltime_job, runs):
    job_id, rd = walltime_job
    wait_for(lambda: status(rd).get('state') in ('finished', 'failed'), 420, 'the walltime job to finish', log=rd, interval=2)
    st = status(rd)
    assert st['state'] == 'finished', st
    n = len(st['attempts'])
    assert n >= 2, 'the walltime never forced a requeue'
    assert all(a['state'] == 'preempted' for a in st['attempts'][:-1]) and st['attempts'][-1]['state'] == 'finished'
    assert st['job_ids'] == [job_id] and [a['restart_count'] for a in st['attempts']] == list(range(n))
    for a in st['attempts']:
        assert (rd / f"resumable_job.attempt{a['attempt']}.ipynb").exists()
    assert (rd / 'resumable_job.ipynb').exists()
    resumed = [x for x in (rd / 'resumes.log').read_text().split()]
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
