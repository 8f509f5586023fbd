"""TRM benchmarks -> benchmarks/results/trm.json

1. Training throughput (sequences/s; one full supervision step = forward of T cycles + backward of the last,
   through `forward_step` + `trm_loss` + an optimizer step) at the published maze config (hidden 512, 8 heads,
   T=3, n=4, 2 layers, 30x30 = 900 tokens + 16 puzzle-embedding positions) and at a small CPU config
   (9x9-sized, hidden 64), each eager and with `torch.compile` (the shared network compiled in place, as
   `--compile` does). On a CPU the published config runs at a small batch (`--maze-batch`, default 2; the
   published batch 768 needs a GPU): the row says so in `note`.
2. Adaptive halting that pays (issue #18.4), section `halting`: on a TRAINED checkpoint (`--ckpt C --data_dir D`;
   without them a tiny TRM (BUDGET16_TRAIN: hidden 32, T=1, n=1, mlp_t) is trained at the published budget
   halt_max_steps=16 on 5x5 mazes (1000 + aug8, 400 test mazes), for `--train-steps` optimizer steps or
   `--train-seconds`, kept under `--workdir`). The test split is cut in two: exit-rule thresholds are swept
   (replayed on the recorded fixed-budget stream) on the first half and the cheapest threshold whose accuracy is
   within 0.5 points of the full budget is chosen there; the second half reports every fixed budget 1..16,
   Q-halting, each exit rule at its default threshold and at the chosen one: exact accuracy, mean / p95
   supervision steps, wall time, speed-ups, and `target_3x_fewer_steps` (the rules within 0.5 points of the
   full budget at >= 3x fewer mean steps; an empty list says none does).
3. The evaluation paths against the training step (issue #18.6), section `speed`: hidden 128, batch 32,
   16 steps, fp32, random init: the `forward_step` loop, `forward` with fixed halting (with and without
   `return_steps`), Q-halting and the exit rules, eager and with the shared network compiled, at 1 and 2 torch
   threads, as interleaved repeats in one process; each row gives seq/s, sample-steps/s and the per-step speed
   relative to the `forward_step` loop measured in the same repeat (median); the paths run in a rotated order each
   repeat, and a second run of the loop itself (`forward_step loop (control)`) shows the timing noise of the machine
   (its ratio would be exactly 1 on a noiseless one). `criterion_overhead`: the
   milliseconds of each criterion's own `step` beside one supervision step of the network (what a halting rule
   can cost at most, whatever the timing noise).

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_trm.py [--sections train,speed,halting] [--device cuda]
       [--no-compile] [--ckpt C --data_dir D | --workdir W]
Numbers on a shared CPU vary with load: the JSON records the load average before and after.
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path

import torch

from halting_lab.models.trm import TRM, TRMConfig, trm_loss
from halting_lab.core import save_json, library_versions
from halting_lab.halting import keeps_accuracy

MAZE_CFG = dict(vocab_size=6, seq_len=900, hidden_size=512, num_heads=8, expansion=4, H_cycles=3, L_cycles=4, L_layers=2,
                halt_max_steps=16, puzzle_emb_ndim=512, puzzle_emb_len=16, num_puzzle_identifiers=1)
SMALL_CFG = dict(vocab_size=6, seq_len=81, hidden_size=64, num_heads=4, expansion=4, H_cycles=2, L_cycles=2, L_layers=2,
                 halt_max_steps=8, puzzle_emb_ndim=0)
# part 2: a tiny TRM at the published budget of 16 supervision steps on 5x5 mazes + aug8 (one CPU-minutes recipe)
BUDGET16_TRAIN = dict(task='maze', model_type='trm', batch_size=64, hidden_size=32, num_heads=4, H_cycles=1, L_cycles=1,
                      halt_max_steps=16, puzzle_emb_ndim=0, mlp_t=True, pos_encodings='none',
                      loss_type='softmax_cross_entropy', learning_rate=3e-3, weight_decay=0.1, lr_warmup_epochs=0.2,
                      ema_rate=0.99, max_epochs=1000, max_steps=3000, seed=0, limit_val_batches=1, eval_interval=2,
                      progress_bar=False)
BUDGET16_DATA = dict(num_train=1000, num_test=400, size=5, seed=0, aug=True)   # test: 200 val (thresholds) + 200 test


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


def train_budget16_checkpoint(workdir:Path, seconds:float, max_steps:int=3000)->tuple:
    "BUDGET16_TRAIN on 5x5 mazes + aug8 for <= `seconds` (resumes a run in `workdir`): (checkpoint, data_dir, summary)."
    import lightning as L
    from halting_lab.tasks.maze import build_maze_dataset
    from halting_lab.train.run import train
    data = workdir / 'maze-5x5-aug8-400test'
    if not (data / 'test').exists(): build_maze_dataset(data, **BUDGET16_DATA, progress=False)

    class StopAfter(L.Callback):
        def __init__(self): self.t0 = time.time()
        def on_train_batch_end(self, trainer, *args):
            if time.time() - self.t0 > seconds: trainer.should_stop = True
    t0, flags = time.time(), {**BUDGET16_TRAIN, 'max_steps': max_steps, 'resume_ckpt': 'auto'}
    r = train(**flags, data_dir=str(data), default_root_dir=str(workdir / 'run'), _callbacks=[StopAfter()])
    return r['last_ckpt'], str(data), {'trained_here': True, 'task': 'maze 5x5, 1000 mazes + aug8, 400 test mazes '
                                       '(first 200: threshold choice, last 200: reported)', 'dataset': BUDGET16_DATA,
                                       'flags': flags, 'train_s': round(time.time() - t0, 1),
                                       'global_step': r['global_step'], 'val_exact_acc': r['final'].get('val/exact_acc')}


# part 3: the evaluation paths against the forward_step loop (issue #18.6): hidden 128, batch 32, 16 steps, fp32
EVAL_CFG = {**SMALL_CFG, 'hidden_size': 128, 'halt_max_steps': 16, 'forward_dtype': 'float32'}


def eval_model_and_batch(batch_size:int)->tuple:
    "The random-init EVAL_CFG TRM and a random batch of `batch_size` puzzles (both seeded: every section the same)."
    torch.manual_seed(0)
    model = TRM(TRMConfig(**EVAL_CFG)).eval()
    g = torch.Generator().manual_seed(0)
    batch = {'inputs': torch.randint(1, 6, (batch_size, EVAL_CFG['seq_len']), generator=g),
             'puzzle_identifiers': torch.zeros(batch_size, dtype=torch.long)}
    return model, batch


def eval_paths(model, batch:dict, rules)->dict:
    "name -> fn() running one evaluation path on `batch` and returning the sample-steps it computed."
    S = model.config.halt_max_steps

    def loop():
        c = model.initial_carry(batch)
        with torch.no_grad():
            for _ in range(S): c, _ = model.forward_step(c, batch)
        return batch['inputs'].shape[0] * S

    def path(**kw): return lambda: int(model(batch, **kw).extras['halt_step'].sum())
    return {'forward_step loop': loop, 'forward_step loop (control)': loop, 'fixed': path(halting='fixed'),
            'fixed, return_steps': path(halting='fixed', return_steps=True), 'q': path(halting='q'),
            **{r: path(halting=r) for r in rules}}


def eval_speed(threads=(1, 2), reps:int=3, compiled=(False, True), rules=None, batch_size:int=32)->list:
    "Seq/s and sample-steps/s of every evaluation path vs the forward_step loop: interleaved repeats, medians."
    import statistics
    from halting_lab.train.trm import EXIT_RULES
    base, b = eval_model_and_batch(batch_size)
    models, t_warm = {}, {}
    for comp in compiled:                           # same weights; compiled: the shared network, as --compile
        m = TRM(TRMConfig(**EVAL_CFG)).eval()
        m.load_state_dict(base.state_dict())
        if comp: m.L_level.compile()
        models[comp] = eval_paths(m, b, EXIT_RULES if rules is None else rules)
    for comp, paths in models.items():              # warm-up (compilation) once per path and thread count
        for n in threads:
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            for fn in paths.values(): fn()
            t_warm[comp, n] = round(time.perf_counter() - t0, 1)
    raw = {}
    for rep in range(reps):                         # interleaved: every (compiled, threads, path) once per repeat
        for comp, paths in models.items():
            for n in threads:
                torch.set_num_threads(n)
                names = list(paths)                 # rotated each repeat: no path always runs first or last
                for name in names[rep % len(names):] + names[:rep % len(names)]:
                    fn = paths[name]
                    c0, t0 = time.process_time(), time.perf_counter()
                    ss = fn()
                    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
                    raw.setdefault((comp, n, name), []).append((dt, cpu, ss))
    rows = []
    for (comp, n, name), v in raw.items():
        ref = raw[comp, n, 'forward_step loop']
        ratio = [(r[0] / r[2]) / (x[0] / x[2]) for x, r in zip(v, ref)]   # per-step speed vs the loop, same repeat
        cpu_ratio = [(r[1] / r[2]) / (x[1] / x[2]) for x, r in zip(v, ref)]
        med = statistics.median
        rows.append({'compiled': comp, 'threads': n, 'path': name, 'reps': reps,
                     'seq_per_s': round(batch_size / med(x[0] for x in v), 3),
                     'sample_steps_per_s': round(med(x[2] / x[0] for x in v), 2),
                     'cpu_s_per_sample_step': round(med(x[1] / x[2] for x in v), 5),
                     'mean_steps': round(v[0][2] / batch_size, 2),
                     'per_step_speed_vs_forward_step': round(med(ratio), 3),
                     'per_step_cpu_speed_vs_forward_step': round(med(cpu_ratio), 3),
                     'warmup_s_all_paths': t_warm[comp, n]})
    for r in rows:                                  # compiled vs eager, same path and threads
        e = next((x for x in rows if not x['compiled'] and x['threads'] == r['threads'] and x['path'] == r['path']), None)
        if r['compiled'] and e: r['speedup_vs_eager'] = round(r['sample_steps_per_s'] / e['sample_steps_per_s'], 3)
    return rows

def criterion_overhead(threads=(1, 2), batch_size:int=32, reps:int=20)->list:
    "Milliseconds per step of each halting criterion's own `step` beside one supervision step of the network."
    from halting_lab.models.trm import make_eval_criterion, _reset_state
    from halting_lab.train.trm import EXIT_RULES
    m, b = eval_model_and_batch(batch_size)
    inp, pid = b['inputs'], b['puzzle_identifiers']
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        z_H, z_L = _reset_state(m, batch_size, 'cpu')
        with torch.no_grad():
            for _ in range(3): out = m.inner(z_H, z_L, inp, pid)          # warm-up
            t0 = time.perf_counter()
            for _ in range(reps): out = m.inner(z_H, z_L, inp, pid)
            step_ms = 1e3 * (time.perf_counter() - t0) / reps
            zh, _, logits, q = out
            for name in ('fixed', 'q', *EXIT_RULES):
                crit = make_eval_criterion(name, EVAL_CFG['halt_max_steps'])
                st, S = crit.init(inp != 0), crit.max_steps - 1        # the steps before the budget closes
                t0 = time.perf_counter()
                for t in range(S):
                    _, st, _ = crit.step(st, t, logits=logits.float(), latent=zh.float(), q_halt=q[:, 0],
                                         q_continue=None)
                ms = 1e3 * (time.perf_counter() - t0) / S
                rows.append({'threads': n, 'criterion': name, 'criterion_ms_per_step': round(ms, 4),
                             'network_ms_per_step': round(step_ms, 2), 'share': round(ms / step_ms, 5)})
    return rows

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
def eval_modes(model, batches, dev, thresholds:dict|None=None)->list:
    "Every fixed budget, Q-halting and every exit rule (+ `thresholds`), after a warm-up on 8 examples each."
    from halting_lab.train.trm import evaluate_adaptive, EXIT_RULES
    S = model.config.halt_max_steps
    plan = [('fixed', b, 'auto') for b in range(1, S + 1)] + [(m, S, 'auto') for m in ('q',) + EXIT_RULES]
    plan += [(m, S, th) for m, th in (thresholds or {}).items()]
    rows = []
    for mode, budget, th in plan:
        warm = [{k: v[:8] for k, v in batches[0].items()}]          # a small warm-up batch
        evaluate_adaptive(model, warm, mode, budget, threshold=th, device=dev)
        rows.append(evaluate_adaptive(model, batches, mode, budget, threshold=th, device=dev))
        print(json.dumps(rows[-1]), flush=True)
    return halting_table(rows)


SWEEP = {'entropy': [0.5, 0.2, 0.1, 0.05, 0.02, 1e-2, 1e-3, 1e-4], 'entropy-diff': [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4, 1e-5],
         'latent-diff': [0.3, 0.1, 0.05, 0.03, 0.01, 3e-3, 1e-3, 1e-4], 'cosine': [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6],
         'kl': [1e-1, 1e-2, 1e-3, 5e-4, 1e-4, 1e-5, 1e-6], 'minp-kl': [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7],
         'argmax-stability': [1, 2, 3, 4, 5, 6, 8]}


@torch.no_grad()
def threshold_sweep(model, batch:dict, tol:float=0.005)->tuple:
    "Replay every exit rule at every SWEEP threshold on `batch` (the val half): (rows, chosen threshold per rule)."
    from halting_lab.halting import make_criterion, replay_exit, select_steps
    S, P = model.config.halt_max_steps, model.config.prefix_len
    c, lgs, lats = model.initial_carry(batch), [], []
    for _ in range(S):                                # the fixed-budget stream (bit-identical to forward)
        c, o = model.forward_step(c, batch)
        lgs.append(o['logits'].float())
        lats.append(c.z_H[:, P:].float())
    lgs, lats, lab, mask = torch.stack(lgs), torch.stack(lats), batch['labels'], batch['inputs'] != 0

    def acc(lg): return float((((lg.argmax(-1) == lab) | (lab == -100)).all(-1)).float().mean())
    full, rows, best = acc(lgs[-1]), [], {}
    for rule, grid in SWEEP.items():
        for th in grid:
            res = replay_exit(make_criterion(rule, S, threshold=th), mask, step_logits=lgs, step_latents=lats)
            r = {'rule': rule, 'threshold': th, 'val_exact_acc': acc(select_steps(lgs, res.step_probs)),
                 'val_mean_steps': float(res.halting_steps.amax(-1).mean()), 'val_full_budget_acc': full}
            rows.append(r)
            ok = keeps_accuracy(r['val_exact_acc'], full, tol)
            if ok and (rule not in best or r['val_mean_steps'] < best[rule]['val_mean_steps']): best[rule] = r
    return rows, {k: v['threshold'] for k, v in best.items()}


def target_check(rows:list, S:int, tol:float=0.005, factor:float=3.0)->dict:
    "Issue #18.4: which rules keep the full-budget accuracy (within `tol`) at >= `factor` x fewer mean steps."
    full = next(r for r in rows if r['halting'] == 'fixed' and r['budget'] == S)
    hits = [r for r in rows if r['halting'] != 'fixed' and keeps_accuracy(r['exact_acc'], full['exact_acc'], tol)
            and r['mean_steps'] * factor <= full['mean_steps']]
    return {'full_budget_exact_acc': full['exact_acc'], 'max_mean_steps': S / factor, 'tolerance': tol,
            'reached_by': [{k: r[k] for k in ('halting', 'threshold', 'exact_acc', 'mean_steps')} for r in hits]}


def split_val_test(data:str)->tuple:
    "The test split as one val batch (first half: threshold choice) and one test batch (second half: reported)."
    from halting_lab.train.trm import dataset_batches
    b = dataset_batches(data, 'test', 100000)[0]
    h = b['inputs'].shape[0] // 2
    return {k: v[:h] for k, v in b.items()}, {k: v[h:] for k, v in b.items()}


def save_run(path:str, res:dict):
    "Merge this run into the JSON: one run per device, a section run alone updates only its own keys."
    runs = []
    if Path(path).exists():
        old = json.loads(Path(path).read_text())
        runs = old.get('runs', [old]) if isinstance(old, dict) else []
    prev = next((r for r in runs if r.get('device') == res['device']), {})
    meta = {**prev.get('section_meta', {}), **res.get('section_meta', {})}
    runs = [r for r in runs if r.get('device') != res['device']] + [{**prev, **res, 'section_meta': meta}]
    save_json(path, {'runs': runs})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--sections', default='train,speed,halting', help='comma list of: train, speed, halting')
    ap.add_argument('--steps', type=int, default=3, help='timed training steps (published config on a CPU: 1)')
    ap.add_argument('--no-compile', action='store_true')
    ap.add_argument('--maze-batch', type=int, default=None,
                    help='batch of the published config (default 768 on GPU, 2 on CPU)')
    ap.add_argument('--speed-reps', type=int, default=3, help='interleaved repeats of the eval-path timing')
    ap.add_argument('--speed-threads', default='1,2', help='torch threads of the eval-path timing (comma list)')
    ap.add_argument('--speed-rules', default='all', help="exit rules timed (comma list, or 'all')")
    ap.add_argument('--speed-batch', type=int, default=32, help='batch of the eval-path timing')
    ap.add_argument('--ckpt', default=None)
    ap.add_argument('--data_dir', default=None)
    ap.add_argument('--workdir', default=None, help='keep the trained checkpoint and data here (default: a temp dir)')
    ap.add_argument('--train-seconds', type=float, default=900,
                    help='time cap of the budget-16 training when no --ckpt is given')
    ap.add_argument('--train-steps', type=int, default=3000, help='optimizer steps of the budget-16 training')
    ap.add_argument('--output', default=str(Path(__file__).parent / 'results' / 'trm.json'))
    a = ap.parse_args(argv)
    sections = set(a.sections.split(','))
    dev, t_all = torch.device(a.device), time.time()
    res = {'device': str(dev), 'gpu': torch.cuda.get_device_name(0) if dev.type == 'cuda' else None,
           'cpu_count': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
           'loadavg_start': os.getloadavg() if hasattr(os, 'getloadavg') else None, 'versions': library_versions(),
           'command': 'python ' + ' '.join(['benchmarks/bench_trm.py', *(argv if argv is not None else sys.argv[1:])])}
    if 'train' in sections: res['train'] = train_section(a, dev)
    if 'speed' in sections:
        comp = (False,) if a.no_compile else (False, True)
        res['eval_speed'] = {'config': EVAL_CFG, 'batch': a.speed_batch, 'device': str(dev),
                             'note': 'random-init weights; per_step_speed_vs_forward_step = (sample-steps/s of the path) / '
                                     '(sample-steps/s of the forward_step loop) in the same repeat (wall clock; '
                                     'per_step_cpu_...: process CPU time), median over interleaved repeats',
                             'rows': eval_speed(tuple(int(x) for x in a.speed_threads.split(',')), a.speed_reps, comp,
                                                None if a.speed_rules == 'all' else a.speed_rules.split(','),
                                                a.speed_batch)}
        for r in res['eval_speed']['rows']: print(json.dumps(r), flush=True)
        res['eval_speed']['criterion_overhead'] = criterion_overhead(
            tuple(int(x) for x in a.speed_threads.split(',')), a.speed_batch)   # every rule: cheap
        for r in res['eval_speed']['criterion_overhead']: print(json.dumps(r), flush=True)
    if 'halting' in sections: res.update(halting_section(a, dev))
    meta = {'command': res['command'], 'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
            'torch': torch.__version__, 'loadavg_start': res['loadavg_start']}
    res['section_meta'] = {k: meta for k in sections}    # merged runs: which command wrote each section
    res['loadavg_end'] = os.getloadavg() if hasattr(os, 'getloadavg') else None
    res['total_s'] = round(time.time() - t_all, 1)
    save_run(a.output, res)
    print('wrote', a.output, f"({res['total_s']} s)")


def train_section(a, dev)->list:
    "Training throughput of the published and the small config, eager and compiled."
    out = []
    maze_b = a.maze_batch or (768 if dev.type == 'cuda' else 2)
    for name, cfg, bsz in (('published maze 30x30 (hidden 512, T=3, n=4)', MAZE_CFG, maze_b),
                           ('small 9x9 (hidden 64, T=2, n=2)', SMALL_CFG, 64)):
        big_on_cpu = dev.type == 'cpu' and name.startswith('published')
        for comp in ([False] if a.no_compile else [False, True]):
            try: r = train_throughput(cfg, bsz, dev, comp, 1 if big_on_cpu else a.steps)
            except Exception as e: r = {'batch': bsz, 'compiled': comp, 'error': f'{type(e).__name__}: {e}'[:300]}
            if big_on_cpu: r['note'] = f'CPU: batch {bsz} instead of the published 768 (GPU); 1 timed step after 1 warm-up'
            out.append({'config': name, **r})
            print(json.dumps(out[-1]), flush=True)
    return out


def halting_section(a, dev)->dict:
    "Train (or load) the budget-16 TRM, sweep exit thresholds on the val half, evaluate every mode on the test half."
    from halting_lab.train.checkpoint import load_checkpoint
    with tempfile.TemporaryDirectory(prefix='bench_trm_') as tmp:
        work = Path(a.workdir or tmp)
        if a.ckpt and a.data_dir: ckpt, data, src = a.ckpt, a.data_dir, {'ckpt': a.ckpt, 'data_dir': a.data_dir, 'trained_here': False}
        else:
            ckpt, data, src = train_budget16_checkpoint(work, a.train_seconds, a.train_steps)
            src = {**src, 'ckpt': ckpt if a.workdir else None, 'data_dir': data if a.workdir else None}
        model = load_checkpoint(ckpt).to(dev).eval()
        val, test = split_val_test(data)
        val = {k: v.to(dev) for k, v in val.items()}
        S = model.config.halt_max_steps
        sweep, chosen = threshold_sweep(model, val)
        rows = eval_modes(model, [test], dev, thresholds=chosen)
    info = model.checkpoint_info
    src = {**src, 'ckpt_train_config': info.get('train_config'), 'ckpt_global_step': info.get('global_step')}
    return {'eval_source': {**src, 'weights': info['weights'], 'halt_max_steps': S,
                            'val_n': int(val['inputs'].shape[0]), 'test_n': int(test['inputs'].shape[0])},
            'threshold_sweep_val': sweep, 'thresholds_chosen_on_val': chosen, 'eval': rows,
            'target_3x_fewer_steps': target_check(rows, S)}


if __name__ == '__main__':
    main()
