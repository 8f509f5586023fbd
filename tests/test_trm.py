"""TRM: shapes, no-grad cycles, carry bookkeeping, Q-head init, Q-halting shared with `halting.QHalt`, adaptive eval
budget, tiny training runs of the attention and mlp_t variants through the real CLI, `--halting` eval, exact resume
(per-rank carry files; single process and two DDP ranks), validation interval, AdamATan2, device resolution, the
self-requeueing Slurm script (run with stand-in srun/scontrol), Sudoku uniqueness + format, and the compare_halting
notebook with tiny parameters."""
import csv, json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch
import lightning as L

from halting_lab.models.trm import TRM, TRMConfig, trm_loss
from halting_lab.tasks import sudoku

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**kw):
    base = dict(vocab_size=6, seq_len=16, hidden_size=32, num_heads=4, H_cycles=3, L_cycles=2, L_layers=2,
                halt_max_steps=5, puzzle_emb_ndim=32, puzzle_emb_len=2, num_puzzle_identifiers=4, forward_dtype='float32')
    return TRMConfig(**{**base, **kw})


def _batch(B=6, L=16, V=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {'inputs': torch.randint(1, V, (B, L), generator=g), 'labels': torch.randint(1, V, (B, L), generator=g),
            'puzzle_identifiers': torch.randint(0, 4, (B,), generator=g)}


def _cli(*args, timeout=600):
    code = f"from halting_lab.cli import main; raise SystemExit(main({list(args)!r}))"
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


# ---------------------------------------------------------------- model
@pytest.mark.parametrize('mlp_t', [False, True])
def test_shapes(mlp_t):
    m = TRM(_cfg(mlp_t=mlp_t)).eval(); b = _batch()
    o = m(b, return_steps=True)
    assert o.logits.shape == (6, 16, 6) and o.step_logits.shape == (5, 6, 16, 6)
    assert o.halting_steps.shape == (6, 16) and torch.all(o.halting_steps == 5)
    c = m.initial_carry(b); c, out = m.forward_step(c, b)
    assert c.z_H.shape == (6, 18, 32) and out['logits'].shape == (6, 16, 6) and out['q_halt_logits'].shape == (6,)


def test_padding_positions_have_zero_halting_steps():
    m = TRM(_cfg()).eval(); b = _batch(); b['inputs'][:, -3:] = 0
    o = m(b, halting='q')
    assert torch.all(o.halting_steps[:, -3:] == 0) and torch.all(o.halting_steps[:, :-3] >= 1)


def test_no_grad_cycles_carry_no_graph():
    "Only the last cycle is differentiated: gradients equal those of a model whose first T-1 cycles are constants."
    torch.manual_seed(0); m = TRM(_cfg(H_cycles=3)); b = _batch()
    c = m.initial_carry(b); c, out = m.forward_step(c, b)
    assert not c.z_H.requires_grad and not c.z_L.requires_grad          # the carry is detached
    # count autograd nodes reachable from the output: one cycle's worth (n+1 applications of f), not T cycles'
    def n_nodes(t):
        seen, stack = set(), [t.grad_fn]
        while stack:
            f = stack.pop()
            if f is None or f in seen: continue
            seen.add(f); stack.extend(n for n, _ in f.next_functions)
        return len(seen)
    n3 = n_nodes(out['logits'].sum())
    m1 = TRM(_cfg(H_cycles=1)); m1.load_state_dict(m.state_dict())
    c1 = m1.initial_carry(b); c1, out1 = m1.forward_step(c1, b)
    assert n3 == n_nodes(out1['logits'].sum())
    # and the graph does not reach the input states: a perturbation of the no-grad cycles' inputs gets no gradient
    zH = m.H_init.expand(6, 18, 32).clone().requires_grad_(True)
    _, _, lg, _ = m.inner(zH, m.L_init.expand(6, 18, 32).clone(), b['inputs'], b['puzzle_identifiers'])
    lg.sum().backward(); assert zH.grad is None


def test_carry_bookkeeping():
    "A halted sample is replaced by the new batch's sample (fresh state, steps=1); the others continue."
    torch.manual_seed(0); m = TRM(_cfg(halt_max_steps=3)).train(); b1, b2 = _batch(seed=1), _batch(seed=2)
    c = m.initial_carry(b1); assert c.halted.all()
    c, _ = m.forward_step(c, b1); assert torch.equal(c.current_data['inputs'], b1['inputs']) and c.steps.tolist() == [1] * 6
    zH_before = c.z_H.clone()
    c.halted = torch.tensor([True, False, True, False, False, False])
    c, _ = m.forward_step(c, b2)
    for i in range(6):
        src = b2 if i in (0, 2) else b1
        assert torch.equal(c.current_data['inputs'][i], src['inputs'][i])
        assert torch.equal(c.current_data['labels'][i], src['labels'][i])
    assert c.steps.tolist() == [1, 2, 1, 2, 2, 2]
    # halted slots restarted from H_init: same result as a fresh carry on b2 for those rows
    m.eval(); fresh = m.initial_carry(b2); fresh, _ = m.forward_step(fresh, b2)
    m.train(); c2 = m.initial_carry(b1); c2, _ = m.forward_step(c2, b1); c2.halted = torch.tensor([True, False, True, False, False, False])
    m.eval(); c2, _ = m.forward_step(c2, b2)
    assert torch.allclose(c2.z_H[[0, 2]], fresh.z_H[[0, 2]], atol=1e-5)
    # at halt_max_steps every slot halts (eval: only the budget halts)
    m.eval(); c3 = m.initial_carry(b1)
    for t in range(3):
        c3, _ = m.forward_step(c3, b1); assert c3.halted.all() == (t == 2)


def test_q_head_init_and_training_halting():
    m = TRM(_cfg())
    assert torch.all(m.q_head.weight == 0) and torch.all(m.q_head.bias == -5)
    m.train(); b = _batch(); c = m.initial_carry(b); c, out = m.forward_step(c, b)
    assert torch.allclose(out['q_halt_logits'], torch.full((6,), -5.0))
    assert not c.halted.any()                                            # q_halt = -5 < 0: nobody halts early
    with torch.no_grad(): m.q_head.bias.fill_(3.0)
    torch.manual_seed(0); c = m.initial_carry(b); c, _ = m.forward_step(c, b)
    # q_halt > 0 halts unless exploration drew a min-steps >= 2 for that sample
    assert c.halted.float().mean() > 0.5


def test_exploration_min_steps():
    torch.manual_seed(0); m = TRM(_cfg(halt_exploration_prob=1.0, halt_max_steps=4)).train()
    with torch.no_grad(): m.q_head.bias.fill_(3.0)
    b = _batch(B=64); c = m.initial_carry(b); c, _ = m.forward_step(c, b)
    assert not c.halted.any()                                            # min steps drawn from [2, 4]


def test_qhalt_criterion_agrees_with_trm_training_halting():
    "`TRM.forward_step` (training) and `halting.QHalt` make the same halting decisions from the same random stream."
    from halting_lab.halting import QHalt
    torch.manual_seed(0); m = TRM(_cfg(halt_max_steps=6, halt_exploration_prob=0.5)).train()
    with torch.no_grad(): m.q_head.bias.fill_(3.0)                    # q_halt = 3 > 0: only exploration delays halting
    b = _batch(B=64)
    torch.manual_seed(123); c = m.initial_carry(b); first = torch.zeros(64, dtype=torch.long)
    for t in range(1, 7):
        c, _ = m.forward_step(c, b)
        first = torch.where((first == 0) & c.halted, torch.full_like(first, t), first)
    crit = QHalt(max_steps=6, explore_prob=0.5, training=True)
    torch.manual_seed(123); st = crit.init(torch.ones(64, 16, dtype=torch.bool))
    for t in range(6): _, st, _ = crit.step(st, t, q_halt=torch.full((64,), 3.0))
    assert torch.equal(crit.finalize(st).halting_steps[:, 0].long(), first)
    assert first.min() >= 1 and len(first.unique()) > 2                # exploration spread the halting steps


@pytest.mark.parametrize('halting', ['fixed', 'q', 'entropy', 'latent-diff', 'cosine', 'kl', 'minp-kl', 'entropy-diff', 'argmax-stability'])
@pytest.mark.parametrize('budget', [1, 3, 7])
def test_adaptive_eval_never_exceeds_budget(halting, budget):
    torch.manual_seed(1); m = TRM(_cfg(halt_max_steps=5)).eval()
    with torch.no_grad(): m.q_head.weight.normal_(0, 1.0); m.q_head.bias.zero_()
    o = m(_batch(B=16), halting=halting, max_steps=budget, return_steps=True)
    assert o.halting_steps.max() <= budget and o.halting_steps.min() >= 1
    assert o.step_logits.shape[0] <= budget
    if halting == 'fixed': assert torch.all(o.halting_steps == budget)
    # the prediction is the one of the halting step
    hs = o.extras['halt_step']
    for i in range(16):
        assert torch.allclose(o.logits[i], o.step_logits[hs[i] - 1, i])


def test_q_halting_stops_at_first_positive_q():
    torch.manual_seed(0); m = TRM(_cfg(halt_max_steps=6)).eval()
    o_fix = m(_batch(B=8), return_steps=True)
    q = o_fix.extras['q_halt_logits']                                     # [S, B]
    with torch.no_grad(): m.q_head.bias.fill_(-float(q[2].median()))     # about half positive at some step
    o_fix = m(_batch(B=8), return_steps=True); q = o_fix.extras['q_halt_logits']
    o_q = m(_batch(B=8), halting='q')
    pos = q > 0; want = torch.where(pos.any(0), pos.float().argmax(0) + 1, torch.full((8,), 6.)).long()
    assert o_q.extras['halt_step'].tolist() == want.tolist()


def test_stablemax_loss_and_q_target():
    lab = torch.tensor([[1, 2, -100]]); logits = torch.nn.functional.one_hot(lab.clamp_min(0), 5).float() * 10
    tot, sc, met = trm_loss({'logits': logits, 'q_halt_logits': torch.zeros(1)}, lab)
    assert sc.tolist() == [True] and met['lm_loss'] < 0.5   # stablemax: s(10)=11 vs s(0)=1 -> p=11/15
    tot2, sc2, _ = trm_loss({'logits': -logits, 'q_halt_logits': torch.zeros(1)}, lab)
    assert sc2.tolist() == [False] and tot2 > tot


def test_bf16_autocast_cpu_runs():
    m = TRM(_cfg(forward_dtype='bfloat16')).eval(); o = m(_batch())
    assert torch.isfinite(o.logits).all()


# ---------------------------------------------------------------- sudoku
def test_sudoku_unique_and_format(tmp_path):
    from halting_lab.data.hrm import read_dataset, check_dataset
    out = sudoku.build_sudoku(tmp_path / 's', num_train=6, num_test=3, min_givens=30, max_givens=40, aug=2, seed=3)
    check_dataset(out)
    ds = read_dataset(out)
    md, sets = ds['train']; a = sets['all']
    assert (md.vocab_size, md.seq_len, md.pad_id, md.ignore_label_id, md.num_puzzle_identifiers) == (11, 81, 0, 0, 1)
    assert md.total_puzzles == 6 and a['inputs'].dtype == np.uint8 and a['puzzle_indices'].dtype == np.int32
    assert a['inputs'].shape == (18, 81) and a['group_indices'].tolist() == [0, 3, 6, 9, 12, 15, 18]
    for x, y in zip(a['inputs'], a['labels']):
        x, y = x.astype(int) - 1, y.astype(int) - 1
        assert x.min() >= 0 and y.min() >= 1 and 30 <= (x > 0).sum() <= 40
        assert sudoku.is_valid_solution(y) and np.all((x == 0) | (x == y))
        n, sol = sudoku.count_solutions(x, limit=2); assert n == 1 and list(sol) == list(y)


def test_sudoku_hrm_variant_without_total_puzzles_loads(tmp_path):
    "The official sudoku-extreme dataset.json (HRM builder) has no total_puzzles; it loads unchanged."
    from halting_lab.data.hrm import read_dataset, check_dataset
    from halting_lab.data.datamodule import PuzzleDataset
    out = sudoku.build_sudoku(tmp_path / 's', num_train=3, num_test=2, min_givens=40, max_givens=45, seed=0)
    for split in ('train', 'test'):
        j = json.loads((out / split / 'dataset.json').read_text()); j.pop('total_puzzles')
        (out / split / 'dataset.json').write_text(json.dumps(j))
    md, sets = read_dataset(out)['test']; assert md.total_puzzles is None
    check_dataset(out)
    item = PuzzleDataset(out, split='test')[0]
    assert item['inputs'].shape == (81,) and int(item['labels'].min()) >= 2


def test_sudoku_count_detects_multiple_solutions():
    p, s = sudoku.make_puzzle(np.random.default_rng(5), 30)
    q = p.copy(); idx = np.flatnonzero(q)
    removed = 0
    for i in idx:                                            # remove givens until not unique any more
        q[i] = 0; removed += 1
        if sudoku.count_solutions(q, limit=2)[0] == 2: break
    assert sudoku.count_solutions(q, limit=2)[0] == 2


def test_build_sudoku_cli(tmp_path):
    r = _cli('build-sudoku', '--output-dir', str(tmp_path / 's'), '--num-train', '3', '--num-test', '2', '--givens', '40', '--aug', '1')
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / 's' / 'train' / 'all__inputs.npy').shape == (6, 81)
    r = _cli('build-sudoku', '--output-dir', str(tmp_path / 'x'), '--min-givens', '50', '--max-givens', '40')
    assert r.returncode == 1 and 'min-givens' in r.stderr


# ---------------------------------------------------------------- training through the real CLI
@pytest.fixture(scope='module')
def tiny_sudoku(tmp_path_factory):
    return sudoku.build_sudoku(tmp_path_factory.mktemp('d') / 'sudoku', num_train=40, num_test=16, min_givens=60, max_givens=70, seed=0)


@pytest.mark.parametrize('variant', [[], ['--mlp_t', '--pos_encodings', 'none']], ids=['attention', 'mlp_t'])
def test_tiny_training_run_and_halting_eval(tiny_sudoku, tmp_path, variant):
    run = tmp_path / 'run'
    r = _cli('train', '--task', 'sudoku', '--model_type', 'trm', '--data_dir', str(tiny_sudoku), '--batch_size', '8',
             '--max_epochs', '1', '--limit_train_batches', '4', '--hidden_size', '32', '--num_heads', '2', '--H_cycles', '2',
             '--L_cycles', '1', '--halt_max_steps', '3', '--puzzle_emb_ndim', '32', '--puzzle_emb_len', '1', '--ema_rate', '0.9',
             '--learning_rate', '1e-3', '--default_root_dir', str(run), '--no-progress_bar', *variant)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((run / 'results.json').read_text())
    assert res['global_step'] == 4 and 0 <= res['final']['val/exact_acc'] <= 1 and 'val/q_exact_acc' in res['final']
    assert res['final']['val/mean_halting_steps'] == 3
    ep = [r for r in csv.DictReader(open(run / 'metrics.csv')) if r['kind'] == 'epoch']
    assert ep and float(ep[-1]['val/q_exact_acc']) == res['final']['val/q_exact_acc']   # Q-halt metric in metrics.csv
    from halting_lab.train.checkpoint import load_checkpoint
    m = load_checkpoint(run / 'checkpoints' / 'last.ckpt')
    assert type(m).__name__ == 'TRM' and m.config.mlp_t == bool(variant) and m.checkpoint_info['weights'] == 'ema'
    from halting_lab.train.trm import trm_eval_cli
    out = tmp_path / 'h.json'
    assert trm_eval_cli(['--ckpt', str(run / 'checkpoints' / 'last.ckpt'), '--data_dir', str(tiny_sudoku), '--halting', 'all',
                         '--output', str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {r['halting'] for r in rows} >= {'fixed', 'q', 'latent-diff', 'kl', 'argmax-stability'}
    assert all(r['mean_steps'] <= r['budget'] for r in rows)
    r = _cli('eval', '--ckpt', str(run / 'checkpoints' / 'last.ckpt'), '--data_dir', str(tiny_sudoku), '--halting', 'q')
    assert r.returncode == 0, r.stderr[-3000:]                     # `halting-lab eval --halting` reaches the TRM evaluator
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert row['halting'] == 'q' and row['mean_steps'] <= row['budget']


class PreemptAt(L.Callback):
    "Create the PREEMPT file just before optimizer step `step` (deterministic preemption)."
    def __init__(self, run, step): self.run, self.step = Path(run), step
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step: (self.run / 'PREEMPT').touch()


def _sd(p): return torch.load(p, map_location='cpu', weights_only=True)['state_dict']
def _rows(p): return [{k: v for k, v in r.items() if k != 'epoch_time_s'} for r in csv.DictReader(open(p))]

RESUME_KW = dict(task='sudoku', model_type='trm', batch_size=8, hidden_size=16, num_heads=2, H_cycles=2, L_cycles=1,
                 halt_max_steps=4, halt_exploration_prob=0.5, puzzle_emb_ndim=16, puzzle_emb_len=1, ema_rate=0.9,
                 learning_rate=3e-3, progress_bar=False, log_every_n_steps=1, seed=0, limit_val_batches=1, keep_last_k=1)


@pytest.mark.timeout(600)
def test_exact_resume_equals_uninterrupted(tiny_sudoku, tmp_path):
    "Interrupted after epoch 1, or preempted mid-epoch, then resumed: weights, EMA, metrics.csv and final metrics equal an uninterrupted run."
    from halting_lab.train.run import train
    from halting_lab.train.checkpoint import read_checkpoint
    kw = dict(RESUME_KW, data_dir=str(tiny_sudoku))                    # 40 puzzles / 8 = 5 batches per epoch
    full = train(**kw, max_epochs=3, default_root_dir=str(tmp_path / 'full'))
    train(**kw, max_epochs=1, default_root_dir=str(tmp_path / 'ep'))
    ck1 = read_checkpoint(tmp_path / 'ep' / 'checkpoints' / 'last.ckpt')['halting_lab']['extra']
    shutil.copytree(tmp_path / 'ep', tmp_path / 'nocarry')              # for the control below
    ep = train(**kw, max_epochs=3, default_root_dir=str(tmp_path / 'ep'), resume_ckpt='auto')
    pre = train(**kw, max_epochs=3, default_root_dir=str(tmp_path / 'mid'), _callbacks=[PreemptAt(tmp_path / 'mid', 7)])
    assert pre['status'] == 'preempted' and pre['global_step'] == 8
    mid_carry = tmp_path / 'mid' / 'checkpoints' / 'carry' / 'step000000008.rank0.pt'; assert mid_carry.exists()
    mid = train(**kw, max_epochs=3, default_root_dir=str(tmp_path / 'mid'), resume_ckpt=str(tmp_path / 'mid' / 'checkpoints' / 'last.ckpt'))
    a = _sd(tmp_path / 'full' / 'checkpoints' / 'last.ckpt'); assert any(k.startswith('ema_model.') for k in a)
    for name, r in (('ep', ep), ('mid', mid)):
        assert r['status'] == 'finished' and r['final'] == full['final'], name
        b = _sd(tmp_path / name / 'checkpoints' / 'last.ckpt')
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert _rows(tmp_path / name / 'metrics.csv') == _rows(tmp_path / 'full' / 'metrics.csv'), name
    # the checkpoint names this rank's carry file; every checkpoint still on disk has its file (older ones are pruned)
    assert ck1['carry_file'] == {'id': 'step000000005', 'world_size': 1} and 'carry' not in ck1
    ckdir = tmp_path / 'full' / 'checkpoints'
    named = {read_checkpoint(p)['halting_lab']['extra']['carry_file']['id'] for p in ckdir.glob('*.ckpt')}
    files = {p.name.split('.rank')[0] for p in (ckdir / 'carry').glob('*.rank0.pt')}
    assert named <= files <= named | {'step000000010'}                 # + the save before last.ckpt's
    assert not mid_carry.exists()                                      # the mid-epoch save's file went once no checkpoint named it
    # control: the same resume without the carry file is not exact (the test above can see a lost carry)
    for p in (tmp_path / 'nocarry' / 'checkpoints' / 'carry').glob('*'): p.unlink()
    with pytest.warns(UserWarning, match='carry file .* is missing'):
        nc = train(**kw, max_epochs=3, default_root_dir=str(tmp_path / 'nocarry'), resume_ckpt='auto')
    assert nc['status'] == 'finished' and nc['final'] != full['final']


@pytest.mark.timeout(600)
def test_ddp_exact_resume_restores_each_ranks_carry(tiny_sudoku, tmp_path):
    "Two DDP ranks (gloo): each writes and reloads its own carry file; 1 epoch + resume == 2 epochs uninterrupted."
    hl = Path(sys.executable).with_name('halting-lab')
    flags = [x for k, v in {**RESUME_KW, 'data_dir': str(tiny_sudoku)}.items() if k not in ('progress_bar',)
             for x in ([f'--{k}', str(v)])] + ['--no-progress_bar', '--accelerator', 'cpu', '--devices', '2']
    def run(root, epochs):
        r = subprocess.run([str(hl), 'train', *flags, '--max_epochs', str(epochs), '--default_root_dir', str(root), '--resume_ckpt', 'auto'],
                           capture_output=True, text=True, timeout=540, cwd=ROOT, env={**os.environ, 'OMP_NUM_THREADS': '1'})
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        return json.loads((root / 'results.json').read_text())
    full = run(tmp_path / 'full', 2)
    run(tmp_path / 'res', 1)
    c0, c1 = (torch.load(tmp_path / 'res' / 'checkpoints' / 'carry' / f'step000000002.rank{r}.pt', weights_only=True) for r in (0, 1))
    assert not torch.equal(c0['current_data']['inputs'], c1['current_data']['inputs'])   # the ranks work on different shards
    res = run(tmp_path / 'res', 2)
    assert res['status'] == 'finished' and res['global_step'] == full['global_step'] == 4 and res['final'] == full['final']
    a, b = _sd(tmp_path / 'full' / 'checkpoints' / 'last.ckpt'), _sd(tmp_path / 'res' / 'checkpoints' / 'last.ckpt')
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.timeout(600)
def test_eval_interval_validates_every_n_epochs_and_at_the_end(tiny_sudoku, tmp_path):
    from halting_lab.train.run import train
    r = train(**{**RESUME_KW, 'data_dir': str(tiny_sudoku)}, max_epochs=4, limit_train_batches=1, eval_interval=3,
              default_root_dir=str(tmp_path / 'r'))
    rows = [x for x in csv.DictReader(open(tmp_path / 'r' / 'metrics.csv')) if x['kind'] == 'epoch']
    assert [x['val/exact_acc'] != '' for x in rows] == [False, False, True, True]        # epoch 3 of 3, and the last
    assert r['status'] == 'finished' and 'val/exact_acc' in r['final'] and r['best']['epoch'] in (2, 3)


@pytest.mark.timeout(600)
def test_adam_atan2_optimizer_trains_and_resumes(tiny_sudoku, tmp_path):
    pytest.importorskip('adam_atan2_pytorch')
    from halting_lab.train.run import train
    kw = dict(RESUME_KW, data_dir=str(tiny_sudoku), optimizer='adam_atan2', limit_train_batches=2)
    full = train(**kw, max_epochs=2, default_root_dir=str(tmp_path / 'a'))
    train(**kw, max_epochs=1, default_root_dir=str(tmp_path / 'b')); res = train(**kw, max_epochs=2, default_root_dir=str(tmp_path / 'b'), resume_ckpt='auto')
    assert res['final'] == full['final']
    st = torch.load(tmp_path / 'a' / 'checkpoints' / 'last.ckpt', map_location='cpu', weights_only=True)['optimizer_states'][0]
    assert st['param_groups'][0]['kind'] == 'adam_atan2' and st['param_groups'][0]['a'] == 1.0
    assert all('steps' in v for i, v in st['state'].items() if i < len(st['param_groups'][0]['params']))   # the package's state


def test_adam_atan2_missing_package_is_a_clear_error(monkeypatch):
    from halting_lab.core import HaltingLabError
    from halting_lab.train.trm import adam_atan2_class
    monkeypatch.setitem(sys.modules, 'adam_atan2_pytorch', None)          # import fails as if not installed
    with pytest.raises(HaltingLabError, match='pip install adam-atan2-pytorch'): adam_atan2_class()


def test_device_auto_prefers_cuda_then_mps(monkeypatch):
    "`--device auto` of `halting-lab eval --halting`: cuda > mps > cpu; a missing requested device is a clear error."
    from halting_lab.core import HaltingLabError, resolve_device
    for cuda, mps, want in ((True, True, 'cuda'), (False, True, 'mps'), (False, False, 'cpu')):
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, 'is_available', lambda: mps)
        assert resolve_device('auto') == want
    with pytest.raises(HaltingLabError, match='MPS is not available'): resolve_device('mps')


def test_trm_eval_cli_resolves_auto_device(tiny_sudoku, tmp_path, monkeypatch):
    from halting_lab import core
    from halting_lab.train.run import train
    from halting_lab.train.trm import trm_eval_cli
    r = train(**{**RESUME_KW, 'data_dir': str(tiny_sudoku)}, max_epochs=1, limit_train_batches=1, default_root_dir=str(tmp_path / 'r'))
    seen = []
    monkeypatch.setattr(core, 'resolve_device', lambda d: seen.append(d) or 'cpu')
    assert trm_eval_cli(['--ckpt', r['last_ckpt'], '--data_dir', str(tiny_sudoku), '--halting', 'entropy', '--limit', '4']) == 0
    assert seen == ['auto']


# ---------------------------------------------------------------- Slurm: the requeueing training job
STANDINS = {'srun': 'while [[ "$1" == -* ]]; do shift; done; exec "$@"',           # one task: run the command
            'scontrol': 'echo "$@" >> "$STANDIN_LOG"', 'sleep': 'exit 0', 'hostname': 'echo node1'}


def test_slurm_script_traps_usr1_checkpoints_requeues_and_resumes(tiny_sudoku, tmp_path):
    "The rendered job (stand-in srun/scontrol): USR1 -> PREEMPT -> last.ckpt -> scontrol requeue; the next attempt resumes and finishes."
    from halting_lab.slurm import SlurmConfig
    from halting_lab.slurm import slurm_script
    root = tmp_path / 'runs'
    recipe = dict(RESUME_KW, data_dir=str(tiny_sudoku), run_id='trm-slurm', max_epochs=30, limit_train_batches=2, accelerator='cpu')
    s = slurm_script(recipe, gpus=0, cfg=SlurmConfig(time='00:20:00'), root=root)
    for line in ('#SBATCH --signal=B:USR1@300', '#SBATCH --requeue', 'trap on_usr1 USR1', 'touch "$RUN_DIR/PREEMPT"',
                 'scontrol requeue "${SLURM_JOB_ID}"', 'train --task sudoku', '--resume_ckpt auto', '--run_id trm-slurm'):
        assert line in s, line
    job = tmp_path / 'job.sbatch'; job.write_text(s)
    assert subprocess.run(['bash', '-n', str(job)], capture_output=True).returncode == 0
    bin_ = tmp_path / 'bin'; bin_.mkdir()
    for name, body in STANDINS.items(): (bin_ / name).write_text(f'#!/bin/bash\n{body}\n'); (bin_ / name).chmod(0o755)
    env = {**os.environ, 'PATH': f"{bin_}:{os.environ['PATH']}", 'SLURM_JOB_ID': '4242', 'STANDIN_LOG': str(tmp_path / 'scontrol.log'),
           'OMP_NUM_THREADS': '1'}
    run = root / 'trm-slurm'
    p = subprocess.Popen(['bash', str(job)], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not ((run / 'metrics.csv').exists() and 'epoch' in (run / 'metrics.csv').read_text()):
        assert p.poll() is None and time.time() - t0 < 300, 'training did not start'
        time.sleep(0.2)
    p.send_signal(signal.SIGUSR1)                                          # Slurm's --signal=B:USR1 goes to the batch shell
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
    assert 'USR1: walltime is near' in out and 'requeueing job 4242' in out
    assert (tmp_path / 'scontrol.log').read_text().split() == ['requeue', '4242']
    res = json.loads((run / 'results.json').read_text()); assert res['status'] == 'preempted', res
    st = json.loads((run / 'status.json').read_text()); assert st['state'] == 'requeued' and len(st['attempts']) == 1
    assert (run / 'checkpoints' / 'last.ckpt').exists() and list((run / 'checkpoints' / 'carry').glob('*.rank0.pt'))
    # the requeued job: same script, next attempt resumes from last.ckpt and finishes
    r2 = subprocess.run(['bash', str(job)], env={**env, 'SLURM_RESTART_COUNT': '1'}, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    res = json.loads((run / 'results.json').read_text())
    assert res['status'] == 'finished' and res['epochs_completed'] == 30 and res['global_step'] == 60
    st = json.loads((run / 'status.json').read_text()); assert st['state'] == 'finished' and len(st['attempts']) == 2
    cfg = json.loads((run / 'config.json').read_text()); assert cfg['resumes'] and cfg['resumes'][0]['resumed_from'].endswith('last.ckpt')
    r3 = subprocess.run(['bash', str(job)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)   # finished: not restarted
    assert r3.returncode == 0 and 'already finished' in r3.stdout


# ---------------------------------------------------------------- comparison notebook
def test_compare_halting_notebook(tmp_path):
    pm = shutil.which('papermill') or str(Path(sys.executable).parent / 'papermill')
    out = tmp_path / 'cmp'; out.mkdir()
    r = subprocess.run([pm, str(ROOT / 'nbs' / 'experiments' / 'compare_halting.ipynb'), str(out / 'compare_halting.ipynb'),
                        '-p', 'task', 'maze', '-p', 'size', '5', '-p', 'num_train', '20', '-p', 'num_test', '12', '-p', 'budget', '3',
                        '-p', 'max_epochs', '1', '-p', 'hidden_size', '16', '-p', 'trm_budget', '4', '-p', 'out_dir', str(out),
                        '-p', 'workers', '2',   # the models trained two at a time (train_many)
                        '--no-progress-bar'],
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ('pareto.png', 'pareto.html', 'table.csv', 'results.json'):
        assert (out / f).stat().st_size > 0, f
    res = json.loads((out / 'results.json').read_text())
    names = {r['criterion'] for r in res['rows']}
    assert {'TRM fixed 1', 'TRM fixed 4', 'TRM Q-halt', 'TRM latent-diff', 'TRM entropy'} <= names   # trm_budget 4
    for m in ('ACT-RNN (ACT)', 'ACT-RNN (PonderNet)', 'UT (ACT basic)', 'UT (ACT accumulated)', 'UT (ACT global)'):
        assert {m, f'{m} fixed 1', f'{m} fixed 3', f'{m} kl', f'{m} entropy', f'{m} argmax-stability'} <= names, m
    assert all(r['mean_steps'] <= (4 if r['model'] == 'TRM' else 3) + 1e-6 for r in res['rows'])
    summary = {r['model']: r for r in res['summary']}                  # the 'did every model learn' table
    assert summary['TRM']['budget'] == 4 and summary['UT (ACT global)']['budget'] == 3
    assert summary['TRM']['as_trained'] == summary['TRM']['fixed_budget']               # the TRM: its full budget
    ut = summary['UT (ACT basic)']
    assert ut['as_trained'] == ut['own_halting'] and 1 <= ut['own_mean_steps'] <= 3     # ACT: its own halting
    assert (out / 'summary.csv').exists() and (out / 'results.csv').exists()
    assert all(r['mean_steps'] == k for r in res['rows'] for k in (1, 3) if r['criterion'].endswith(f'fixed {k}'))
    assert 'plotly' in (out / 'pareto.html').read_text()[:200000].lower()



def test_puzzle_embedding_sparse_update_touches_only_batch_rows():
    "A TRM training step with puzzle_emb_ndim > 0 changes exactly the batch's rows of the table; it has no .grad."
    from types import SimpleNamespace
    from halting_lab.models.sparse_emb import SparseEmbedding
    from halting_lab.train.trm import TRMLitModule
    torch.manual_seed(0)
    m = TRM(_cfg(num_puzzle_identifiers=10)).train()
    assert isinstance(m.puzzle_emb, SparseEmbedding)
    with torch.no_grad(): m.puzzle_emb.weight.normal_()
    tc = dict(learning_rate=1e-3, weight_decay=0.1, puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1)
    opt = TRMLitModule.make_optimizer(SimpleNamespace(tc=tc, model=m))
    b = _batch()
    b['puzzle_identifiers'] = torch.tensor([3, 7, 3, 1, 7, 7])
    before = m.puzzle_emb.weight.detach().clone()
    c = m.initial_carry(b)
    c, out = m.forward_step(c, b)
    trm_loss(out, c.current_data['labels'])[0].backward()
    opt.step()
    w = m.puzzle_emb.weight
    assert w.grad is None and not w.requires_grad
    changed = torch.nonzero((w != before).any(-1)).flatten().tolist()
    assert changed == [1, 3, 7] and sorted(w.sparse_last_rows.tolist()) == [1, 3, 7]
    # the reference update on those rows: w (1 - lr wd) - lr sign(g), so |w - w0 (1 - lr wd)| = lr
    torch.testing.assert_close((w - before * (1 - 1e-2 * 0.1))[[1, 3, 7]].abs(),
                               torch.full((3, w.shape[1]), 1e-2), atol=1e-6, rtol=0)
    # the EMA model copies the updated rows of the table (no EMA of it, as the reference) and averages the rest
    from halting_lab.train.lightning import HaltingLitModule
    ema = TRM(_cfg(num_puzzle_identifiers=10))
    ema.load_state_dict({**m.state_dict(), 'puzzle_emb.weight': before})
    HaltingLitModule.update_ema(SimpleNamespace(ema_model=ema, model=m, tc={'ema_decay': 0.9}))
    assert torch.equal(ema.puzzle_emb.weight, w)
    sd = m.state_dict(); assert 'puzzle_emb.weight' in sd     # same key as nn.Embedding: old checkpoints load
    m2 = TRM(_cfg(num_puzzle_identifiers=10)); m2.load_state_dict(sd)
    assert torch.equal(m2.puzzle_emb.weight, w)


# ---------------------------------------------------------------- evaluation path == forward_step, bit for bit
def _loop_logits(m, b, S):
    "Logits after each of S `forward_step` calls on one batch (the reference training API), [S, B, L, V]."
    c, out = m.initial_carry(b), []
    with torch.no_grad():
        for _ in range(S):
            c, o = m.forward_step(c, b)
            out.append(o['logits'])
    return torch.stack(out)


@pytest.mark.parametrize('mlp_t', [False, True])
def test_fixed_forward_equals_forward_step_loop_bit_for_bit(mlp_t):
    torch.manual_seed(0); m = TRM(_cfg(mlp_t=mlp_t, halt_max_steps=4)).eval(); b = _batch()
    want = _loop_logits(m, b, 4)
    o = m(b, halting='fixed', return_steps=True)
    assert torch.equal(o.step_logits, want) and torch.equal(o.logits, want[-1])
    assert torch.equal(m(b).logits, want[-1])                            # without return_steps too


def _reference_eval(m, b, halting, S, threshold='auto'):
    "The evaluation loop before the fast path (gather / in-place scatter every step), latents copied per step."
    from halting_lab.models.trm import make_eval_criterion, _reset_state
    cfg, inp, pid = m.config, b['inputs'], b.get('puzzle_identifiers')
    B, L = inp.shape
    crit = make_eval_criterion(halting, S, threshold); mask = inp != 0; st = crit.init(mask)
    z_H, z_L = _reset_state(m, B, inp.device)
    cur, lat = torch.zeros(B, L, cfg.vocab_size), torch.zeros(B, L, cfg.hidden_size)
    qh, q_hist, steps_out = torch.full((B,), float('nan')), [], []
    halt_step, active = torch.full((B,), S, dtype=torch.long), torch.arange(B)
    with torch.no_grad():
        for t in range(S):
            a = active
            zh, zl, lg, q = m.inner(z_H[a], z_L[a], inp[a], None if pid is None else pid[a])
            z_H[a], z_L[a] = zh, zl
            cur[a] = lg.float(); lat = lat.clone(); lat[a] = zh[:, cfg.prefix_len:].float(); qh[a] = q[:, 0]
            _, st, running = crit.step(st, t, logits=cur, latent=lat, q_halt=qh, q_continue=None)
            q_hist.append(qh.clone()); steps_out.append(cur.clone())
            still = running.any(-1)
            halt_step[a[~still[a]]] = t + 1; active = a[still[a]]
            if active.numel() == 0: break
    return cur, halt_step, torch.stack(q_hist), torch.stack(steps_out), crit.finalize(st).halt_cumprob


@pytest.mark.parametrize('halting,threshold', [('fixed', 'auto'), ('q', 'auto'), ('entropy', 1.6), ('entropy-diff', 1e-3),
                                               ('latent-diff', 0.3), ('cosine', 0.02), ('kl', 5e-3),
                                               ('minp-kl', 1e-3), ('argmax-stability', 2)])
def test_adaptive_eval_unchanged_by_the_fast_path(halting, threshold):
    "Every halting mode gives what the former gather/scatter loop gave, bit for bit, with samples halting apart."
    torch.manual_seed(2); m = TRM(_cfg(halt_max_steps=6)).eval(); b = _batch(B=12)
    with torch.no_grad(): m.q_head.weight.normal_(0, 1.0); m.q_head.bias.zero_()
    cur, hs, qh, steps, cum = _reference_eval(m, b, halting, 6, threshold)
    o = m(b, halting=halting, threshold=threshold, return_steps=True)
    assert torch.equal(o.logits, cur) and o.extras['halt_step'].tolist() == hs.tolist()
    assert torch.equal(o.step_logits, steps) and torch.equal(o.halt_cumprob, cum)
    assert torch.equal(o.extras['q_halt_logits'].isnan(), qh.isnan())
    assert torch.equal(o.extras['q_halt_logits'].nan_to_num(), qh.nan_to_num())


def test_latent_rules_depend_on_their_threshold():
    "latent-diff compares y with the previous step's y (it used to compare y with itself and stop at step 2)."
    torch.manual_seed(0); m = TRM(_cfg(halt_max_steps=8)).eval(); b = _batch(B=8)
    steps = [m(b, halting='latent-diff', threshold=th).extras['halt_step'] for th in (10.0, 1e-9)]
    assert steps[0].tolist() == [1] * 8 and steps[1].tolist() == [8] * 8       # the old loop: [2] * 8 for both
