"""Data benchmarks (not timed tests): building 1,000 30x30 hard mazes + aug8, loading batches of 128.

Prints the figures and writes them to benchmarks/results/data.json. Timings are wall-clock on
whatever machine runs this; on a shared machine (other processes using the CPU) they are noisy:
`cpu_count`, `loadavg_before` and the repeat spread are recorded to judge that.

    python benchmarks/bench_data.py [--num-train 1000] [--num-test 1000] [--repeats 3]
"""
import argparse, json, os, platform, statistics, sys, tempfile, time
from pathlib import Path

import numpy as np


def bench_build(num_train, num_test, size, repeats):
    from halting_lab.tasks.maze import build_maze_dataset, default_min_path_len
    times, cpu = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            build_maze_dataset(Path(tmp) / f'm{r}', num_train=num_train, num_test=num_test, size=size, seed=r, aug=True, progress=False)
            times.append(time.perf_counter() - t); cpu.append(time.process_time() - c)
    return dict(num_train=num_train, num_test=num_test, size=size, min_path_len=default_min_path_len(size), aug8=True,
                train_examples=num_train * 8, seconds=times, cpu_seconds=cpu, seconds_min=min(times), seconds_median=statistics.median(times),
                target_seconds=30.0, meets_target=min(times) < 30.0)


def bench_load(num_batches, batch_size, num_workers):
    from halting_lab.tasks.maze import build_maze_dataset
    from halting_lab.data.datamodule import PuzzleDataModule
    with tempfile.TemporaryDirectory() as tmp:
        build_maze_dataset(Path(tmp) / 'm', num_train=1000, num_test=100, size=30, seed=0, aug=True, progress=False)
        out = {}
        for nw in sorted({0, num_workers}):
            dm = PuzzleDataModule(Path(tmp) / 'm', batch_size=batch_size, seed=0, num_workers=nw)
            it = iter(dm.train_dataloader())
            next(it)                                    # first batch: worker start-up / page-in, not counted
            ts = []
            for _ in range(num_batches):
                t = time.perf_counter(); b = next(it); ts.append(time.perf_counter() - t)
            assert b['inputs'].shape == (batch_size, 900)
            out[f'num_workers={nw}'] = dict(batch_size=batch_size, batches=num_batches, mean_ms=1e3 * statistics.mean(ts),
                                            median_ms=1e3 * statistics.median(ts), max_ms=1e3 * max(ts))
            del it
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--num-train', type=int, default=1000); ap.add_argument('--num-test', type=int, default=1000)
    ap.add_argument('--size', type=int, default=30); ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--batches', type=int, default=20); ap.add_argument('--num-workers', type=int, default=2)
    ap.add_argument('--output', default=str(Path(__file__).parent / 'results' / 'data.json'))
    a = ap.parse_args(argv)
    load_before = os.getloadavg() if hasattr(os, 'getloadavg') else None
    res = dict(
        benchmark='data', python=platform.python_version(), numpy=np.__version__, platform=platform.platform(),
        cpu_count=os.cpu_count(), loadavg_before=load_before,
        note='wall-clock; noisy when other processes share the CPU (see loadavg_before and the spread of seconds)',
        build_maze_1k_aug8=bench_build(a.num_train, a.num_test, a.size, a.repeats),
        load_batch=bench_load(a.batches, 128, a.num_workers),
        loadavg_after=os.getloadavg() if hasattr(os, 'getloadavg') else None,
    )
    b = res['build_maze_1k_aug8']
    print(f"build {b['num_train']} train (+aug8 = {b['train_examples']}) + {b['num_test']} test {a.size}x{a.size} hard mazes "
          f"(path >= {b['min_path_len']}): min {b['seconds_min']:.2f} s, median {b['seconds_median']:.2f} s over {a.repeats} "
          f"(target < 30 s: {'met' if b['meets_target'] else 'NOT met'}); process CPU time min {min(b['cpu_seconds']):.2f} s")
    for k, v in res['load_batch'].items():
        print(f"load a batch of {v['batch_size']} ({k}): mean {v['mean_ms']:.2f} ms, median {v['median_ms']:.2f} ms over {v['batches']} batches")
    print(f"cpu_count {res['cpu_count']}, loadavg before {load_before} after {res['loadavg_after']} (noisy if high)")
    from halting_lab.core import save_json
    save_json(a.output, res)
    print(f'wrote {a.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
