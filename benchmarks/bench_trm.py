"""TRM benchmarks -> benchmarks/results/trm.json

1. Training throughput (sequences/s; one full supervision step = forward of T cycles + backward of the last,
   through `forward_step` + `trm_loss`) at the published maze config (hidden 512, 8 heads, T=3, n=4, 2 layers,
   30x30 = 900 tokens + 16 puzzle-embedding positions) and at a small CPU config, eager vs `torch.compile`
   (the shared network compiled in place).
2. Evaluation with and without adaptive halting: a fixed budget of `halt_max_steps` vs Q-halting and exit
   rules (mean steps, wall time, speed-up, exact accuracy). With `--ckpt/--data_dir` a trained checkpoint is
   used (meaningful accuracies); otherwise a random model on random data (timing only).

Usage: python benchmarks/bench_trm.py [--device cuda] [--no-compile] [--ckpt C --data_dir D] [--steps N]
Numbers on a shared CPU vary with load: the JSON records the load average.
"""
import argparse, json, os, platform, sys, time
from pathlib import Path

import torch

from halting_lab.models.trm import TRM, TRMConfig, trm_loss
from halting_lab.core import save_json, library_versions

MAZE_CFG = dict(vocab_size=6, seq_len=900, hidden_size=512, num_heads=8, expansion=4, H_cycles=3, L_cycles=4, L_layers=2,
                halt_max_steps=16, puzzle_emb_ndim=512, puzzle_emb_len=16, num_puzzle_identifiers=1)
SMALL_CFG = dict(vocab_size=6, seq_len=81, hidden_size=64, num_heads=4, expansion=4, H_cycles=2, L_cycles=2, L_layers=2,
                 halt_max_steps=8, puzzle_emb_ndim=0)


def _sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def train_throughput(cfg:dict, batch:int, dev, compiled:bool, steps:int, warmup:int=2)->dict:
    torch.manual_seed(0)
    m = TRM(TRMConfig(**cfg, forward_dtype='auto')).to(dev).train()
    if compiled: m.L_level.compile()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    b = {'inputs': torch.randint(1, cfg['vocab_size'], (batch, cfg['seq_len']), device=dev),
         'labels': torch.randint(1, cfg['vocab_size'], (batch, cfg['seq_len']), device=dev),
         'puzzle_identifiers': torch.zeros(batch, dtype=torch.long, device=dev)}
    carry = m.initial_carry(b)
    t_first = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup: _sync(dev); t0 = time.perf_counter()
        if i == 1: first = time.perf_counter() - t_first
        carry, out = m.forward_step(carry, b)
        loss, _, _ = trm_loss(out, carry.current_data['labels'], m.config.loss_type)
        (loss / batch).backward(); opt.step(); opt.zero_grad(set_to_none=True)
    _sync(dev); dt = time.perf_counter() - t0
    return {'batch': batch, 'compiled': compiled, 'steps': steps, 'seq_per_s': round(batch * steps / dt, 2),
            's_per_step': round(dt / steps, 4), 'first_step_s (incl. compile)': round(first, 2)}


@torch.no_grad()
def eval_speed(model, batches, dev, modes)->list:
    from halting_lab.train.trm import evaluate_adaptive
    rows = []
    for mode in modes:
        evaluate_adaptive(model, batches[:1], mode, device=dev)   # warm-up
        rows.append(evaluate_adaptive(model, batches, mode, device=dev))
    base = rows[0]['wall_s']
    for r in rows: r['speedup_vs_fixed'] = round(base / max(r['wall_s'], 1e-9), 3)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--steps', type=int, default=3)
    ap.add_argument('--no-compile', action='store_true')
    ap.add_argument('--maze-batch', type=int, default=None, help='batch of the published config (default 768 on GPU, 4 on CPU)')
    ap.add_argument('--ckpt', default=None); ap.add_argument('--data_dir', default=None)
    ap.add_argument('--output', default=str(Path(__file__).parent / 'results' / 'trm.json'))
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    res = {'device': str(dev), 'gpu': torch.cuda.get_device_name(0) if dev.type == 'cuda' else None,
           'cpu_count': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
           'loadavg': os.getloadavg() if hasattr(os, 'getloadavg') else None, 'versions': library_versions(), 'train': [], 'eval': []}
    maze_b = a.maze_batch or (768 if dev.type == 'cuda' else 2)
    for name, cfg, bsz in (('published maze 30x30 (hidden 512, T=3, n=4)', MAZE_CFG, maze_b), ('small 9x9 (hidden 64, T=2, n=2)', SMALL_CFG, 64)):
        big_on_cpu = dev.type == 'cpu' and name.startswith('published')     # compiling it on a CPU takes too long
        for comp in ([False] if a.no_compile or big_on_cpu else [False, True]):
            try: r = train_throughput(cfg, bsz, dev, comp, a.steps if name.startswith('small') or dev.type == 'cuda' else 1)
            except Exception as e: r = {'batch': bsz, 'compiled': comp, 'error': f'{type(e).__name__}: {e}'[:300]}
            res['train'].append({'config': name, **r}); print(json.dumps(res['train'][-1]), flush=True)
    # evaluation with and without adaptive halting
    modes = ['fixed', 'q', 'latent-diff', 'kl', 'argmax-stability']
    if a.ckpt and a.data_dir:
        from halting_lab.train.checkpoint import load_checkpoint
        from halting_lab.train.trm import dataset_batches
        model = load_checkpoint(a.ckpt).to(dev); batches = dataset_batches(a.data_dir, 'test', 256)
        src = {'ckpt': a.ckpt, 'data_dir': a.data_dir}
    else:
        torch.manual_seed(0); model = TRM(TRMConfig(**SMALL_CFG)).to(dev).eval()
        batches = [{'inputs': torch.randint(1, 6, (256, 81)), 'labels': torch.randint(1, 6, (256, 81))} for _ in range(2)]
        src = {'ckpt': None, 'note': 'random model and data: timing only'}
    res['eval_source'] = src
    res['eval'] = eval_speed(model, batches, dev, modes)
    for r in res['eval']: print(json.dumps(r), flush=True)
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    if Path(a.output).exists():           # keep results of other devices side by side
        old = json.loads(Path(a.output).read_text()); runs = old.get('runs', [old]) if isinstance(old, dict) else []
        runs = [r for r in runs if r.get('device') != res['device']] + [res]
        save_json(a.output, {'runs': runs})
    else: save_json(a.output, {'runs': [res]})
    print('wrote', a.output)


if __name__ == '__main__':
    main()
