"""Regenerate the docs' showcase pages: `nbs/experiments/compare_halting.ipynb` executed with papermill.

    python benchmarks/showcase.py maze      # -> nbs/showcase/compare_halting_maze.ipynb + .csv
    python benchmarks/showcase.py sudoku    # -> nbs/showcase/compare_halting_sudoku.ipynb + .csv
    python benchmarks/showcase.py maze16    # -> nbs/showcase/compare_halting_maze16.ipynb + .csv (TRM, budget 16)
    python benchmarks/showcase.py maze --dry-run   # print the papermill command only

Each page is the executed notebook itself (papermill, one command); its first cell records
the command, the date, the wall time and the machine. The run directory is `runs/showcase_<task>/`
(models, `results.csv`, figures); `results.csv` is copied beside the page as `compare_halting_<task>.csv`.
The maze and Sudoku pages train two models at a time (`workers=2`, one thread each: the README's 2-core box).
`maze16` is the TRM alone at the published configuration's budget of 16 supervision steps (24 epochs: budget 16
learns slower than 6), where the exit rules and the Q head are measured against the full budget (issue #18 part 4).
"""
from __future__ import annotations
import argparse, datetime, json, os, platform, shlex, shutil, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / 'nbs' / 'experiments' / 'compare_halting.ipynb'
SHOWCASES = {   # papermill parameters of each page (everything else: the notebook's defaults)
    'maze': dict(task='maze', size=7, num_train=1000, num_test=200, budget=6, max_epochs=8, batch_size=64,
                 hidden_size=64, learning_rate=0.003, ut_hidden_size=64, ut_learning_rate=0.003, ut_warmup_epochs=0.8,
                 ut_inner_layers=2, ut_halt_bias_init=-3.0, ut_epochs=10, workers=2),
    'sudoku': dict(task='sudoku', num_train=4000, num_test=300, min_givens=45, max_givens=55, budget=6, max_epochs=10,
                   trm_epochs=6, ut_epochs=8, lr_schedule='cosine', batch_size=64, hidden_size=64,
                   learning_rate=0.003, rnn_mixing='mixer',
                   ut_hidden_size=64, ut_learning_rate=0.003, ut_warmup_epochs=0.8, ut_inner_layers=2,
                   ut_halt_bias_init=-3.0, workers=2),
    'maze16': dict(task='maze', size=7, num_train=1000, num_test=200, budget=16, trm_budget=16, max_epochs=24,
                   include_act=False, workers=1),
}

ABOUT = {   # what a page shows beyond the notebook's own introduction
    'maze16': ('This page trains the TRM alone (`include_act False`) at the published configuration\'s budget of 16 '
               'supervision steps, to see which halting rule keeps the full budget\'s accuracy (within 0.5 points) '
               'at 3× fewer mean steps: the table "The rows that pay" below. The ACT-RNN and UT rows are on the '
               'maze and Sudoku pages.'),
}

def papermill_argv(task:str, out_dir:Path)->list:
    "The papermill command line of one showcase page."
    argv = [str(Path(sys.executable).parent / 'papermill'), str(NOTEBOOK.relative_to(ROOT)), str(out_dir / 'compare_halting.ipynb')]
    for k, v in {**SHOWCASES[task], 'out_dir': str(out_dir)}.items(): argv += ['-p', k, str(v)]
    return argv + ['--no-progress-bar']

def header_text(task:str, command:str, wall_s:float)->str:
    "What the page's first cell says about how it was made."
    from halting_lab.train.run import usable_cores
    cores = usable_cores()
    threads = os.environ.get('OMP_NUM_THREADS', 'unset')
    workers = SHOWCASES[task].get('workers', 1)
    text = (f'**Showcase run** — this page is `nbs/experiments/compare_halting.ipynb` executed by papermill and kept with its '
            f'outputs (`nbs/showcase/`; the docs build and `nbdev_test` never re-run it). Page `{task}` (task '
            f'`{SHOWCASES[task]["task"]}`), executed on '
            f'{datetime.date.today().isoformat()} in {wall_s / 60:.1f} min on {platform.machine()} '
            f'({cores} cores, {workers} model(s) trained at a time, OMP_NUM_THREADS {threads}). Regenerate it with\n\n```\npython benchmarks/showcase.py {task}\n```\n\n'
            f'which runs\n\n```\n{command}\n```\n\nThe rows are in `compare_halting_{task}.csv` beside this page.')
    if task in ABOUT: text += '\n\n' + ABOUT[task]
    return text

def make_page(task:str, dry_run:bool=False)->Path:
    "Execute the notebook for `task` and store the page and its CSV in nbs/showcase/."
    out_dir = Path('runs') / f'showcase_{task}'
    argv = papermill_argv(task, out_dir)
    command = shlex.join(['papermill'] + argv[1:])
    print(command, flush=True)
    if dry_run: return out_dir
    (ROOT / out_dir).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    subprocess.run(argv, cwd=ROOT, check=True)
    wall = time.time() - t0
    nb = json.loads((ROOT / out_dir / 'compare_halting.ipynb').read_text())
    first = ''.join(nb['cells'][0]['source']).split('\n', 1)          # the title, then the notebook's own intro
    title = f'{first[0]} — {task} (showcase)'
    nb['cells'][0]['source'] = (title + '\n\n' + header_text(task, command, wall) + '\n\n' + first[1].lstrip('\n')).splitlines(keepends=True)
    dest = ROOT / 'nbs' / 'showcase' / f'compare_halting_{task}.ipynb'
    tmp = dest.with_suffix('.ipynb.tmp'); tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n'); tmp.replace(dest)
    shutil.copyfile(ROOT / out_dir / 'results.csv', dest.with_suffix('.csv'))
    print(f'wrote {dest} and {dest.with_suffix(".csv")} ({wall / 60:.1f} min)')
    return dest

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('tasks', nargs='+', choices=sorted(SHOWCASES))
    ap.add_argument('--dry-run', action='store_true', help='print the papermill commands only')
    a = ap.parse_args()
    for t in a.tasks: make_page(t, a.dry_run)
