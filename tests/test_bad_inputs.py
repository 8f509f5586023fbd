"""The bad-input matrix (issue 19): every way a dataset can be broken x every command that reads it,
hostile files for every loader, two writers on one run, re-runs without --resume_ckpt, a non-finite
loss, a full disk, and file modes under umask 022. Each case asserts that the error names the file
or flag and that earlier results are unchanged."""
from __future__ import annotations
import contextlib, hashlib, json, os, pickle, shutil, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch
import lightning as L

from halting_lab.cli import main
from halting_lab.core import HaltingLabError, DiskFullError
from halting_lab.data import hrm
from halting_lab.train.run import train   # runs inside guarded_run: lock, re-run policy, NonFiniteGuard

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--batch_size', '16', '--max_epochs', '1', '--learning_rate', '3e-3', '--log_every_n_steps', '2',
        '--no-progress_bar', '--hidden_size', '16', '--time_limit', '3', '--accelerator', 'cpu']
TINY_KW = dict(model_type='act_rnn', batch_size=16, learning_rate=3e-3, log_every_n_steps=2, progress_bar=False,
               hidden_size=16, time_limit=3, accelerator='cpu')


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv('HALTING_LAB_RUNS', str(tmp_path / 'runs'))
    monkeypatch.setenv('OMP_NUM_THREADS', '1')


@pytest.fixture(scope='module')
def good(tmp_path_factory):
    "A small valid 7x7 maze dataset (48 train, 8 test)."
    from halting_lab.tasks.maze import build_maze_dataset
    d = tmp_path_factory.mktemp('data') / 'maze7'
    build_maze_dataset(d, num_train=48, num_test=8, size=7, seed=0, progress=False)
    return d


@pytest.fixture(scope='module')
def trained(good, tmp_path_factory):
    "One finished 1-epoch run on `good` (its last.ckpt is what `eval` reads)."
    from halting_lab.train.run import train
    run = tmp_path_factory.mktemp('runs') / 'base'
    train(**TINY_KW, data_dir=str(good), default_root_dir=str(run), max_epochs=1)
    return run


def _digest(d:Path)->dict:
    "{relative path: sha1} of every file under `d`."
    return {str(p.relative_to(d)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(d.rglob('*')) if p.is_file()}


# ---------------------------------------------------------------- the matrix: broken datasets x commands
def _npy(d, split, field): return d / split / f'all__{field}.npy'
def _load(d, split, field): return np.load(_npy(d, split, field))
def _save(d, split, field, a): np.save(_npy(d, split, field), a)
def _json(d, split, **kw):
    p = d / split / 'dataset.json'
    p.write_text(json.dumps({**json.loads(p.read_text()), **kw}))

def _rewrite_test(d, **kw):
    "Replace the test split by 4 examples, optionally cropped/relabelled, written consistently."
    x, y = _load(d, 'test', 'inputs')[:4], _load(d, 'test', 'labels')[:4]
    arrays = {'inputs': x[:, :kw.pop('seq_len', x.shape[1])], 'labels': y[:, :x.shape[1]]}
    arrays['labels'] = arrays['labels'][:, :arrays['inputs'].shape[1]]
    for f in list(kw):
        if f in ('puzzle_identifiers',): arrays[f] = kw.pop(f)
    hrm.write_split(d / 'test', {**arrays}, vocab_size=kw.pop('vocab_size', 6), **kw)

# name: (split the damage is in, corrupt(d), words the error must contain)
BROKEN = {
    'float_inputs':     ('test',  lambda d: _save(d, 'test', 'inputs', _load(d, 'test', 'inputs').astype(np.float32)),
                         ['test/all__inputs.npy', "'inputs'", 'float32']),
    'float_labels':     ('train', lambda d: _save(d, 'train', 'labels', _load(d, 'train', 'labels').astype(np.float64)),
                         ['train/all__labels.npy', "'labels'", 'float64']),
    'object_ids':       ('train', lambda d: np.save(_npy(d, 'train', 'puzzle_identifiers'),
                                                    np.array([None] * len(_load(d, 'train', 'puzzle_identifiers')), dtype=object),
                                                    allow_pickle=True),
                         ['train/all__puzzle_identifiers.npy', 'dtype object']),
    'truncated_body':   ('train', lambda d: _npy(d, 'train', 'inputs').write_bytes(_npy(d, 'train', 'inputs').read_bytes()[:-100]),
                         ['train/all__inputs.npy', 'truncated']),
    'truncated_header': ('test',  lambda d: _npy(d, 'test', 'labels').write_bytes(_npy(d, 'test', 'labels').read_bytes()[:20]),
                         ['test/all__labels.npy', 'header']),
    'not_npy':          ('test',  lambda d: _npy(d, 'test', 'inputs').write_text('1,2,3\n'),
                         ['test/all__inputs.npy', 'not a .npy']),
    'json_seq_len':     ('train', lambda d: _json(d, 'train', seq_len=100),
                         ['train/dataset.json', "'seq_len'"]),
    'split_seq_len':    ('test',  lambda d: _rewrite_test(d, seq_len=36),
                         ['test/dataset.json', "'seq_len' is 36"]),
    'split_vocab':      ('test',  lambda d: _rewrite_test(d, vocab_size=9),
                         ['test/dataset.json', "'vocab_size' is 9"]),
    'empty_test':       ('test',  lambda d: hrm.write_split(d / 'test', {'inputs': _load(d, 'test', 'inputs')[:0],
                                                                        'labels': _load(d, 'test', 'labels')[:0]}, vocab_size=6),
                         ['test/all__inputs.npy', '0 examples']),
    'token_range':      ('test',  lambda d: _save(d, 'test', 'inputs', np.where(_load(d, 'test', 'inputs') == 1, 9,
                                                                             _load(d, 'test', 'inputs')).astype(np.uint8)),
                         ['test/all__inputs.npy', 'token id 9']),
    'ids_out_of_range': ('test',  lambda d: _save(d, 'test', 'puzzle_identifiers',
                                                  np.full(len(_load(d, 'test', 'puzzle_identifiers')), 5, np.int32)),
                         ['test/all__puzzle_identifiers.npy', "'puzzle_identifiers'", 'id 5']),
    'bad_indices':      ('train', lambda d: _save(d, 'train', 'puzzle_indices', _load(d, 'train', 'puzzle_indices')[::-1].copy()),
                         ['train/all__puzzle_indices.npy', "'puzzle_indices'"]),
    'missing_test':     ('test',  lambda d: shutil.rmtree(d / 'test'),
                         ['test/dataset.json', 'missing']),
    'missing_array':    ('train', lambda d: _npy(d, 'train', 'labels').unlink(),
                         ['train/all__labels.npy', 'missing']),
    'bad_json':         ('train', lambda d: (d / 'train' / 'dataset.json').write_text('{"vocab_size": 6,'),
                         ['train/dataset.json', 'invalid JSON']),
    'missing_field':    ('test',  lambda d: (d / 'test' / 'dataset.json').write_text(json.dumps(
                             {k: v for k, v in json.loads((d / 'test' / 'dataset.json').read_text()).items() if k != 'vocab_size'})),
                         ['test/dataset.json', "'vocab_size'"]),
}


@pytest.fixture
def broken(good, tmp_path, request):
    "A copy of `good` broken the way `request.param` names."
    split, corrupt, needles = BROKEN[request.param]
    d = tmp_path / request.param
    shutil.copytree(good, d)
    corrupt(d)
    return d, split, needles


def _named(err:str, needles:list):
    for n in needles: assert n in err, f'{n!r} not in: {err}'
    assert 'Traceback' not in err, err


@pytest.mark.parametrize('broken', list(BROKEN), indirect=True)
def test_data_check(broken, capsys):
    d, split, needles = broken
    before = _digest(d)
    assert main(['data', 'check', str(d)]) == 1
    _named(capsys.readouterr().err, needles)
    assert _digest(d) == before                               # data check never writes


@pytest.mark.parametrize('broken', list(BROKEN), indirect=True)
def test_train_stops_before_compute(broken, tmp_path, capsys):
    "Both splits are validated before the first step: no checkpoint, no metrics row, a named error."
    d, split, needles = broken
    run = tmp_path / 'run'
    t0 = time.time()
    assert main(['train', '--data_dir', str(d), '--default_root_dir', str(run), *TINY]) == 1
    _named(capsys.readouterr().err, needles)
    assert time.time() - t0 < 60
    assert not list(run.glob('checkpoints/*.ckpt')) and not (run / 'results.json').exists()
    rows = (run / 'metrics.csv').read_text().strip().splitlines() if (run / 'metrics.csv').exists() else []
    assert len(rows) <= 1


@pytest.mark.parametrize('broken', list(BROKEN), indirect=True)
def test_eval(broken, trained, tmp_path, capsys):
    "`eval` on the damaged split: the same named error, no CSV written, the checkpoint untouched."
    d, split, needles = broken
    ck, out = trained / 'checkpoints' / 'last.ckpt', tmp_path / 'rows.csv'
    before = _digest(trained / 'checkpoints')
    rc = main(['eval', '--ckpt', str(ck), '--data_dir', str(d), '--split', split, '--device', 'cpu',
               '--output', str(out)])
    assert rc == 1
    _named(capsys.readouterr().err, needles)
    assert not out.exists() and _digest(trained / 'checkpoints') == before


def test_good_dataset_passes_every_command(good, trained, tmp_path, capsys):
    assert main(['data', 'check', str(good), '--no-example']) == 0
    assert main(['eval', '--ckpt', str(trained / 'checkpoints' / 'last.ckpt'), '--data_dir', str(good),
                 '--device', 'cpu', '--output', str(tmp_path / 'rows.csv')]) == 0
    assert len((tmp_path / 'rows.csv').read_text().splitlines()) == 9


def test_validation_is_cheap(tmp_path):
    "Validating 200k examples x 81 tokens (16 MB memory-mapped, both splits) takes well under a few seconds."
    x = np.random.default_rng(0).integers(1, 10, (200_000, 81), dtype=np.uint8)
    hrm.write_dataset(tmp_path / 'big', {'train': {'inputs': x, 'labels': x}, 'test': {'inputs': x[:1000], 'labels': x[:1000]}},
                      vocab_size=11)
    t0 = time.time()
    hrm.validate_dataset(tmp_path / 'big', cache=False)
    assert time.time() - t0 < 5


# ---------------------------------------------------------------- hostile files for every loader
class _Evil:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))

def _hostile(d:Path, good_ckpt:Path)->dict:
    "{kind: path} of files that are not checkpoints; loading any of them must not run code."
    marker = d / 'PWNED'
    b = good_ckpt.read_bytes()
    files = {'text': b'epoch=3\n', 'random': os.urandom(2048), 'empty': b'', 'truncated_zip': b[:len(b) // 2],
             'pickle_code': pickle.dumps(_Evil(marker))}
    out = {}
    for k, v in files.items():
        (d / f'{k}.ckpt').write_bytes(v)
        out[k] = d / f'{k}.ckpt'
    torch.save({'state_dict': {}, 'x': _Evil(marker)}, d / 'zip_code.ckpt')
    out['zip_code'] = d / 'zip_code.ckpt'
    return out

HOSTILE = ['text', 'random', 'empty', 'truncated_zip', 'pickle_code', 'zip_code']


@pytest.fixture
def hostile(trained, tmp_path):
    return _hostile(tmp_path, trained / 'checkpoints' / 'last.ckpt')


@pytest.mark.parametrize('kind', HOSTILE)
def test_load_checkpoint_refuses(hostile, kind, tmp_path):
    from halting_lab import load_checkpoint
    with pytest.raises(HaltingLabError) as ei: load_checkpoint(hostile[kind])
    msg = str(ei.value)
    assert f'{kind}.ckpt: not a halting_lab checkpoint' in msg and 'weights_only=False' not in msg
    assert not (tmp_path / 'PWNED').exists()


@pytest.mark.parametrize('kind', HOSTILE)
def test_eval_and_resume_refuse(hostile, kind, good, tmp_path, capsys):
    rc = main(['eval', '--ckpt', str(hostile[kind]), '--data_dir', str(good), '--device', 'cpu'])
    assert rc == 1 and 'not a halting_lab checkpoint' in capsys.readouterr().err
    rc = main(['train', '--data_dir', str(good), '--default_root_dir', str(tmp_path / 'r'), *TINY,
               '--resume_ckpt', str(hostile[kind])])
    err = capsys.readouterr().err
    assert rc == 1 and f'{kind}.ckpt: not a halting_lab checkpoint' in err, err
    assert not list((tmp_path / 'r').glob('checkpoints/*.ckpt'))
    assert not (tmp_path / 'PWNED').exists()


@pytest.mark.parametrize('kind', ['pickle_code', 'zip_code', 'text', 'truncated_zip'])
def test_nav_loaders_refuse(hostile, kind, tmp_path):
    "nav train --resume FILE, nav train --train-path FILE and the nav checkpoint loader run no code."
    from halting_lab.train import nav
    from halting_lab.tasks.nav import load_split
    calls = {'load_nav_checkpoint': lambda: nav.load_nav_checkpoint(hostile[kind]),
             'load_split': lambda: load_split(hostile[kind]),
             'train_nav(resume=)': lambda: nav.train_nav(resume=str(hostile[kind]), epochs=1, quiet=True)}
    for name, call in calls.items():
        with pytest.raises(HaltingLabError) as ei: call()
        assert str(hostile[kind]) in str(ei.value) and 'weights_only=False' not in str(ei.value), (name, str(ei.value))
    assert not (tmp_path / 'PWNED').exists()


# ---------------------------------------------------------------- one writer per run
_HOLD = """
import sys, time
from halting_lab.train.guard import RunLock
with RunLock(sys.argv[1], command='holder', enabled=True):
    print('locked', flush=True)
    sys.stdin.readline()
"""

@contextlib.contextmanager
def _holder(run_dir:Path):
    "A second process holding the run lock of `run_dir` until the block ends."
    p = subprocess.Popen([sys.executable, '-c', _HOLD, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, cwd=ROOT)
    try:
        assert p.stdout.readline().strip() == 'locked'
        yield p
    finally:
        with contextlib.suppress(Exception): p.stdin.close()
        p.wait(timeout=30)


def test_second_writer_refused(good, tmp_path):
    run = tmp_path / 'run'
    with _holder(run) as p:
        before = _digest(run)
        with pytest.raises(HaltingLabError, match=f'another process is writing this run \\(pid {p.pid}'):
            train(**TINY_KW, data_dir=str(good), default_root_dir=str(run), max_epochs=1)
        assert _digest(run) == before                       # nothing written beside the holder
    res = train(**TINY_KW, data_dir=str(good), default_root_dir=str(run), max_epochs=1)
    assert res['status'] == 'finished' and not (run / 'run.lock').exists()


def test_second_writer_refused_cli(good, tmp_path, capsys):
    run = tmp_path / 'run'
    with _holder(run) as p:
        assert main(['train', '--data_dir', str(good), '--default_root_dir', str(run), *TINY]) == 1
        assert f'pid {p.pid}' in capsys.readouterr().err
        assert not (run / 'config.json').exists()


def test_stale_lock_taken_over(good, tmp_path, capsys):
    run = tmp_path / 'run'
    p = subprocess.Popen([sys.executable, '-c', _HOLD, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == 'locked'
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert (run / 'run.lock').exists()                      # left behind by kill -9
    res = train(**TINY_KW, data_dir=str(good), default_root_dir=str(run), max_epochs=1)
    assert res['status'] == 'finished'
    assert f'took over a stale lock (pid {p.pid}' in capsys.readouterr().out
    assert not (run / 'run.lock').exists()


# ---------------------------------------------------------------- re-running into an existing run directory
class PreemptAt(L.Callback):
    def __init__(self, run, step): self.run, self.step = Path(run), step
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step: (self.run / 'PREEMPT').touch()


def test_rerun_of_finished_run_refused(good, tmp_path):
    run = tmp_path / 'run'
    kw = dict(**TINY_KW, data_dir=str(good), default_root_dir=str(run), max_epochs=1)
    train(**kw, _command=f'halting-lab train --default_root_dir {run}')
    before = _digest(run)
    with pytest.raises(HaltingLabError) as ei: train(**kw, _command=f'halting-lab train --default_root_dir {run}')
    msg = str(ei.value)
    assert 'already holds a finished run' in msg and '--resume_ckpt auto' in msg and f'{run}-2' in msg, msg
    after = _digest(run)
    for f in ('metrics.csv', 'checkpoints/last.ckpt', 'checkpoints/best.ckpt', 'results.json'):
        assert after[f] == before[f], f                     # the earlier run is unchanged
    res = train(**{**kw, 'max_epochs': 2}, resume_ckpt='auto')   # the printed way to continue it
    assert res['status'] == 'finished' and res['epochs_completed'] == 2


def test_rerun_of_unfinished_run_resumes(good, tmp_path):
    run = tmp_path / 'run'
    kw = dict(**TINY_KW, data_dir=str(good), default_root_dir=str(run), max_epochs=2)
    pre = train(**kw, _callbacks=[PreemptAt(run, 4)])
    assert pre['status'] == 'preempted'
    rows = (run / 'metrics.csv').read_text().splitlines()
    res = train(**kw)                               # same command, no --resume_ckpt
    assert res['status'] == 'finished' and res['global_step'] == 6
    assert (run / 'metrics.csv').read_text().splitlines()[:len(rows)] == rows   # not truncated


def test_rerun_cli_prints_the_commands(good, tmp_path, capsys):
    run = tmp_path / 'run'
    argv = ['train', '--data_dir', str(good), '--default_root_dir', str(run), *TINY]
    assert main(argv) == 0
    before = _digest(run)
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert '--resume_ckpt auto' in err and f'--default_root_dir {run}-2' in err, err
    after = _digest(run)
    assert all(after[f] == before[f] for f in ('metrics.csv', 'checkpoints/last.ckpt', 'checkpoints/best.ckpt'))


# ---------------------------------------------------------------- honest failure
class PoisonAt(L.Callback):
    "Set every weight to NaN before optimizer step `step` (a diverging run, deterministically)."
    def __init__(self, step): self.step = step
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                for p in pl_module.model.parameters(): p.fill_(float('nan'))


def test_non_finite_loss_stops_as_diverged(good, tmp_path):
    from halting_lab.train.guard import TrainingDiverged
    run = tmp_path / 'run'
    with pytest.raises(TrainingDiverged) as ei:
        train(**TINY_KW, data_dir=str(good), default_root_dir=str(run), max_epochs=3, _callbacks=[PoisonAt(4)])
    msg = str(ei.value)
    # poisoned before the 5th optimizer step: reported as step 5 of epoch 1, as metrics.csv counts steps
    assert 'non-finite loss' in msg and '(epoch 1, step 5)' in msg and 'ce=nan' in msg and 'last.ckpt' in msg, msg
    res = json.loads((run / 'results.json').read_text())
    assert res['status'] == 'diverged' and res['last_good_ckpt'].endswith('last.ckpt')
    ck = torch.load(run / 'checkpoints' / 'last.ckpt', weights_only=True)
    assert ck['global_step'] == 3                           # the epoch-0 checkpoint, the last good one
    assert all(torch.isfinite(v).all() for v in ck['state_dict'].values() if v.is_floating_point())
    with pytest.raises(HaltingLabError, match='already holds a diverged run'):
        train(**TINY_KW, data_dir=str(good), default_root_dir=str(run), max_epochs=3)


def test_non_finite_loss_cli(good, tmp_path, capsys):
    from halting_lab.train.run import train
    from halting_lab.train.guard import TrainingDiverged
    run = tmp_path / 'run'
    with pytest.raises(TrainingDiverged):
        train(**TINY_KW, data_dir=str(good), default_root_dir=str(run), max_epochs=2, _callbacks=[PoisonAt(4)])
    assert json.loads((run / 'results.json').read_text())['status'] == 'diverged'


def test_zero_batches_is_an_error(good, tmp_path):
    with pytest.raises(HaltingLabError, match='--limit_train_batches'):
        train(**TINY_KW, data_dir=str(good), default_root_dir=str(tmp_path / 'r'), limit_train_batches=0)
    assert not (tmp_path / 'r').exists()                    # created by the attempt, nothing of value: removed


def test_failure_before_first_checkpoint_cleans_up(good, tmp_path):
    class Crash(L.Callback):
        def on_train_batch_start(self, *a): raise RuntimeError('worker died')
    with pytest.raises(RuntimeError): train(**TINY_KW, data_dir=str(good), default_root_dir=str(tmp_path / 'r'),
                                                    _callbacks=[Crash()])
    assert not (tmp_path / 'r').exists()


@pytest.mark.parametrize('argv,flag', [(['--hidden_size', '0'], '--hidden_size'),
                                       (['--limit_train_batches', '0'], '--limit_train_batches'),
                                       (['--precision', 'fp8'], '--precision'),
                                       (['--devices', '0'], '--devices'),
                                       (['--learning_rate', 'nan'], '--learning_rate')])
def test_flag_ranges_cli(good, tmp_path, argv, flag, capsys):
    rc = main(['train', '--data_dir', str(good), '--default_root_dir', str(tmp_path / 'r'), *TINY, *argv])
    err = capsys.readouterr().err
    assert rc == 1 and flag in err and 'Traceback' not in err, err
    assert not list((tmp_path / 'r').glob('checkpoints/*.ckpt'))


# ---------------------------------------------------------------- files a shared cluster can read
def test_modes_under_umask_022(tmp_path):
    from halting_lab.tasks.maze import build_maze_dataset
    old = os.umask(0o022)
    try:
        d = build_maze_dataset(tmp_path / 'ds', num_train=32, num_test=8, size=7, seed=0, progress=False)
        run = tmp_path / 'run'
        train(**TINY_KW, data_dir=str(d), default_root_dir=str(run), max_epochs=1)
    finally: os.umask(old)
    mode = lambda p: oct(p.stat().st_mode & 0o777)
    assert mode(d) == oct(0o755) and mode(d / 'train') == oct(0o755)
    assert {mode(p) for p in d.rglob('*') if p.is_file()} == {oct(0o644)}
    assert mode(run) == oct(0o755) and mode(run / 'checkpoints') == oct(0o755)
    for f in ('config.json', 'metrics.csv', 'results.json', 'checkpoints/last.ckpt', 'checkpoints/best.ckpt'):
        assert mode(run / f) == oct(0o644), f


# ---------------------------------------------------------------- a full disk
@contextlib.contextmanager
def _tmpfs(d:Path, size:str):
    d.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(d)], capture_output=True)
    if r.returncode != 0: pytest.skip(f'cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]})')
    try: yield d
    finally: subprocess.run(['umount', '-l', str(d)], capture_output=True)


def test_full_disk_dataset_build(tmp_path, capsys):
    with _tmpfs(tmp_path / 'small', '48k') as d:
        rc = main(['build-maze', '--output-dir', str(d / 'maze'), '--num-train', '400', '--num-test', '50',
                   '--size', '9', '--quiet'])
        err = capsys.readouterr().err
        assert rc == 1 and 'no space left on device' in err and 'Traceback' not in err, err
        assert len([l for l in err.strip().splitlines() if l.strip()]) == 1
        assert list(d.iterdir()) == []                      # no partial dataset, no temp files


def test_full_disk_training(good, tmp_path):
    "The disk fills while checkpoints are written: one DiskFullError naming the path, no temp files."
    with _tmpfs(tmp_path / 'small', '160k') as d:
        run = d / 'run'
        with pytest.raises(DiskFullError) as ei:
            train(**{**TINY_KW, 'hidden_size': 64}, data_dir=str(good), default_root_dir=str(run), max_epochs=4)
        msg = str(ei.value)
        assert 'no space left on device' in msg and str(d) in msg and '\n' not in msg, msg
        assert not [p for p in d.rglob('*') if '.tmp' in p.name], list(d.rglob('*'))


# ---------------------------------------------------------------- kill -9, then the same command again
_KILLED = """
import json, os, signal, sys
import lightning as L
from halting_lab.train.run import train
class Die(L.Callback):
    def on_train_batch_end(self, trainer, *a):
        if trainer.global_step == 5: os.kill(os.getpid(), signal.SIGKILL)
train(**json.loads(sys.argv[1]), _callbacks=[Die()])
"""

def test_kill_9_then_resume_is_bit_exact(good, tmp_path):
    "kill -9 in the middle of epoch 1, then resume: the same weights (model + EMA) and metrics as an uninterrupted run."
    import csv
    kw = dict({**TINY_KW, "log_every_n_steps": 1}, data_dir=str(good), max_epochs=3, use_ema=True, ema_decay=0.9,
              time_penalty_warmup_steps=4, time_penalty=0.01)
    full = train(**kw, default_root_dir=str(tmp_path / 'full'))
    run = tmp_path / 'killed'
    p = subprocess.run([sys.executable, '-c', _KILLED, json.dumps({**kw, 'default_root_dir': str(run)})], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert torch.load(run / 'checkpoints' / 'last.ckpt', weights_only=True)['global_step'] == 3
    res = train(**kw, default_root_dir=str(run))   # the same command: resumes (auto)
    assert res['status'] == 'finished' and res['final'] == full['final']
    a = torch.load(tmp_path / 'full' / 'checkpoints' / 'last.ckpt', weights_only=True)['state_dict']
    b = torch.load(run / 'checkpoints' / 'last.ckpt', weights_only=True)['state_dict']
    assert a.keys() == b.keys() and any(k.startswith('ema_model.') for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda r: [{k: v for k, v in row.items() if k != 'epoch_time_s'} for row in csv.DictReader(open(r / 'metrics.csv'))]
    assert rows(run) == rows(tmp_path / 'full')
