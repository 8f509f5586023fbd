"""Training throughput (mazes/s, forward + backward + AdamW step) of act_rnn and universal_transformer,
eager vs torch.compile, at the runbook configs (batch 128, hidden 512, time_limit 16 / max_hops 6, 30x30)
and at a small config (9x9). Bounded: a warm-up step and a few timed steps per case.

    python benchmarks/bench_train.py                 # small + runbook, eager + compile, CPU (or the GPU if present)
    python benchmarks/bench_train.py --quick         # small config only
Writes benchmarks/results/train.json (merged per device)."""
from __future__ import annotations
import argparse, json, os, platform, time, traceback
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parent
CONFIGS = {
    'small':   {'side': 9,  'batch': 32,  'act_rnn': {'hidden_size': 64,  'time_limit': 8},
                'universal_transformer': {'hidden_size': 64, 'ut_embedding_size': 64, 'ut_heads': 4, 'ut_key_depth': 64,
                                          'ut_value_depth': 64, 'ut_filter_size': 128, 'ut_max_hops': 6, 'ut_act': True}},
    'runbook': {'side': 30, 'batch': 128, 'act_rnn': {'hidden_size': 512, 'time_limit': 16},
                'universal_transformer': {'hidden_size': 512, 'ut_embedding_size': 64, 'ut_heads': 4, 'ut_key_depth': 256,
                                          'ut_value_depth': 256, 'ut_filter_size': 256, 'ut_max_hops': 6, 'ut_act': True,
                                          'ut_act_loss_weight': 0.001}},
}

def make_batch(side:int, batch:int, device):
    from halting_lab.tasks.maze import generate_mazes
    x, y = generate_mazes(batch, size=side, seed=0)
    return {'inputs': torch.as_tensor(x, dtype=torch.long, device=device), 'labels': torch.as_tensor(y, dtype=torch.long, device=device),
            'puzzle_identifiers': torch.zeros(batch, dtype=torch.long, device=device)}

def bench(model_type:str, cfg_name:str, compile:bool, steps:int, device, batch:int|None=None)->dict:
    from halting_lab.core import model_class
    from halting_lab.train.config import params_to_configs
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

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='small config only')
    ap.add_argument('--steps', type=int, default=None, help='timed steps per case (default 3 small / 2 runbook on CPU)')
    ap.add_argument('--no-compile', action='store_true')
    ap.add_argument('--models', default='act_rnn,universal_transformer')
    ap.add_argument('--cpu_runbook_batch', type=int, default=2,
                    help='on CPU the runbook config (batch 128) takes minutes per step: measure this batch instead (mazes/s scales ~linearly)')
    ap.add_argument('--cpu_runbook_compile', action='store_true', help='also torch.compile the runbook config on CPU (slow to compile)')
    ap.add_argument('--output', default=str(ROOT / 'results' / 'train.json'))
    a = ap.parse_args(argv)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    devname = torch.cuda.get_device_name(0) if device.type == 'cuda' else f'cpu x{torch.get_num_threads()} threads'
    rows = []
    for cfg in (['small'] if a.quick else ['small', 'runbook']):
        for mt in a.models.split(','):
            cpu_big = cfg == 'runbook' and device.type == 'cpu'
            for comp in ([False] if a.no_compile or (cpu_big and not a.cpu_runbook_compile) else [False, True]):
                steps = a.steps or (1 if cpu_big else 3)
                try:
                    r = bench(mt, cfg, comp, steps, device, batch=a.cpu_runbook_batch if cpu_big else None)
                except Exception as e:  # a missing model family or a compile failure is recorded, not fatal
                    r = {'model_type': mt, 'config': cfg, 'compile': comp, 'error': f'{type(e).__name__}: {str(e)[:300]}'}
                print(json.dumps(r), flush=True); rows.append(r)
    out = Path(a.output); out.parent.mkdir(parents=True, exist_ok=True)
    doc = json.loads(out.read_text()) if out.exists() else {}
    key = 'cuda' if device.type == 'cuda' else 'cpu'
    doc[key] = {'device': devname, 'torch': torch.__version__, 'platform': platform.platform(),
                'load_avg_1m': os.getloadavg()[0] if hasattr(os, 'getloadavg') else None,
                'time': time.strftime('%Y-%m-%d %H:%M:%S'), 'results': rows}
    out.write_text(json.dumps(doc, indent=1) + '\n')
    print(f'wrote {out}')

if __name__ == '__main__': main()
