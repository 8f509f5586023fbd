"""Local sequential sweep (halting-lab sweep) and the request checks shared with halting-lab slurm
(no Slurm needed)."""
from __future__ import annotations
import json, os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / 'tests' / 'assets' / 'resumable_job.ipynb'
HL = Path(sys.prefix) / 'bin' / 'halting-lab'


def hl(runs, *args):
    env = {**os.environ, 'HALTING_LAB_RUNS': str(runs)}
    return subprocess.run([str(HL), *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_local_sweep_runs_grid_and_summary(tmp_path):
    r = hl(tmp_path, 'sweep', ASSET, '--grid', 'seed=1,2', '--grid', 'scale=1,2', '-p', 'total_steps', 3, '--prefix', 'loc')
    assert r.returncode == 0, r.stdout + r.stderr
    import pandas as pd
    df = pd.read_csv(tmp_path / 'loc' / 'summary.csv')
    assert sorted(df.run_id) == ['loc_seed1_scale1', 'loc_seed1_scale2', 'loc_seed2_scale1', 'loc_seed2_scale2']
    assert set(df.state) == {'finished'} and df.final_metric.notna().all()
    assert (tmp_path / 'loc' / 'figures' / 'summary.png').exists()
    for rid in df.run_id:
        assert (tmp_path / rid / 'resumable_job.ipynb').exists()
        assert json.loads((tmp_path / rid / 'status.json').read_text())['state'] == 'finished'
    # running it again skips finished elements
    r = hl(tmp_path, 'sweep', ASSET, '--grid', 'seed=1,2', 'scale=1,2', '-p', 'total_steps', 3, '--prefix', 'loc')
    assert r.stdout.count('already finished, skipped') == 4


def test_failing_element_is_recorded_and_sweep_goes_on(tmp_path):
    r = hl(tmp_path, 'sweep', ASSET, '--grid', 'fail_at_step=2,-1', '-p', 'total_steps', 3, '--prefix', 'f')
    assert r.returncode == 1
    st = json.loads((tmp_path / 'f_fail_at_step2' / 'status.json').read_text())
    assert st['state'] == 'failed' and 'failing on purpose' in st['error']
    assert json.loads((tmp_path / 'f_fail_at_step-1' / 'status.json').read_text())['state'] == 'finished'


@pytest.mark.parametrize('cmd', [['sweep'], ['slurm', 'sweep'], ['slurm', 'submit']])
def test_unknown_parameter_and_missing_parameters_cell(tmp_path, cmd):
    grid = ['--grid', 'sed=1,2'] if 'sweep' in cmd else ['-p', 'sed', '1']
    r = hl(tmp_path, *cmd, ASSET, *grid, '--dry-run')
    assert r.returncode == 1 and "unknown parameter 'sed'" in r.stderr and 'total_steps' in r.stderr and 'Traceback' not in r.stderr
    nb = json.loads(ASSET.read_text())
    for c in nb['cells']:
        c.get('metadata', {}).pop('tags', None)
    plain = tmp_path / 'plain.ipynb'
    plain.write_text(json.dumps(nb))
    grid = ['--grid', 'seed=1,2'] if 'sweep' in cmd else ['-p', 'seed', '1']
    r = hl(tmp_path, *cmd, plain, *grid, '--dry-run')
    assert r.returncode == 1 and 'no cell tagged "parameters"' in r.stderr


def test_dry_run_prints_script_with_seed_000_flags(tmp_path):
    r = hl(tmp_path, 'slurm', 'submit', ASSET, '-p', 'total_steps', 5, '--run-id', 'maze_act', '--partition', 'p1',
           '--gres', 'gpu:a40:1', '--cpus-per-task', 4, '--time', '04:00:00', '-J', 'maze_train', '--mail-type', 'END,FAIL',
           '--mail-user', 'me@example.org', '--dry-run')
    assert r.returncode == 0, r.stderr
    for line in ['#SBATCH --partition=p1', '#SBATCH --gres=gpu:a40:1', '#SBATCH --cpus-per-task=4', '#SBATCH --time=04:00:00',
                 '#SBATCH --job-name=maze_train', '#SBATCH --mail-type=END,FAIL', '#SBATCH --mail-user=me@example.org',
                 '#SBATCH --open-mode=append', '#SBATCH --signal=B:USR1@300', '#SBATCH --requeue',
                 'PARAMS=(-p total_steps 5 -r run_id maze_act -r resume_ckpt auto)', 'scontrol requeue']:
        assert line in r.stdout, line
    assert not (tmp_path / 'maze_act').exists()   # a dry run writes nothing
