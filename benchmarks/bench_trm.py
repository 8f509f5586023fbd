"""TRM benchmarks -> benchmarks/results/trm.json

1. Training throughput (sequences/s; one full supervision step = forward of T cycles + backward of the last,
   through `forward_step` + `trm_loss` + an optimizer step) at the published maze config (hidden 512, 8 heads,
   T=3, n=4, 2 layers, 30x30 = 900 tokens + 16 puzzle-embedding positions) and at a small CPU config
   (9x9-sized, hidden 64), each eager and with `torch.compile` (the shared network compiled in place, as
   `--compile` does). On a CPU the published config runs at a small batch (`--maze-batch`, default 2; the
   published batch 768 needs a GPU): the row says so in `note`.
2. Evaluation with and without adaptive halting on a TRAINED checkpoint (`--ckpt C --data_dir D`; without them a
   tiny TRM is first trained for `--train-seconds` on 5x5 mazes + aug8): every fixed budget 1..halt_max_steps,
   Q-halting and each training-free exit rule, with exact accuracy, mean / p95 supervision steps, wall time,
   the speed-up against the full fixed budget (the reference evaluation), and the speed-up against the
   smallest fixed budget that reaches the same exact accuracy ("at equal accuracy").

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_trm.py [--device cuda] [--no-compile] [--ckpt C --data_dir D]
Numbers on a shared CPU vary with load: the JSON records the load average before and after.
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path

import torch

from halting_lab.models.trm import TRM, TRMConfig, trm_loss
from halting_lab.core import save_json, library_versions

MAZE_CFG = dict(vocab_size=6, seq_len=900, hidden_size=512, num_heads=8, expansion=4, H_cycles=3, L_cycles=4, L_layers=2,
                halt_max_steps=16, puzzle_emb_ndim=512, puzzle_emb_len=16, num_puzzle_identifiers=1)
SMALL_CFG = dict(vocab_size=6, seq_len=81, hidden_size=64, num_heads=4, expansion=4, H_cycles=2, L_cycles=2, L_layers=2,
                 halt_max_steps=8, puzzle_emb_ndim=0)
TINY_TRAIN = dict(task='maze', model_type='trm', batch_size=32, hidden_size=32, num_heads=4, H_cycles=1, L_cycles=1,
                  halt_max_steps=6, puzzle_emb_ndim=0, mlp_t=True, pos_encodings='none', loss_type='softmax_cross_entropy',
                  learning_rate=3e-3, weight_decay=0.1, lr_warmup_epochs=0.2, ema_rate=0.99, max_epochs=1000, seed=0,
                  limit_val_batches=1, progress_bar=False)


def _sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def train_throughput(cfg:dict, batch:int, dev, compiled:bool, steps:int, warmup:int=1)->dict:
    "Sequences/s of `forward_step` + loss + backward + AdamW step at `batch`, after `warmup` steps (compilation)."
    torch.manual_seed(0)
    m = TRM(TRMConfig(**cfg, forward_dtype='auto')).to(dev).train()
    if compiled: m.L_level.compile()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    b = {'inputs': torch.randint(1, cfg['vocab_size'], (batch, cfg['seq_len']), device=dev),
         'labels': torch.randint(1, cfg['vocab_size'], (batch, cfg['seq_len']), device=dev),
         'puzzle_identifiers': torch.zeros(batch, dtype=torch.long, device=dev)}
    carry = m.initial_carry(b); t_first = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup: _sync(dev); t0 = time.perf_counter(); first = t0 - t_first
        carry, out = m.forward_step(carry, b)
        loss, _, _ = trm_loss(out, carry.current_data['labels'], m.config.loss_type)
        (loss / batch).backward(); opt.step(); opt.zero_grad(set_to_none=True)
    _sync(dev); dt = time.perf_counter() - t0
    return {'batch': batch, 'compiled': compiled, 'steps': steps, 'seq_per_s': round(batch * steps / dt, 3),
            's_per_step': round(dt / steps, 4), 'warmup_s (incl. compile)': round(first, 2)}


def train_tiny_checkpoint(workdir:Path, seconds:float)->tuple:
    "A tiny TRM on 5x5 mazes + aug8, trained for about `seconds`: (checkpoint, data_dir, summary)."
    import lightning as L
    from halting_lab.tasks.maze import build_maze_dataset
    from halting_lab.train.run import train
    data = build_maze_dataset(workdir / 'maze-5x5-aug8', num_train=1000, num_test=200, size=5, seed=0, aug=True, progress=False)

    class StopAfter(L.Callback):
        def __init__(self): self.t0 = time.time()
        def on_train_batch_end(self, trainer, *args):
            if time.time() - self.t0 > seconds: trainer.should_stop = True
    t0 = time.time()
    r = train(**TINY_TRAIN, data_dir=str(data), default_root_dir=str(workdir / 'run'), _callbacks=[StopAfter()])
    return r['last_ckpt'], str(data), {'trained_here': True, 'task': 'maze 5x5, 1000 mazes + aug8, 200 test mazes',
                                       'flags': TINY_TRAIN, 'train_s': round(time.time() - t0, 1), 'global_step': r['global_step'],
                                       'val_exact_acc': r['final'].get('val/exact_acc')}


def halting_table(rows:list)->list:
    "Add the speed-ups against the full fixed budget and against the cheapest fixed budget of equal accuracy."
    fixed = sorted((r for r in rows if r['halting'] == 'fixed'), key=lambda r: r['budget'])
    full = fixed[-1]
    for r in rows:
        r['speedup_vs_full_budget'] = round(full['wall_s'] / max(r['wall_s'], 1e-9), 3)
        r['steps_vs_full_budget'] = round(full['mean_steps'] / max(r['mean_steps'], 1e-9), 3)
        eq = next((f for f in fixed if f['exact_acc'] >= r['exact_acc'] - 1e-9), None)
        r['fixed_budget_at_equal_acc'] = eq['budget'] if eq else None
        r['speedup_at_equal_acc'] = round(eq['wall_s'] / max(r['wall_s'], 1e-9), 3) if eq else None
    return rows


@torch.no_grad()
def eval_modes(model, batches, dev)->list:
    "Every fixed budget, Q-halting and every exit rule (one warm-up batch each, then the whole split)."
    from halting_lab.train.trm import evaluate_adaptive, EXIT_RULES
    S = model.config.halt_max_steps
    plan = [('fixed', b) for b in range(1, S + 1)] + [(m, S) for m in ('q',) + EXIT_RULES]
    rows = []
    for mode, budget in plan:
        evaluate_adaptive(model, batches[:1], mode, budget, device=dev)
        rows.append(evaluate_adaptive(model, batches, mode, budget, device=dev))
        print(json.dumps(rows[-1]), flush=True)
    return halting_table(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--steps', type=int, default=3, help='timed training steps (published config on a CPU: 1)')
    ap.add_argument('--no-compile', action='store_true')
    ap.add_argument('--maze-batch', type=int, default=None, help='batch of the published config (default 768 on GPU, 2 on CPU)')
    ap.add_argument('--ckpt', default=None); ap.add_argument('--data_dir', default=None)
    ap.add_argument('--train-seconds', type=float, default=90, help='training time of the tiny model when no --ckpt is given')
    ap.add_argument('--output', default=str(Path(__file__).parent / 'results' / 'trm.json'))
    a = ap.parse_args(argv)
    dev = torch.device(a.device); t_all = time.time()
    res = {'device': str(dev), 'gpu': torch.cuda.get_device_name(0) if dev.type == 'cuda' else None,
           'cpu_count': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
           'loadavg_start': os.getloadavg() if hasattr(os, 'getloadavg') else None, 'versions': library_versions(),
           'command': 'python ' + ' '.join(['benchmarks/bench_trm.py', *(argv if argv is not None else sys.argv[1:])]),
           'train': [], 'eval': []}
    maze_b = a.maze_batch or (768 if dev.type == 'cuda' else 2)
    for name, cfg, bsz in (('published maze 30x30 (hidden 512, T=3, n=4)', MAZE_CFG, maze_b),
                           ('small 9x9 (hidden 64, T=2, n=2)', SMALL_CFG, 64)):
        big_on_cpu = dev.type == 'cpu' and name.startswith('published')
        for comp in ([False] if a.no_compile else [False, True]):
            try: r = train_throughput(cfg, bsz, dev, comp, 1 if big_on_cpu else a.steps)
            except Exception as e: r = {'batch': bsz, 'compiled': comp, 'error': f'{type(e).__name__}: {e}'[:300]}
            if big_on_cpu: r['note'] = f'CPU: batch {bsz} instead of the published 768 (GPU); 1 timed step after 1 warm-up step'
            res['train'].append({'config': name, **r}); print(json.dumps(res['train'][-1]), flush=True)
    # evaluation with and without adaptive halting, on a trained checkpoint
    from halting_lab.train.checkpoint import load_checkpoint
    from halting_lab.train.trm import dataset_batches
    with tempfile.TemporaryDirectory(prefix='bench_trm_') as tmp:
        if a.ckpt and a.data_dir: ckpt, data, src = a.ckpt, a.data_dir, {'ckpt': a.ckpt, 'data_dir': a.data_dir, 'trained_here': False}
        else: ckpt, data, src = train_tiny_checkpoint(Path(tmp), a.train_seconds)
        model = load_checkpoint(ckpt).to(dev); batches = dataset_batches(data, 'test', 256)
        res['eval_source'] = {**src, 'weights': model.checkpoint_info['weights'], 'halt_max_steps': model.config.halt_max_steps}
        res['eval'] = eval_modes(model, batches, dev)
    res['loadavg_end'] = os.getloadavg() if hasattr(os, 'getloadavg') else None
    res['total_s'] = round(time.time() - t_all, 1)
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    if Path(a.output).exists():           # keep results of other devices side by side
        old = json.loads(Path(a.output).read_text()); runs = old.get('runs', [old]) if isinstance(old, dict) else []
        runs = [r for r in runs if r.get('device') != res['device']] + [res]
        save_json(a.output, {'runs': runs})
    else: save_json(a.output, {'runs': [res]})
    print('wrote', a.output, f"({res['total_s']} s)")


if __name__ == '__main__':
    main()
