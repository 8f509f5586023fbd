"""Training throughput (mazes/s, forward + backward + AdamW step) of act_rnn and universal_transformer,
eager vs torch.compile, at the runbook configs (batch 128, hidden 512, time_limit 16 / UT with the runbook's
--ut_* flags and max_hops 6, 30x30 mazes) and at a small config (9x9). Bounded: one warm-up step (which includes
compilation) and a few timed steps per case; on CPU the runbook cases time a couple of steps only.

    python benchmarks/bench_train.py                 # small + runbook, eager + compile (GPU if present, else CPU)
    python benchmarks/bench_train.py --quick         # small config only
Writes benchmarks/results/train.json (merged per device)."""
from __future__ import annotations
import argparse, json, os, platform, time
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parent
RUNBOOK_UT = {'hidden_size': 512, 'ut_embedding_size': 64, 'ut_heads': 4, 'ut_key_depth': 256, 'ut_value_depth': 256,
              'ut_filter_size': 256, 'ut_max_hops': 6, 'ut_act': True, 'ut_act_loss_weight': 0.001}   # seed 000, 5-2
CONFIGS = {
    'small':   {'side': 9,  'batch': 32,  'act_rnn': {'hidden_size': 64,  'time_limit': 8},
                'universal_transformer': {'hidden_size': 64, 'ut_embedding_size': 64, 'ut_heads': 4, 'ut_key_depth': 64,
                                          'ut_value_depth': 64, 'ut_filter_size': 128, 'ut_max_hops': 6, 'ut_act': True}},
    'runbook': {'side': 30, 'batch': 128, 'act_rnn': {'hidden_size': 512, 'time_limit': 16},           # seed 000, 5-1
                'universal_transformer': RUNBOOK_UT},
}
# CPU: the runbook act_rnn step at batch 128 is ~104 TFLOP (two 3x3 convs 512->1024 channels on 900 cells, 16 steps,
# forward + backward): 15-30 min per step on 2 cores, so it is timed at a small batch instead
CPU_ACT_RNN_RUNBOOK_BATCH = 2

def make_batch(side:int, batch:int, device):
    from halting_lab.tasks.maze import generate_mazes
    x, y = generate_mazes(batch, size=side, seed=0)
    return {'inputs': torch.as_tensor(x, dtype=torch.long, device=device), 'labels': torch.as_tensor(y, dtype=torch.long, device=device),
            'puzzle_identifiers': torch.zeros(batch, dtype=torch.long, device=device)}

def bench(model_type:str, cfg_name:str, compile:bool, steps:int, device, batch:int|None=None)->dict:
    "Time `steps` training steps (after one warm-up step) of `model_type` at config `cfg_name`."
    from halting_lab.core import model_class
    from halting_lab.train.lightning import HaltingLitModule
    c = CONFIGS[cfg_name]
    cls = model_class(model_type)
    fields = {f for f in cls.config_cls.__dataclass_fields__}
    kw = {k: v for k, v in c[model_type].items() if k in fields}
    kw.update({k: v for k, v in {'vocab_size': 6, 'seq_len': c['side'] ** 2}.items() if k in fields})
    torch.manual_seed(0)
    lit = HaltingLitModule({'time_penalty_start': 0.0, 'time_penalty': 1e-3, 'time_penalty_warmup_steps': 0, 'seed': 0},
                           kw, model_type).to(device)
    model = lit.model
    fwd = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    bsz = int(batch or c['batch'])
    batch = make_batch(c['side'], bsz, device)
    amp = torch.autocast('cuda', dtype=torch.bfloat16) if device.type == 'cuda' else torch.autocast('cpu', enabled=False)
    def step():
        with amp:
            out = fwd(batch)
            loss, _, _ = lit.compute_loss(out, batch, ponder_weight=1e-3)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        return out
    t0 = time.perf_counter(); out = step()
    if device.type == 'cuda': torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter(); step()
        if device.type == 'cuda': torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    return {'model_type': model_type, 'config': cfg_name, 'compile': compile, 'batch': bsz, 'config_batch': c['batch'],
            'side': c['side'], **kw, 'first_step_s': round(warm, 3), 'step_s_median': round(med, 4), 'mazes_per_s': round(bsz / med, 3),
            'timed_steps': steps, 'mean_halting_steps': float(out.halting_steps.float().mean())}

def plan(device, quick:bool, no_compile:bool, models:list, steps:int|None)->list:
    "(model_type, config, compile, timed steps, batch, note) of every case to run."
    cases = []
    for cfg in (['small'] if quick else ['small', 'runbook']):
        for mt in models:
            cpu_big = cfg == 'runbook' and device.type == 'cpu'
            batch, note = None, None
            comps = [False] if no_compile else [False, True]
            if cpu_big:
                note = 'CPU: one warm-up step + 1 timed step (a couple of steps is enough at this size)'
                if mt == 'act_rnn':
                    batch, comps = CPU_ACT_RNN_RUNBOOK_BATCH, [False]
                    note = (f'CPU: batch {CPU_ACT_RNN_RUNBOOK_BATCH} instead of 128 (a batch-128 step is ~104 TFLOP, ~64x the batch-2 '
                            'step: 15-30 min on 2 cores); mazes/s scales ~linearly with batch on CPU; eager only; one warm-up + 1 timed step')
            for comp in comps:
                cases.append((mt, cfg, comp, steps or (1 if cpu_big else 3), batch, note))
    return cases

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='small config only')
    ap.add_argument('--steps', type=int, default=None, help='timed steps per case (default 3; 1 for the runbook configs on CPU)')
    ap.add_argument('--no-compile', action='store_true')
    ap.add_argument('--models', default='act_rnn,universal_transformer')
    ap.add_argument('--output', default=str(ROOT / 'results' / 'train.json'))
    a = ap.parse_args(argv)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    devname = torch.cuda.get_device_name(0) if device.type == 'cuda' else f'cpu x{torch.get_num_threads()} threads'
    rows, t_all = [], time.time()
    out = Path(a.output); out.parent.mkdir(parents=True, exist_ok=True)
    key = 'cuda' if device.type == 'cuda' else 'cpu'
    def write(done:bool):   # after every case: a run stopped by a time limit keeps what it measured
        doc = json.loads(out.read_text()) if out.exists() else {}
        doc[key] = {'device': devname, 'torch': torch.__version__, 'platform': platform.platform(),
                    'load_avg_1m': os.getloadavg()[0] if hasattr(os, 'getloadavg') else None,
                    'omp_num_threads': os.environ.get('OMP_NUM_THREADS'), 'total_s': round(time.time() - t_all, 1),
                    'complete': done, 'time': time.strftime('%Y-%m-%d %H:%M:%S'), 'results': rows}
        out.write_text(json.dumps(doc, indent=1) + '\n')
    for mt, cfg, comp, steps, batch, note in plan(device, a.quick, a.no_compile, a.models.split(','), a.steps):
        try:
            r = bench(mt, cfg, comp, steps, device, batch=batch)
        except Exception as e:  # a missing model family or a compile failure is recorded, not fatal
            r = {'model_type': mt, 'config': cfg, 'compile': comp, 'error': f'{type(e).__name__}: {str(e)[:300]}'}
        if note: r['note'] = note
        print(json.dumps(r), flush=True); rows.append(r); write(False)
    write(True)
    print(f'wrote {out}')

if __name__ == '__main__': main()
