"""A model defined here, outside the package, plugs into the core with one decorator.

`PluginRNN` (below) is registered with `@register_model`; nothing in `halting_lab` names it. It trains
through `halting-lab --plugin test_plugin train ...` and `train(plugins=...)`, writes checkpoints,
resumes exactly, loads with `load_checkpoint`, evaluates (`halting-lab eval`, also `--halting kl`)
and opens in the explorer. `plugin_copy` (a task registered here with its own `evaluator`) is what
`halting-lab eval` hands a dataset of that task to, found by `dataset.json` or by `recognizes`.
"""
from __future__ import annotations
import csv, json
from dataclasses import dataclass
from pathlib import Path
import pytest, torch
from torch import nn
from halting_lab.core import HaltingOutput
from halting_lab.registry import register_model, register_task

PLUGIN = __name__          # `test_plugin` when pytest imports this file


@dataclass
class PluginRNNConfig:
    "Structure of the plugin model."
    model_type: str = 'plugin_rnn'
    vocab_size: int = 6
    seq_len: int = 49
    num_puzzle_identifiers: int = 1
    hidden_size: int = 16
    halt_max_steps: int = 3
    FLAG_ALIASES = {'plugin_steps': 'halt_max_steps'}     # a seed-style alias of the budget


@register_model
class PluginRNN(nn.Module):
    "A tiny recurrent per-cell model with a fixed number of steps (test plugin)."
    model_type = 'plugin_rnn'
    config_cls = PluginRNNConfig

    def __init__(self, config:PluginRNNConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.hidden_size)
        self.mix = nn.Conv1d(c.hidden_size, c.hidden_size, 3, padding=1)
        self.head = nn.Linear(c.hidden_size, c.vocab_size)

    def forward(self, batch:dict, return_steps:bool=False)->HaltingOutput:
        x = self.embed(batch['inputs'].long())                       # [B, L, H]
        h, steps = torch.zeros_like(x), []
        for _ in range(self.config.halt_max_steps):
            h = torch.tanh(x + self.mix(h.transpose(1, 2)).transpose(1, 2))
            steps.append(self.head(h))
        mask = (batch['inputs'] != 0).float()
        return HaltingOutput(logits=steps[-1], halting_steps=mask * len(steps),
                             step_logits=torch.stack(steps) if return_steps else None)


def copy_eval_cli(argv:list)->int:
    "The plugin task's own `eval`: exact and cell accuracy of the copy baseline (labels = inputs)."
    import argparse
    import numpy as np
    ap = argparse.ArgumentParser(prog='copy-eval')
    for f in ('--ckpt', '--data_dir', '--output'): ap.add_argument(f)
    ap.add_argument('--split', default='test')
    a = ap.parse_args(argv)
    d = Path(a.data_dir) / a.split
    x, y = np.load(d / 'all__inputs.npy'), np.load(d / 'all__labels.npy')
    m = y != 0
    res = {'evaluator': 'plugin_copy', 'ckpt': a.ckpt, 'n': len(x),
           'exact_acc': float(((x == y) | ~m).all(1).mean()), 'cell_acc': float((x == y)[m].mean())}
    print(json.dumps(res))
    if a.output: Path(a.output).write_text(json.dumps(res))
    return 0


register_task('plugin_copy', 'halting_lab.train.run:puzzle_datamodule', evaluator=copy_eval_cli,
              recognizes=lambda d: (Path(d) / 'COPY_TASK').exists(), help='copy baseline (test plugin)')


@pytest.fixture(scope='module')
def maze_dir(tmp_path_factory):
    from halting_lab.tasks.maze import build_maze_dataset
    d = tmp_path_factory.mktemp('data') / 'maze7'
    build_maze_dataset(d, num_train=32, num_test=8, size=7, seed=0, progress=False)
    return d


@pytest.fixture(autouse=True)
def _runs_root(tmp_path, monkeypatch): monkeypatch.setenv('HALTING_LAB_RUNS', str(tmp_path / 'runs'))


def _sd(p): return torch.load(p, map_location='cpu', weights_only=True)['state_dict']
def _rows(p): return [{k: v for k, v in r.items() if k != 'epoch_time_s'} for r in csv.DictReader(open(p))]

TINY = ['--task', 'maze', '--model_type', 'plugin_rnn', '--batch_size', '8', '--learning_rate', '3e-3',
        '--log_every_n_steps', '2', '--no-progress_bar', '--plugin_steps', '3', '--hidden_size', '16']


@pytest.mark.timeout(600)
def test_plugin_model_trains_resumes_loads_evaluates_and_explores(maze_dir, tmp_path, capsys):
    from halting_lab.cli import main
    from halting_lab.train.run import train, evaluate
    from halting_lab.train.checkpoint import load_checkpoint
    # the CLI: `halting-lab --plugin test_plugin train ...` (flags of the plugin's config, its alias too)
    full = tmp_path / 'full'
    assert main(['--plugin', PLUGIN, 'train', *TINY, '--data_dir', str(maze_dir), '--max_epochs', '2',
                 '--default_root_dir', str(full)]) == 0
    cfg = json.loads((full / 'config.json').read_text())
    assert cfg['model_type'] == 'plugin_rnn' and cfg['model_config']['halt_max_steps'] == 3
    assert cfg['train_config']['plugins'] == PLUGIN                     # recorded for resume and viewers
    assert cfg['model_config']['seq_len'] == 49                          # filled in from the data
    # train(plugins=...): one epoch, then an exact resume to two epochs
    kw = dict(task='maze', model_type='plugin_rnn', data_dir=str(maze_dir), batch_size=8, learning_rate=3e-3,
              log_every_n_steps=2, progress_bar=False, halt_max_steps=3, hidden_size=16, plugins=PLUGIN)
    part = tmp_path / 'part'
    train(**kw, max_epochs=1, default_root_dir=str(part))
    res = train(**kw, max_epochs=2, default_root_dir=str(part), resume_ckpt='auto')
    assert res['status'] == 'finished' and res['global_step'] == 8
    a, b = _sd(full / 'checkpoints' / 'last.ckpt'), _sd(part / 'checkpoints' / 'last.ckpt')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(full / 'metrics.csv') == _rows(part / 'metrics.csv')
    # load_checkpoint picks the plugin's class from the stored model_type
    m = load_checkpoint(full / 'checkpoints' / 'last.ckpt')
    assert type(m) is PluginRNN and m.config.halt_max_steps == 3
    # evaluate: per-example rows (+ the task's difficulty column); `halting-lab eval` and `--halting kl`
    df = evaluate(full / 'checkpoints' / 'last.ckpt', maze_dir)
    assert len(df) == 8 and 'path_length' in df and df.halting_steps_max.max() == 3
    capsys.readouterr()
    assert main(['eval', '--ckpt', str(full / 'checkpoints' / 'last.ckpt'), '--data_dir', str(maze_dir),
                 '--halting', 'kl', '--device', 'cpu']) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row['halting'] == 'kl' and row['n'] == 8 and 1 <= row['mean_steps'] <= 3
    # the explorer: inference through its loader, static panels
    from halting_lab.viewers import explorer as X
    res = X.InferenceCache(disk=False).get(full / 'checkpoints' / 'last.ckpt', maze_dir, 'test', device='cpu')
    assert res.preds.shape == (8, 49) and res.step_preds.shape == (8, 3, 49)
    assert X.token_style(res.meta)['names'][1] == '#'                   # the maze charset, from the registry
    out = X.save_static(res, tmp_path / 'static', indices=[0])
    assert out and all(Path(p).stat().st_size > 0 for p in out)


def test_plugin_flags_and_errors(maze_dir, capsys):
    "The plugin's flags are `halting-lab train` flags; a flag of another family names its owner."
    from halting_lab.cli import main
    from halting_lab.train.config import params_to_configs
    tc, mc = params_to_configs({'model_type': 'plugin_rnn', 'data_dir': 'd', 'plugin_steps': 5})
    assert type(mc) is PluginRNNConfig and mc.halt_max_steps == 5
    assert main(['--plugin', PLUGIN, 'train', *TINY, '--data_dir', str(maze_dir), '--cell_layers', '2']) != 0
    assert '--cell_layers' in capsys.readouterr().err
    assert main(['--plugin', PLUGIN, 'train', '--help']) == 0
    assert '--plugin_steps' in capsys.readouterr().out


def _as_task(src:Path, dst:Path, task)->Path:
    "A copy of dataset `src` whose dataset.json files record `task` (None: no task key, as official tools)."
    import shutil
    shutil.copytree(src, dst)
    for p in dst.glob('*/dataset.json'):
        meta = {k: v for k, v in json.loads(p.read_text()).items() if k != 'task'}
        p.write_text(json.dumps(meta if task is None else {**meta, 'task': task}))
    return dst


def test_plugin_task_evaluator_is_what_eval_runs(maze_dir, tmp_path, capsys):
    "`halting-lab eval` hands a dataset of a task with an `evaluator` to it, argv unchanged."
    from halting_lab.cli import main
    from halting_lab.registry import dataset_task
    recorded = _as_task(maze_dir, tmp_path / 'recorded', 'plugin_copy')
    official = _as_task(maze_dir, tmp_path / 'official', None)
    (official / 'COPY_TASK').touch()                       # claimed by the task's `recognizes`
    assert dataset_task(recorded) == dataset_task(official) == 'plugin_copy'
    assert dataset_task(maze_dir) == 'maze'
    for d in (recorded, official):
        out = tmp_path / f'{d.name}.json'
        capsys.readouterr()
        assert main(['--plugin', PLUGIN, 'eval', '--ckpt', 'unused.ckpt', '--data_dir', str(d),
                     '--output', str(out)]) == 0
        res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert res['evaluator'] == 'plugin_copy' and res['n'] == 8 and res['ckpt'] == 'unused.ckpt'
        assert res['exact_acc'] == 0.0 and 0.0 < res['cell_acc'] < 1.0   # the path cells differ
        assert json.loads(out.read_text()) == res
