"""Run-level guards (halting_lab.train.guard) and the safe writers/loaders they rely on: the run lock
across processes, stale and fallback locks, the re-run policy, failure records, flag ranges, file
modes under different umasks, full-disk errors, refused checkpoint files."""
from __future__ import annotations
import contextlib, json, os, signal, socket, subprocess, sys
from pathlib import Path

import pytest
import torch

from halting_lab.core import (HaltingLabError, DiskFullError, RunDir, atomic_dir, atomic_write_text, save_json,
                              torch_save_atomic)
from halting_lab.train import guard
from halting_lab.train.guard import RunLock, check_rerun, mark_failed, check_flag_ranges, run_state, LOCK_NAME

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys
from halting_lab.train.guard import RunLock
with RunLock(sys.argv[1], command='holder', enabled=True):
    print('locked', flush=True)
    sys.stdin.readline()
"""


def _start_holder(run):
    p = subprocess.Popen([sys.executable, '-c', HOLD, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == 'locked'
    return p


def test_lock_refused_across_processes_then_free(tmp_path):
    run = tmp_path / 'run'
    p = _start_holder(run)
    try:
        with pytest.raises(HaltingLabError) as ei: RunLock(run, enabled=True).acquire()
        msg = str(ei.value)
        assert f'pid {p.pid} on {socket.gethostname()}' in msg and '`holder`' in msg and '--run_id' in msg
    finally:
        p.stdin.close()
        p.wait(timeout=30)
    assert not (run / LOCK_NAME).exists()                   # released on exit
    with RunLock(run, enabled=True) as lk: assert lk.took_over is None


def test_stale_lock_after_kill_9_is_taken_over(tmp_path):
    run = tmp_path / 'run'
    p = _start_holder(run)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert json.loads((run / LOCK_NAME).read_text())['pid'] == p.pid
    with RunLock(run, enabled=True) as lk:
        assert lk.took_over['pid'] == p.pid and lk.holder()['pid'] == os.getpid()


def test_lock_without_flock_uses_the_pid(tmp_path, monkeypatch):
    "On a file system without flock the recorded pid decides: a live one refuses, a dead one is taken over."
    monkeypatch.setattr(guard, '_flock', lambda fd: None)
    run = tmp_path / 'run'
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        (run / LOCK_NAME).write_text(json.dumps({'pid': sleeper.pid, 'host': socket.gethostname()}))
        with pytest.raises(HaltingLabError, match=f'pid {sleeper.pid}'): RunLock(run, enabled=True).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    with RunLock(run, enabled=True) as lk: assert lk.took_over['pid'] == sleeper.pid
    (run / LOCK_NAME).write_text(json.dumps({'pid': 1, 'host': 'other-node'}))
    with pytest.raises(HaltingLabError, match=f'delete {run / LOCK_NAME}'): RunLock(run, enabled=True).acquire()


def test_lock_is_skipped_on_other_ranks(tmp_path, monkeypatch):
    "DDP children (LOCAL_RANK > 0) re-run train(): they must not be refused by rank 0's lock."
    run = tmp_path / 'run'
    with RunLock(run, enabled=True):
        monkeypatch.setenv('LOCAL_RANK', '1')
        assert guard.launch_rank() == 1
        with RunLock(run) as lk: assert not lk.enabled


def _fake_run(d, status=None, ckpts=('last.ckpt',), rows=3):
    rd = RunDir.create(path=d)
    for c in ckpts: (rd.checkpoints / c).write_bytes(c.encode())
    rd.metrics_csv.write_text('epoch,step\n' + ''.join(f'{i},{i}\n' for i in range(rows)))
    if status: save_json(rd.path / 'results.json', {'status': status})
    return rd


def test_rerun_policy(tmp_path):
    assert check_rerun(tmp_path / 'fresh') is None
    assert check_rerun(_fake_run(tmp_path / 'failed', 'failed').path) == 'auto'
    done = _fake_run(tmp_path / 'done', 'finished')
    with pytest.raises(HaltingLabError, match="train\\(\\.\\.\\., resume_ckpt='auto'\\)"): check_rerun(done.path)
    only_epochs = _fake_run(tmp_path / 'epochs', ckpts=('epoch=0.ckpt',))
    with pytest.raises(HaltingLabError, match='epoch=0.ckpt'): check_rerun(only_epochs.path)
    # a finished run resumed later (last.ckpt newer than results.json) counts as unfinished
    os.utime(done.path / 'results.json', (1, 1))
    assert run_state(done.path)['status'] == 'interrupted' and check_rerun(done.path) == 'auto'


def test_explicit_resume_of_an_older_epoch_moves_later_checkpoints(tmp_path):
    rd = _fake_run(tmp_path / 'r', 'finished', ckpts=('epoch=0.ckpt', 'epoch=1.ckpt', 'epoch=2.ckpt', 'last.ckpt', 'best.ckpt'))
    assert check_rerun(rd.path, str(rd.checkpoints / 'epoch=0.ckpt')).endswith('epoch=0.ckpt')
    assert sorted(p.name for p in rd.checkpoints.glob('*.ckpt')) == ['epoch=0.ckpt']
    moved = next(rd.checkpoints.glob('superseded-*'))
    assert sorted(p.name for p in moved.iterdir()) == ['best.ckpt', 'epoch=1.ckpt', 'epoch=2.ckpt', 'last.ckpt']


def test_mark_failed(tmp_path):
    rd = _fake_run(tmp_path / 'div', ckpts=())
    assert mark_failed(rd.path, 'nan', 'diverged', created=True) == 'marked'    # diverged: kept, for the record
    assert json.loads((rd.path / 'results.json').read_text())['last_good_ckpt'] is None
    rd = RunDir.create(path=tmp_path / 'gone')
    assert mark_failed(rd.path, 'boom', created=True) == 'removed' and not rd.path.exists()
    rd = RunDir.create(path=tmp_path / 'kept')                                   # existed before this attempt
    assert mark_failed(rd.path, 'boom', created=False) == 'marked'
    assert json.loads((rd.path / 'results.json').read_text())['status'] == 'failed'


@pytest.mark.parametrize('t,m,flag', [
    ({'batch_size': 0}, {}, '--batch_size'), ({}, {'hidden_size': -3}, '--hidden_size'),
    ({}, {'model_type': 'universal_transformer', 'ut_heads': 3, 'ut_key_depth': 16}, '--ut_heads'),
    ({}, {'model_type': 'trm', 'hidden_size': 16, 'num_heads': 5}, '--num_heads'),
    ({}, {'model_type': 'act_rnn', 'mixing': 'attention', 'hidden_size': 16, 'num_heads': 3}, '--num_heads'),
    ({'max_steps': 0}, {}, '--max_steps'), ({'limit_train_batches': -1}, {}, '--limit_train_batches'),
    ({'devices': 'two'}, {}, '--devices'), ({'precision': 'half'}, {}, '--precision'),
    ({'learning_rate': float('inf')}, {}, '--learning_rate'), ({}, {'dropout': 1.0}, '--dropout'),
    ({'weight_decay': -0.1}, {}, '--weight_decay'), ({'ema_decay': 1.5}, {}, '--ema_decay')])
def test_flag_ranges(t, m, flag):
    with pytest.raises(HaltingLabError, match=flag): check_flag_ranges(t, m)


def test_flag_ranges_accept_the_defaults():
    from halting_lab.train.config import TrainConfig, model_config_cls
    import dataclasses
    for mt in ('act_rnn', 'universal_transformer', 'trm'):
        check_flag_ranges({**TrainConfig().to_dict(), 'accelerator': 'cpu'}, dataclasses.asdict(model_config_cls(mt)()))


@pytest.mark.parametrize('mask,fmode,dmode', [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)])
def test_writers_follow_the_umask(tmp_path, mask, fmode, dmode):
    old = os.umask(mask)
    try:
        a = atomic_write_text(tmp_path / 'a.txt', 'x')
        b = torch_save_atomic({'w': torch.ones(1)}, tmp_path / 'b.ckpt')
        with atomic_dir(tmp_path / 'ds') as t: (t / 'f').write_text('x')
    finally: os.umask(old)
    assert (a.stat().st_mode & 0o777, b.stat().st_mode & 0o777) == (fmode, fmode)
    assert (tmp_path / 'ds').stat().st_mode & 0o777 == dmode


@contextlib.contextmanager
def _tmpfs(d, size):
    d.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(d)], capture_output=True).returncode:
        pytest.skip('cannot mount a tmpfs (needs root)')
    try: yield d
    finally: subprocess.run(['umount', '-l', str(d)], capture_output=True)


def test_disk_full_one_error_no_temp_files(tmp_path):
    import numpy as np
    with _tmpfs(tmp_path / 'small', '64k') as d:
        with pytest.raises(DiskFullError, match=f'{d}/ck/last.ckpt: no space left on device'):
            torch_save_atomic({'w': torch.randn(50_000)}, d / 'ck' / 'last.ckpt')
        with pytest.raises(DiskFullError, match=f'{d}/ds: no space left on device'):
            with atomic_dir(d / 'ds') as t: np.save(t / 'big.npy', np.zeros(100_000, np.uint8))
        assert [p.name for p in d.rglob('*')] == ['ck']


@pytest.mark.parametrize('make,needle', [
    (lambda p: p.mkdir(), 'is a directory'),
    (lambda p: torch.save(torch.ones(2), p), 'holds a Tensor'),
    (lambda p: torch.save({'weights': torch.ones(2)}, p), 'unknown layout'),
    (lambda p: p.write_bytes(b'\x80\x04K\x01.'), 'not a halting_lab checkpoint')])
def test_not_a_checkpoint(tmp_path, make, needle):
    from halting_lab import load_checkpoint
    p = tmp_path / 'x.ckpt'
    make(p)
    with pytest.raises(HaltingLabError, match=needle) as ei: load_checkpoint(p)
    assert str(p) in str(ei.value)


def test_requeued_slurm_job_breaks_its_own_old_lock(tmp_path, monkeypatch):
    "A requeued Slurm job (same SLURM_JOB_ID) takes over the lock its earlier incarnation still seems to hold."
    run = tmp_path / 'run'
    p = subprocess.Popen([sys.executable, '-c', HOLD, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, cwd=ROOT, env={**os.environ, 'SLURM_JOB_ID': '4242'})
    try:
        assert p.stdout.readline().strip() == 'locked'
        monkeypatch.setenv('SLURM_JOB_ID', '999')
        with pytest.raises(HaltingLabError, match=f'pid {p.pid}'): RunLock(run, enabled=True).acquire()
        monkeypatch.setenv('SLURM_JOB_ID', '4242')
        with RunLock(run, enabled=True) as lk:
            assert lk.took_over['pid'] == p.pid and lk.holder()['pid'] == os.getpid()
    finally:
        p.stdin.close()
        p.wait(timeout=30)
