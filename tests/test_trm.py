"""TRM: shapes, no-grad cycles, carry bookkeeping, Q-head init, adaptive eval budget, tiny training runs of the
attention and mlp_t variants through the real CLI, `--halting` eval, Sudoku uniqueness + format, and the
compare_halting notebook with tiny parameters."""
import json, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

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


@pytest.mark.parametrize('halting', ['fixed', 'q', 'latent-diff', 'cosine', 'kl', 'minp-kl', 'entropy-diff', 'argmax-stability'])
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


def test_exact_resume_keeps_carry(tiny_sudoku, tmp_path):
    "The carry is saved in the checkpoint and restored on resume."
    from halting_lab.train.run import train
    from halting_lab.train.checkpoint import read_checkpoint
    kw = dict(task='sudoku', model_type='trm', data_dir=str(tiny_sudoku), batch_size=8, hidden_size=32, num_heads=2,
              H_cycles=2, L_cycles=1, halt_max_steps=3, puzzle_emb_ndim=0, learning_rate=1e-3, progress_bar=False, seed=0)
    train(max_epochs=1, default_root_dir=str(tmp_path / 'a'), ema_rate=0.9, **kw)
    ck = read_checkpoint(tmp_path / 'a' / 'checkpoints' / 'last.ckpt')
    carry = ck['halting_lab']['extra']['carry']
    assert carry['z_H'].shape == (8, 81, 32) and carry['steps'].max() <= 3 and ck['halting_lab']['has_ema']
    # resuming with the same flags (ema_rate implies EMA) continues the run
    r = train(max_epochs=2, default_root_dir=str(tmp_path / 'a'), ema_rate=0.9, resume_ckpt='auto', **kw)
    assert r['status'] == 'finished' and r['epochs_completed'] == 2


# ---------------------------------------------------------------- comparison notebook
def test_compare_halting_notebook(tmp_path):
    pm = shutil.which('papermill') or str(Path(sys.executable).parent / 'papermill')
    out = tmp_path / 'cmp'; out.mkdir()
    r = subprocess.run([pm, str(ROOT / 'nbs' / 'experiments' / 'compare_halting.ipynb'), str(out / 'compare_halting.ipynb'),
                        '-p', 'task', 'maze', '-p', 'size', '5', '-p', 'num_train', '20', '-p', 'num_test', '12', '-p', 'budget', '3',
                        '-p', 'max_epochs', '1', '-p', 'hidden_size', '16', '-p', 'out_dir', str(out), '--no-progress-bar'],
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ('pareto.png', 'pareto.html', 'table.csv', 'results.json'):
        assert (out / f).stat().st_size > 0, f
    res = json.loads((out / 'results.json').read_text())
    names = {r['criterion'] for r in res['rows']}
    assert {'TRM fixed 1', 'TRM fixed 3', 'TRM Q-halt', 'TRM latent-diff'} <= names
    assert all(r['mean_steps'] <= 3 + 1e-6 for r in res['rows'])
    assert 'plotly' in (out / 'pareto.html').read_text()[:200000].lower()
