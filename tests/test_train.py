"""Training: CLI per model_type, papermill notebook, exact resume (epoch boundary + mid-epoch preemption), retention,
checkpoint loader, bad flag combinations, eval CSV."""
from __future__ import annotations
import csv, json, os, signal, subprocess, sys
from pathlib import Path
import pytest, torch
import lightning as L
from halting_lab.core import HaltingLabError
from halting_lab.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--batch_size', '16', '--max_epochs', '1', '--learning_rate', '3e-3', '--log_every_n_steps', '2', '--no-progress_bar']
FAMILY = {'act_rnn': ['--hidden_size', '16', '--time_limit', '3'],
          'universal_transformer': ['--hidden_size', '16', '--ut_embedding_size', '16', '--ut_heads', '2', '--ut_key_depth', '16',
                                    '--ut_value_depth', '16', '--ut_filter_size', '16', '--ut_max_hops', '3', '--ut_act',
                                    '--ut_act_loss_weight', '0.001'],
          'trm': ['--hidden_size', '16', '--H_cycles', '1', '--L_cycles', '1', '--halt_max_steps', '2', '--puzzle_emb_ndim', '0']}

def _has(model_type):
    try:
        from halting_lab.train.config import model_config_cls
        model_config_cls(model_type); return True
    except Exception: return False

@pytest.fixture(scope='module')
def maze_dir(tmp_path_factory):
    from halting_lab.tasks.maze import build_maze_dataset
    d = tmp_path_factory.mktemp('data') / 'maze7'
    build_maze_dataset(d, num_train=64, num_test=16, size=7, seed=0, progress=False)
    return d

@pytest.fixture(autouse=True)
def _runs_root(tmp_path, monkeypatch): monkeypatch.setenv('HALTING_LAB_RUNS', str(tmp_path / 'runs'))

def _train(maze_dir, run, *extra, model_type='act_rnn'):
    return main(['train', '--model_type', model_type, '--data_dir', str(maze_dir), '--default_root_dir', str(run),
                 *TINY, *FAMILY[model_type], *extra])

RUN_FILES = ['config.json', 'metrics.csv', 'train.log', 'results.json', 'checkpoints/last.ckpt', 'checkpoints/best.ckpt']

@pytest.mark.timeout(600)
@pytest.mark.parametrize('model_type', ['act_rnn', 'universal_transformer', 'trm'])
def test_cli_one_epoch(maze_dir, tmp_path, model_type):
    if not _has(model_type): pytest.skip(f'{model_type} not installed yet')
    run = tmp_path / model_type
    assert _train(maze_dir, run, model_type=model_type) == 0
    for f in RUN_FILES: assert (run / f).exists(), f
    res = json.loads((run / 'results.json').read_text())
    assert res['status'] == 'finished' and res['epochs_completed'] == 1
    for k in ('val/loss', 'val/cell_acc', 'val/exact_acc', 'val/mean_halting_steps', 'val/max_halting_steps', 'val/ponder_cost',
              'train/loss', 'train/exact_acc'):
        assert k in res['final'], k
    rows = list(csv.DictReader(open(run / 'metrics.csv')))
    assert [r['kind'] for r in rows].count('epoch') == 1 and any(r['kind'] == 'step' for r in rows)
    cfg = json.loads((run / 'config.json').read_text())
    assert cfg['model_type'] == model_type and 'torch' in cfg['versions'] and cfg['command'].startswith('halting-lab train')
    from halting_lab import load_checkpoint
    m = load_checkpoint(run / 'checkpoints' / 'last.ckpt')
    from halting_lab.core import model_class
    assert type(m) is model_class(model_type)

def _sd(p):
    return torch.load(p, map_location='cpu', weights_only=True)['state_dict']

class PreemptAt(L.Callback):
    "Create the PREEMPT file just before optimizer step `step` (deterministic preemption for the test)."
    def __init__(self, run, step): self.run, self.step = Path(run), step
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step: (self.run / 'PREEMPT').touch()

RESUME_FAMILY = {  # structure + the family's ponder schedule, small enough for seconds per run
    'act_rnn': dict(hidden_size=16, time_limit=3, time_penalty_warmup_steps=6, time_penalty=0.01),
    'universal_transformer': dict(hidden_size=16, ut_embedding_size=16, ut_heads=2, ut_key_depth=16, ut_value_depth=16,
                                  ut_filter_size=16, ut_max_hops=3, ut_act=True, ut_act_loss_weight=0.01)}

@pytest.mark.timeout(900)
@pytest.mark.parametrize('model_type', list(RESUME_FAMILY))
def test_exact_resume(maze_dir, tmp_path, model_type):
    "Uninterrupted vs interrupted after epoch 1 vs preempted mid-epoch: identical weights (model + EMA) and metrics."
    from halting_lab.train.run import train
    base = dict(data_dir=str(maze_dir), model_type=model_type, batch_size=16, learning_rate=3e-3, progress_bar=False,
                log_every_n_steps=1, use_ema=True, ema_decay=0.9, lr_warmup_epochs=1, **RESUME_FAMILY[model_type])
    full = train(**base, default_root_dir=str(tmp_path / 'full'), max_epochs=3)
    train(**base, default_root_dir=str(tmp_path / 'ep'), max_epochs=1)
    ep = train(**base, default_root_dir=str(tmp_path / 'ep'), max_epochs=3, resume_ckpt='auto')
    pre = train(**base, default_root_dir=str(tmp_path / 'mid'), max_epochs=3, _callbacks=[PreemptAt(tmp_path / 'mid', 6)])
    assert pre['status'] == 'preempted' and pre['global_step'] == 7 and not (tmp_path / 'mid' / 'PREEMPT').exists()
    mid = train(**base, default_root_dir=str(tmp_path / 'mid'), max_epochs=3,
                resume_ckpt=str(tmp_path / 'mid' / 'checkpoints' / 'last.ckpt'))
    a = _sd(tmp_path / 'full' / 'checkpoints' / 'last.ckpt')
    assert any(k.startswith('ema_model.') for k in a)
    strip = lambda p: [{k: v for k, v in r.items() if k != 'epoch_time_s'} for r in csv.DictReader(open(p))]
    for name, r in (('ep', ep), ('mid', mid)):
        assert r['status'] == 'finished' and r['final'] == full['final'], name
        b = _sd(tmp_path / name / 'checkpoints' / 'last.ckpt')
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert strip(tmp_path / name / 'metrics.csv') == strip(tmp_path / 'full' / 'metrics.csv'), name

class RecordWeights(L.Callback):
    "Copies of the raw weights at the start and after every optimizer step (the EMA has been updated by then)."
    def __init__(self): self.w = []
    def _take(self, m): return {k: v.detach().clone() for k, v in m.model.named_parameters()}
    def on_train_start(self, trainer, pl_module): self.w = [self._take(pl_module)]
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        assert len(self.w) == trainer.global_step; self.w.append(self._take(pl_module))

@pytest.mark.timeout(600)
def test_ema_closed_form_and_used_for_validation(maze_dir, tmp_path):
    "EMA after k optimizer steps = d^k w_0 + sum_i (1-d) d^(k-i) w_i (not a per-epoch average); val metrics use the EMA."
    from halting_lab.train.run import train, make_datamodule
    from halting_lab.train.config import params_to_configs
    from halting_lab.train.lightning import HaltingLitModule
    d, rec = 0.7, RecordWeights()
    kw = dict(data_dir=str(maze_dir), batch_size=16, hidden_size=16, time_limit=3, learning_rate=3e-3, progress_bar=False,
              use_ema=True, ema_decay=d, time_penalty=0.01, max_epochs=2, save_every_n_epochs=1)
    res = train(**kw, default_root_dir=str(tmp_path / 'ema'), _callbacks=[rec])
    ck = tmp_path / 'ema' / 'checkpoints'
    assert res['global_step'] == 8 and len(rec.w) == 9                  # 64 mazes / 16 = 4 steps per epoch
    def closed(k, name):
        return d ** k * rec.w[0][name] + sum((1 - d) * d ** (k - i) * rec.w[i][name] for i in range(1, k + 1))
    for path, k in ((ck / 'epoch=0.ckpt', 4), (ck / 'last.ckpt', 8)):
        sd = _sd(path)
        for name in rec.w[0]:
            torch.testing.assert_close(sd[f'ema_model.{name}'], closed(k, name), atol=1e-6, rtol=1e-5)
            assert torch.equal(sd[f'model.{name}'], rec.w[k][name])
    sd = _sd(ck / 'last.ckpt')
    moved = [n for n in rec.w[0] if not torch.equal(rec.w[0][n], rec.w[8][n])]
    assert moved
    per_epoch = lambda n: d ** 2 * rec.w[0][n] + (1 - d) * d * rec.w[4][n] + (1 - d) * rec.w[8][n]   # updated once per epoch
    swa = lambda n: (rec.w[4][n] + rec.w[8][n]) / 2                                                  # averaged per epoch
    for other in (per_epoch, swa):
        assert max(float((sd[f'ema_model.{n}'] - other(n)).abs().max()) for n in moved) > 1e-4
    # validation loss of the run = the EMA model's loss on the validation split (and not the raw model's)
    tc, mc = params_to_configs(kw)
    info = torch.load(ck / 'last.ckpt', map_location='cpu', weights_only=True)['halting_lab']
    lit = HaltingLitModule(info['train_config'], info['model_config'], 'act_rnn')
    lit.load_state_dict(sd); lit.eval()
    val = list(make_datamodule(tc).val_dataloader())
    def val_loss(model):
        with torch.no_grad():
            tot = [(lit.compute_loss(model(b), b)[0] * b['labels'].shape[0], b['labels'].shape[0]) for b in val]
        return float(sum(t for t, _ in tot) / sum(n for _, n in tot))
    assert abs(val_loss(lit.ema_model) - res['final']['val/loss']) < 1e-6
    assert abs(val_loss(lit.model) - res['final']['val/loss']) > 1e-4

@pytest.mark.timeout(600)
def test_preempt_on_last_batch_of_an_epoch(maze_dir, tmp_path):
    "A stop request after an epoch's last batch waits for its validation + last.ckpt; the resumed run loses no epoch."
    from halting_lab.train.run import train
    base = dict(data_dir=str(maze_dir), batch_size=16, hidden_size=16, time_limit=3, learning_rate=3e-3, progress_bar=False,
                log_every_n_steps=1, max_epochs=3)          # 64 mazes / 16 = 4 batches per epoch
    full = train(**base, default_root_dir=str(tmp_path / 'full'))
    pre = train(**base, default_root_dir=str(tmp_path / 'last'), _callbacks=[PreemptAt(tmp_path / 'last', 3)])
    assert pre['status'] == 'preempted' and pre['global_step'] == 4 and pre['epochs_completed'] == 1
    again = train(**base, default_root_dir=str(tmp_path / 'last'), resume_ckpt='auto', _callbacks=[PreemptAt(tmp_path / 'last', 11)])
    assert again['status'] == 'finished' and again['global_step'] == full['global_step'] == 12   # last epoch: just finishes
    assert again['final'] == full['final'] and not (tmp_path / 'last' / 'PREEMPT').exists()
    strip = lambda p: [{k: v for k, v in r.items() if k != 'epoch_time_s'} for r in csv.DictReader(open(p))]
    assert strip(tmp_path / 'last' / 'metrics.csv') == strip(tmp_path / 'full' / 'metrics.csv')
    done = train(**base, default_root_dir=str(tmp_path / 'last'), resume_ckpt='auto')   # resuming a finished run: a no-op
    assert done['status'] == 'finished' and done['global_step'] == 12 and done['final'] == full['final']

@pytest.mark.timeout(600)
def test_sigusr1_preempts(maze_dir, tmp_path):
    from halting_lab.train.run import train
    class Kill(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 2: os.kill(os.getpid(), signal.SIGUSR1)
    r = train(data_dir=str(maze_dir), batch_size=16, hidden_size=16, time_limit=3, max_epochs=2, progress_bar=False,
              default_root_dir=str(tmp_path / 'r'), _callbacks=[Kill()])
    assert r['status'] == 'preempted' and r['global_step'] == 3 and r['preempt_reason'] == 'SIGUSR1'
    assert (tmp_path / 'r' / 'checkpoints' / 'last.ckpt').exists()

@pytest.mark.timeout(600)
def test_retention_keeps_k(maze_dir, tmp_path):
    run = tmp_path / 'ret'
    assert _train(maze_dir, run, '--max_epochs', '4', '--save_every_n_epochs', '1', '--keep_last_k', '2',
                  '--limit_train_batches', '1') == 0
    names = sorted(p.name for p in (run / 'checkpoints').glob('*.ckpt'))
    assert names == ['best.ckpt', 'epoch=2.ckpt', 'epoch=3.ckpt', 'last.ckpt'], names
    assert not list((run / 'checkpoints').glob('.*tmp*'))   # no temp files left by the atomic writes

@pytest.mark.parametrize('argv,flag', [
    (['--ut_heads', '4'], '--ut_heads'),
    (['--bogus_flag', '1'], '--bogus_flag'),
    (['--model_type', 'universal_transformer', '--time_penalty', '0.01'], '--time_penalty'),
    (['--batch_size', 'many'], '--batch_size'),
    (['--ema_decay', '0.99'], '--ema_decay'),
    (['--model_type', 'nope'], 'model_type'),
    (['--model_type', 'universal_transformer', '--ut_act_loss_weight', '0.01'], '--ut_act'),   # ACT is opt-in
    (['--halting_rule', 'pondernet', '--time_penalty', '0.01'], '--time_penalty'),
    (['--pondernet_beta', '0.1'], '--pondernet_beta'),
])
def test_bad_flags_rejected(maze_dir, argv, flag, capsys):
    if flag == '--ut_heads' and not _has('universal_transformer'): pytest.skip('UT not installed yet')
    if flag == '--time_penalty' and not _has('universal_transformer'): pytest.skip('UT not installed yet')
    rc = main(['train', '--data_dir', str(maze_dir), *argv])
    assert rc != 0 and flag in capsys.readouterr().err

def test_missing_data_dir(capsys):
    assert main(['train', '--task', 'maze']) == 1 and '--data_dir' in capsys.readouterr().err

@pytest.mark.timeout(600)
def test_resume_with_other_structure_rejected(maze_dir, tmp_path, capsys):
    run = tmp_path / 'r'
    assert _train(maze_dir, run, '--limit_train_batches', '1') == 0
    ck = str(run / 'checkpoints' / 'last.ckpt')
    assert main(['train', '--data_dir', str(maze_dir), '--default_root_dir', str(run), '--hidden_size', '32', '--time_limit', '3',
                 '--batch_size', '16', '--resume_ckpt', ck]) == 1
    assert '--hidden_size' in capsys.readouterr().err
    if _has('universal_transformer'):
        assert main(['train', '--model_type', 'universal_transformer', '--data_dir', str(maze_dir), '--default_root_dir', str(run),
                     '--batch_size', '16', '--resume_ckpt', ck]) == 1
        assert '--model_type' in capsys.readouterr().err

@pytest.mark.timeout(600)
def test_loader_and_eval_csv(maze_dir, tmp_path):
    run = tmp_path / 'ev'
    assert _train(maze_dir, run, '--use_ema', '--ema_decay', '0.5') == 0
    ck = run / 'checkpoints' / 'last.ckpt'
    from halting_lab import load_checkpoint
    from halting_lab.models.act_rnn import ActRNN
    raw = torch.load(ck, map_location='cpu', weights_only=True)      # everything loads with weights_only=True
    m_ema, m_raw = load_checkpoint(ck), load_checkpoint(ck, ema=False)
    assert isinstance(m_ema, ActRNN) and m_ema.checkpoint_info['weights'] == 'ema' and m_raw.checkpoint_info['weights'] == 'model'
    assert m_ema.config.hidden_size == 16 and m_ema.config.time_limit == 3 and m_ema.config.seq_len == 49
    k = next(iter(m_raw.state_dict()))
    assert torch.equal(m_ema.state_dict()[k], raw['state_dict'][f'ema_model.{k}'])
    assert raw['hyper_parameters']['model_type'] == 'act_rnn'
    out = tmp_path / 'results.csv'
    assert main(['eval', '--ckpt', str(ck), '--data_dir', str(maze_dir), '--output', str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 16
    assert {'index', 'correct', 'cell_acc', 'halting_steps_mean', 'halting_steps_max', 'path_length'} <= set(rows[0])
    from halting_lab.tasks.maze import shortest_path_length
    from halting_lab.data.hrm import read_split
    _, s = read_split(maze_dir / 'test')
    assert [int(r['path_length']) for r in rows] == list(map(int, shortest_path_length(s['all']['inputs'])))

@pytest.mark.timeout(600)
def test_old_config_names_resume_and_load(maze_dir, tmp_path):
    "A checkpoint that stores the seed names (act_rnn `time_limit`, TRM-era `ema_rate` in the model config) resumes."
    from halting_lab.train.run import upgrade_info, check_resume_compatible
    from halting_lab.train.checkpoint import checkpoint_info
    from halting_lab.train.config import params_to_configs
    import dataclasses
    run = tmp_path / 'old'
    assert _train(maze_dir, run, '--limit_train_batches', '1') == 0
    ck = torch.load(run / 'checkpoints' / 'last.ckpt', map_location='cpu', weights_only=True)
    mc = ck['halting_lab']['model_config']
    mc['time_limit'] = mc.pop('halt_max_steps')                     # as written before the rename
    info = checkpoint_info(ck)
    assert upgrade_info(info)['model_config']['halt_max_steps'] == 3
    tc, new = params_to_configs({'data_dir': str(maze_dir), 'time_limit': 3, 'hidden_size': 16, 'batch_size': 16,
                                 'learning_rate': 3e-3})
    mcd = {**dataclasses.asdict(new), **{k: mc[k] for k in ('vocab_size', 'seq_len')}}
    check_resume_compatible(info, tc, mcd)                            # same structure under the old name
    with pytest.raises(HaltingLabError, match='--halt_max_steps'):
        check_resume_compatible(info, tc, {**mcd, 'halt_max_steps': 4})

def test_loader_nav_format(tmp_path):
    "seed-003 navigation checkpoints (model_state_dict + config with model_type) dispatch through the registry."
    from halting_lab.core import model_class
    from halting_lab import load_checkpoint
    cls = model_class('nav_trm'); cfg = cls.config_cls(grid_size=5, dim=16, depth=1, dropout=0.0)
    m = cls(cfg)
    import dataclasses
    torch.save({'model_state_dict': m.state_dict(), 'config': {**dataclasses.asdict(cfg), 'unknown_key': 1}, 'epoch': 3}, tmp_path / 'nav.pt')
    got = load_checkpoint(tmp_path / 'nav.pt')
    assert type(got) is cls and got.config.grid_size == 5 and got.checkpoint_info['model_type'] == 'nav_trm'

# the README demo (Makefile `demo`: the same -p names) scaled down to seconds: tiny mazes, 2 epochs, hidden 16
DEMO_SCALED = {'max_epochs': 2, 'hidden_size': 16, 'cell_layers': 3, 'time_limit': 3, 'batch_size': 16, 'learning_rate': 3e-3,
               'weight_decay': 0.01, 'lr_warmup_epochs': 1, 'lr_schedule': 'cosine', 'time_penalty_warmup_steps': 400,
               'log_every_n_steps': 2, 'resume_ckpt': 'auto', 'progress_bar': False}

def _papermill(tmp, run_id, params:dict, timeout=850):
    out = tmp / 'runs' / run_id / 'train.ipynb'; out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, 'HALTING_LAB_RUNS': str(tmp / 'runs'), 'CI': 'true', 'MPLBACKEND': 'Agg'}
    cmd = [str(Path(sys.executable).parent / 'papermill'), str(ROOT / 'nbs/experiments/train.ipynb'), str(out), '-p', 'run_id', run_id]
    for k, v in params.items(): cmd += ['-p', k, str(v)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

@pytest.fixture(scope='module')
def papermill_demo(maze_dir, tmp_path_factory):
    "One papermill run of the training notebook with the scaled-down demo parameters."
    tmp = tmp_path_factory.mktemp('pm')
    p = _papermill(tmp, 'pm', {'data_dir': maze_dir, **DEMO_SCALED, 'num_show': 2})
    assert p.returncode == 0, p.stderr[-3000:]
    return tmp / 'runs' / 'pm'

@pytest.mark.timeout(900)
def test_papermill_demo_outputs_non_empty(papermill_demo):
    "The demo recipe's outputs exist and are not empty (runs/<id>/train.ipynb, checkpoints, metrics, log, config, figures)."
    run = papermill_demo
    for f in RUN_FILES + ['train.ipynb', 'eval_test.csv', 'figures/training_curves.png', 'figures/maze_grid.png']:
        assert (run / f).exists() and (run / f).stat().st_size > 0, f
    halting_figs = sorted(run.glob('figures/*halting*.png'))
    assert {p.name for p in halting_figs} >= {'halting_heatmap.png', 'halting_vs_path_length.png'}
    assert all(p.stat().st_size > 0 for p in halting_figs)
    res = json.loads((run / 'results.json').read_text())
    assert res['status'] == 'finished' and res['epochs_completed'] == 2
    nb = json.loads((run / 'train.ipynb').read_text())
    assert not [o for c in nb['cells'] for o in c.get('outputs', []) if o.get('output_type') == 'error']

@pytest.mark.timeout(900)
def test_cli_and_papermill_same_run(papermill_demo, maze_dir, tmp_path):
    "The same parameters through `halting-lab train` and through papermill: equal train/model config and metrics.csv."
    run_cli = papermill_demo.parent / 'cli'
    flags = []
    for k, v in DEMO_SCALED.items(): flags += [f'--{k}' if v is not False else f'--no-{k}'] + ([str(v)] if not isinstance(v, bool) else [])
    hl = Path(sys.executable).with_name('halting-lab')
    r = subprocess.run([str(hl), 'train', '--run_id', 'cli', '--data_dir', str(maze_dir), *flags], capture_output=True, text=True,
                       timeout=600, env={**os.environ, 'HALTING_LAB_RUNS': str(papermill_demo.parent)}, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (json.loads((d / 'config.json').read_text()) for d in (papermill_demo, run_cli))
    assert a['train_config'].pop('run_id') == 'pm' and b['train_config'].pop('run_id') == 'cli'
    assert a['train_config'] == b['train_config'] and a['model_config'] == b['model_config']
    assert set(a['given']) == set(b['given'])                           # the same flags count as given
    strip = lambda p: [{k: v for k, v in row.items() if k != 'epoch_time_s'} for row in csv.DictReader(open(p))]
    ma, mb = strip(papermill_demo / 'metrics.csv'), strip(run_cli / 'metrics.csv')
    assert len(ma) > 2 and ma == mb

def test_notebook_parameters_are_the_cli_flags():
    "The parameters cell of train.ipynb is `parameters_cell_source()`: every CLI flag with the CLI default, nothing else."
    from halting_lab.train.config import parameters_cell_source
    nb = json.loads((ROOT / 'nbs/experiments/train.ipynb').read_text())
    cell = [c for c in nb['cells'] if 'parameters' in c['metadata'].get('tags', [])]
    assert len(cell) == 1
    # a fresh process: this session's registry also holds the test plugin's model (tests/test_plugin.py)
    code = ("from halting_lab.train.config import parameters_cell_source; "
            "print(parameters_cell_source({'num_show': (6, 'mazes in the figure grid')}))")
    fresh = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert ''.join(cell[0]['source']).strip() == fresh.strip()

@pytest.mark.timeout(600)
@pytest.mark.parametrize('params,flag', [({'hiden_size': 32}, 'hiden_size'), ({'ut_heads': 2}, '--ut_heads')])
def test_papermill_rejects_like_the_cli(maze_dir, tmp_path, params, flag):
    "An unknown -p name (papermill itself only warns) or a flag of another model family stops the notebook with the CLI's error."
    p = _papermill(tmp_path, 'bad', {'data_dir': maze_dir, **params}, timeout=500)
    assert p.returncode != 0 and flag in p.stderr and 'HaltingLabError' in p.stderr
    assert not (tmp_path / 'runs' / 'bad' / 'config.json').exists()       # rejected before any training

@pytest.mark.timeout(600)
def test_ddp_two_cpu_processes(maze_dir, tmp_path):
    "`--devices 2` on CPU: Lightning DDP over gloo, batches sharded across ranks, one metrics.csv/checkpoint writer."
    run = tmp_path / 'ddp'
    hl = Path(sys.executable).with_name('halting-lab')
    r = subprocess.run([str(hl), 'train', '--task', 'maze', '--model_type', 'act_rnn', '--data_dir', str(maze_dir),
                        '--batch_size', '8', '--max_epochs', '2', '--hidden_size', '16', '--time_limit', '3', '--use_ema',
                        '--accelerator', 'cpu', '--devices', '2', '--no-progress_bar', '--log_every_n_steps', '1',
                        '--default_root_dir', str(run)], capture_output=True, text=True, timeout=540, cwd=ROOT,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert 'MEMBER: 2/2' in r.stdout + r.stderr
    res = json.loads((run / 'results.json').read_text())
    assert res['status'] == 'finished' and res['global_step'] == 2 * 64 // (8 * 2)      # 64 mazes, 8 per rank, 2 ranks
    rows = list(csv.DictReader(open(run / 'metrics.csv')))
    assert [int(x['epoch']) for x in rows if x['kind'] == 'epoch'] == [0, 1]              # rank 0 alone writes
    assert len([x for x in rows if x['kind'] == 'step']) == res['global_step']
    from halting_lab import load_checkpoint
    from halting_lab.models.act_rnn import ActRNN
    assert isinstance(load_checkpoint(run / 'checkpoints' / 'last.ckpt'), ActRNN)

@pytest.mark.timeout(600)
@pytest.mark.parametrize('model_type', ['act_rnn', 'universal_transformer', 'trm'])
def test_bf16_mixed_on_cpu(maze_dir, tmp_path, model_type):
    "`--precision bf16-mixed` (the GPU default) through Lightning's autocast, here on CPU: finite losses, fp32 master weights."
    if not _has(model_type): pytest.skip(f'{model_type} not installed yet')
    run = tmp_path / model_type
    assert _train(maze_dir, run, '--precision', 'bf16-mixed', model_type=model_type) == 0
    rows = [x for x in csv.DictReader(open(run / 'metrics.csv')) if x['kind'] == 'epoch']
    assert rows and all(torch.isfinite(torch.tensor(float(x['train/loss']))) for x in rows)
    sd = _sd(run / 'checkpoints' / 'last.ckpt')
    assert all(v.dtype == torch.float32 for k, v in sd.items() if v.is_floating_point())
    assert json.loads((run / 'config.json').read_text())['train_config']['precision'] == 'bf16-mixed'

@pytest.mark.timeout(600)
def test_pondernet_cli_one_epoch(maze_dir, tmp_path):
    "`--halting_rule pondernet`: one CLI epoch; p sums to 1 per cell, KL >= 0, steps <= time_limit, checkpoint round trip."
    from halting_lab import load_checkpoint
    from halting_lab.models.act_rnn import ActRNN
    from halting_lab.halting import pondernet_kl
    from halting_lab.data.hrm import read_split
    run = tmp_path / 'pn'
    assert _train(maze_dir, run, '--halting_rule', 'pondernet', '--pondernet_lambda_p', '0.3', '--pondernet_beta', '0.02',
                  '--use_ema', '--ema_decay', '0.5') == 0
    res = json.loads((run / 'results.json').read_text())
    assert res['status'] == 'finished'
    assert 1 <= res['final']['train/mean_halting_steps'] <= 3 and 1 <= res['final']['val/max_halting_steps'] <= 3
    assert json.loads((run / 'config.json').read_text())['model_config']['halting_rule'] == 'pondernet'
    rows = [r for r in csv.DictReader(open(run / 'metrics.csv')) if r['kind'] == 'epoch']
    assert float(rows[0]['ponder_weight']) == 0.0                      # no ACT time penalty with PonderNet
    ck = run / 'checkpoints' / 'last.ckpt'
    m = load_checkpoint(ck)
    assert isinstance(m, ActRNN) and m.checkpoint_info['weights'] == 'ema' and not m.training
    assert (m.config.halting_rule, m.config.pondernet_lambda_p, m.config.pondernet_beta, m.config.time_limit) == ('pondernet', 0.3, 0.02, 3)
    raw = torch.load(ck, map_location='cpu', weights_only=True)['state_dict']
    assert all(torch.equal(v, raw[f'ema_model.{k}']) for k, v in m.state_dict().items())
    _, s = read_split(maze_dir / 'test')
    batch = {'inputs': torch.as_tensor(s['all']['inputs'].astype('int64')), 'puzzle_identifiers': torch.zeros(16, dtype=torch.long)}
    mask = batch['inputs'] != 0
    with torch.no_grad():
        m.train(); o = m(batch)                                         # training mode: all steps, weights p_n
        p = o.extras['pondernet_p']
        assert p.shape == (3, 16, 49) and o.step_logits.shape[0] == 3
        torch.testing.assert_close(p.sum(0)[mask], torch.ones(int(mask.sum())), atol=1e-5, rtol=0)
        assert (p >= 0).all() and float(pondernet_kl(p, mask, 0.3, 3)) >= 0
        m.eval(); e = m(batch)                                          # eval: halt at cumulative p >= 0.5
    hs = e.halting_steps
    assert (hs[mask] >= 1).all() and (hs[mask] <= 3).all() and (hs[~mask] == 0).all()
    assert torch.equal(e.ponder_cost, hs) and e.step_logits is None
    # validation metrics were computed with these (EMA) weights in eval mode: same max halting steps
    assert float(hs[mask].max()) == res['final']['val/max_halting_steps']
    torch.testing.assert_close(float(hs[mask].mean()), res['final']['val/mean_halting_steps'], atol=1e-6, rtol=0)

@pytest.mark.timeout(600)
@pytest.mark.parametrize('model_type', ['act_rnn', 'universal_transformer'])
@pytest.mark.parametrize('task', ['parity', 'addition', 'copy', 'reverse', 'sort'])
def test_toy_task_cli_one_epoch(tmp_path, task, model_type):
    "Every toy task trains through the same CLI / train() / Lightning path as the mazes (data generated on the fly)."
    from halting_lab import load_checkpoint
    from halting_lab.tasks.toy import toy_seq_len, TOY_VOCAB_SIZE, ToyDataModule
    run = tmp_path / f'{task}_{model_type}'
    assert main(['train', '--task', task, '--model_type', model_type, '--toy_length', '4', '--toy_train_size', '32',
                 '--toy_val_size', '16', '--default_root_dir', str(run), *TINY, *FAMILY[model_type]]) == 0
    res = json.loads((run / 'results.json').read_text())
    assert res['status'] == 'finished' and res['task'] == task and res['global_step'] == 2
    assert 1 <= res['final']['val/mean_halting_steps'] <= res['final']['val/max_halting_steps'] <= 3
    cfg = json.loads((run / 'config.json').read_text())
    assert cfg['task'] == task and cfg['train_config']['toy_length'] == 4
    assert [r['kind'] for r in csv.DictReader(open(run / 'metrics.csv'))].count('epoch') == 1
    m = load_checkpoint(run / 'checkpoints' / 'last.ckpt')
    assert (m.config.seq_len, m.config.vocab_size) == (toy_seq_len(task, 4), TOY_VOCAB_SIZE)
    dm = ToyDataModule(task, batch_size=4, num_train=4, num_val=4, max_length=4); dm.setup('fit')
    b = next(iter(dm.val_dataloader()))
    with torch.no_grad(): o = m(b)
    assert o.logits.shape == (4, toy_seq_len(task, 4), TOY_VOCAB_SIZE) and (o.halting_steps[b['inputs'] == 0] == 0).all()

@pytest.mark.timeout(600)
def test_compile_flag_trains_and_loads(maze_dir, tmp_path):
    "`--compile` (torch.compile of the model): the run finishes and its checkpoint loads, raw and EMA weights alike."
    from halting_lab import load_checkpoint
    run = tmp_path / 'comp'
    assert _train(maze_dir, run, '--compile', '--limit_train_batches', '2', '--use_ema', '--ema_decay', '0.5') == 0
    ck = run / 'checkpoints' / 'last.ckpt'
    sd = _sd(ck)
    assert any(k.startswith('model._orig_mod.') for k in sd)                    # the wrapper's names in the state dict
    raw, ema = load_checkpoint(ck, ema=False), load_checkpoint(ck)
    k = 'head.weight'
    assert torch.equal(raw.state_dict()[k], sd[f'model._orig_mod.{k}']) and torch.equal(ema.state_dict()[k], sd[f'ema_model.{k}'])


def test_accelerator_auto_order(monkeypatch):
    "`--accelerator auto` picks CUDA, else Apple MPS, else CPU; `halting-lab eval --device auto` resolves the same way."
    import torch
    from halting_lab.train.run import _accelerator
    from halting_lab.train.config import TrainConfig
    from halting_lab.core import resolve_device
    tc = TrainConfig(accelerator='auto')
    for cuda, mps, want, dev in ((True, True, 'gpu', 'cuda'), (False, True, 'mps', 'mps'), (False, False, 'cpu', 'cpu')):
        monkeypatch.setattr(torch.cuda, 'is_available', lambda c=cuda: c)
        monkeypatch.setattr(torch.backends.mps, 'is_available', lambda m=mps: m)
        assert _accelerator(tc) == want and resolve_device('auto') == dev
    assert _accelerator(TrainConfig(accelerator='cpu')) == 'cpu'

@pytest.mark.timeout(600)
def test_exact_resume_with_dropout_at_epoch_boundary(maze_dir, tmp_path):
    "Dropout > 0: a run resumed at an epoch boundary equals the uninterrupted run bit for bit (RNG seeded per epoch)."
    from halting_lab.train.run import train
    base = dict(data_dir=str(maze_dir), model_type='universal_transformer', batch_size=16, learning_rate=3e-3,
                progress_bar=False, log_every_n_steps=1, use_ema=True, ema_decay=0.9, dropout=0.3,
                **{k: v for k, v in RESUME_FAMILY['universal_transformer'].items()})
    full = train(**base, default_root_dir=str(tmp_path / 'full'), max_epochs=3)
    train(**base, default_root_dir=str(tmp_path / 'ep'), max_epochs=2)
    ep = train(**base, default_root_dir=str(tmp_path / 'ep'), max_epochs=3, resume_ckpt='auto')
    assert ep['status'] == 'finished' and ep['final'] == full['final']
    a, b = _sd(tmp_path / 'full' / 'checkpoints' / 'last.ckpt'), _sd(tmp_path / 'ep' / 'checkpoints' / 'last.ckpt')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda p: [{k: v for k, v in r.items() if k != 'epoch_time_s'} for r in csv.DictReader(open(p))]
    assert strip(tmp_path / 'ep' / 'metrics.csv') == strip(tmp_path / 'full' / 'metrics.csv')

def test_atomic_copy_removes_temp_file_on_error(tmp_path, monkeypatch):
    "A copy that fails mid-way (disk full) leaves neither a temp file nor a changed destination."
    import errno, shutil
    from halting_lab.train.lightning import atomic_copy
    src, dst = tmp_path / 'last.ckpt', tmp_path / 'best.ckpt'
    src.write_bytes(b'new' * 1000)
    dst.write_bytes(b'old')
    def disk_full(a, b):
        Path(b).write_bytes(b'partial')
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(shutil, 'copyfile', disk_full)
    with pytest.raises(OSError) as e: atomic_copy(src, dst)
    assert e.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ['best.ckpt', 'last.ckpt'] and dst.read_bytes() == b'old'
    monkeypatch.undo()
    assert atomic_copy(src, dst).read_bytes() == b'new' * 1000

@pytest.mark.timeout(300)
def test_train_many_interrupted_runs_checkpoint_and_resume(maze_dir, tmp_path):
    "Ctrl-C (SIGINT to the parent, as a notebook interrupt sends) while two runs train: each saves last.ckpt and stops; running again resumes."
    import time
    runs = {n: dict(data_dir=str(maze_dir), batch_size=4, hidden_size=16, halt_max_steps=3, max_epochs=400,
                    progress_bar=False, default_root_dir=str(tmp_path / n)) for n in ('a', 'b')}
    script = ('import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n'   # a background job ignores it
              f'from halting_lab.train.run import train_many\ntrain_many({runs!r}, workers=2)')
    log = tmp_path / 'out.txt'           # a file, not a pipe: nobody reads a pipe while the runs print
    p = subprocess.Popen([sys.executable, '-c', script], stdout=log.open('w'), stderr=subprocess.STDOUT)
    def rows(n): return len((tmp_path / n / 'metrics.csv').read_text().splitlines()) if (tmp_path / n / 'metrics.csv').exists() else 0
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None and min(rows(n) for n in runs) < 3:   # both runs logging
        time.sleep(1)
    assert p.poll() is None and min(rows(n) for n in runs) >= 3, log.read_text()[-3000:]
    p.send_signal(signal.SIGINT)
    p.wait(timeout=120)
    out = log.read_text()
    assert p.returncode != 0 and 'KeyboardInterrupt' in out, out[-3000:]
    for n in runs:
        assert (tmp_path / n / 'checkpoints' / 'last.ckpt').exists(), out[-3000:]
        res = json.loads((tmp_path / n / 'results.json').read_text())
        assert res['status'] == 'preempted' and res['preempt_reason'] == 'SIGTERM' and res['global_step'] > 0
    from halting_lab.train.run import train_many
    a = json.loads((tmp_path / 'a' / 'results.json').read_text())
    again = train_many({'a': dict(runs['a'], max_epochs=a['epochs_completed'] + 1)})['a']   # same directory: resumes
    assert again['status'] == 'finished' and again['global_step'] > a['global_step']
    assert json.loads((tmp_path / 'a' / 'config.json').read_text())['resumes']
