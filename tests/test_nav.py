"Grid navigation (seed 003): A*, augmentation, data, model, trainer through train() (checkpoints, early stopping, resume, NaN)."
import json, os, random, re, subprocess, sys
from collections import deque
from pathlib import Path
import numpy as np
import pytest
import torch

from halting_lab.core import dihedral_transform
from halting_lab.tasks import nav as T
from halting_lab.models.nav_mixer import NavTRM, NavConfig, create_model, count_parameters
from halting_lab.train import nav as N
from halting_lab.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
HL = Path(sys.prefix) / 'bin' / 'halting-lab'
NAV_TRAIN = ROOT / 'nbs' / 'experiments' / 'nav_train.ipynb'


def bfs_dist(walls, goal):
    "Independent reference: BFS distance of every cell to `goal` (-1 = unreachable)."
    n, m = walls.shape
    d = -np.ones((n, m), int); d[goal] = 0; q = deque([goal])
    while q:
        r, c = q.popleft()
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            rr, cc = r + dr, c + dc
            if 0 <= rr < n and 0 <= cc < m and not walls[rr, cc] and d[rr, cc] < 0:
                d[rr, cc] = d[r, c] + 1; q.append((rr, cc))
    return d


def random_grid(rng, n):
    return np.array([[rng.random() < rng.choice([0.1, 0.3, 0.5]) for _ in range(n)] for _ in range(n)])


def test_astar_matches_bfs():
    rng = random.Random(0)
    for _ in range(400):
        n = rng.choice([3, 5, 8, 11]); walls = random_grid(rng, n)
        free = [tuple(map(int, c)) for c in np.argwhere(~walls)]
        if len(free) < 2: continue
        s, g = rng.sample(free, 2)
        d = bfs_dist(walls, g); p = T.astar(walls, s, g)
        if d[s] < 0: assert p is None; continue
        assert p is not None and p[0] == s and p[-1] == g and len(p) - 1 == d[s]
        for a, b in zip(p, p[1:]):
            assert abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 and not walls[b]


def test_episode_labels_follow_shortest_paths():
    rng = random.Random(1)
    for _ in range(150):
        walls, s, g = T.random_problem(rng, 8)
        d = bfs_dist(walls, g); ep = T.episode(walls, s, g)
        assert len(ep) == d[s] + 1 and ep[-1] == (g, T.STAY)
        for pos, a in ep[:-1]:
            nxt = T.step(walls, pos, a); assert d[nxt] == d[pos] - 1
            # canonical tie-break: no earlier action in (up, down, left, right) is also optimal
            for b in range(a):
                nb = T.step(walls, pos, b); assert nb == pos or d[nb] != d[pos] - 1


def _onehot(pos, n):
    x = np.zeros((n, n), int); x[pos] = 1; return x


def test_augmentation_maps_actions():
    "Applying the transformed action in the transformed grid = transforming the original next state."
    rng = random.Random(2)
    for _ in range(60):
        walls, s, g = T.random_problem(rng, 7)
        for pos, a in T.episode(walls, s, g):
            nxt = T.step(walls, pos, a)
            tokens = T.encode_state(walls, pos, g)
            for t in range(8):
                w2, p2, g2 = T.decode_state(dihedral_transform(tokens, t))
                nxt2 = T.step(w2, p2, int(T.ACTION_MAP[t, a]))
                want = tuple(int(v) for v in np.argwhere(dihedral_transform(_onehot(nxt, 7), t))[0])
                assert nxt2 == want


def test_generated_data_valid_and_deterministic(tmp_path):
    ps = T.generate_dataset(400, 50, grid_size=6, augment=True, seed=5, output_dir=tmp_path / 'a', progress=False)
    T.generate_dataset(400, 50, grid_size=6, augment=True, seed=5, output_dir=tmp_path / 'b', progress=False)
    tr = T.load_split(ps['train']); tr_b = T.load_split(tmp_path / 'b' / 'train.pt')
    assert len(tr['actions']) == 8 * 400 and tr['grids'].dtype == torch.uint8
    for k in ('grids', 'actions', 'agent', 'goal', 'transform'): assert torch.equal(tr[k], tr_b[k])
    other = T.build_split(400, grid_size=6, seed=6, progress=False)
    assert not torch.equal(other['grids'], tr['grids'][:400])
    for i in range(0, len(tr['actions']), 7):  # every sample: goal reachable, label optimal in its own grid
        walls, pos, goal = T.decode_state(tr['grids'][i].numpy())
        d = bfs_dist(walls, goal); a = int(tr['actions'][i])
        assert d[pos] >= 0
        assert (a == T.STAY) == (pos == goal)
        if a != T.STAY: assert d[T.step(walls, pos, a)] == d[pos] - 1
    te = T.load_split(ps['test']); assert len(te['actions']) == 50 and int(te['transform'].max()) == 0


def test_model_params_and_halting_output():
    for dim, target in [(32, 15e3), (64, 50e3), (128, 200e3), (256, 800e3)]:
        assert 0.7 * target <= count_parameters(create_model(dim=dim)) <= 1.3 * target
    m = create_model(grid_size=6, dim=16, n_sup=3).eval()
    x = torch.randint(0, 2, (4, 36)); x[:, 0] = T.AGENT; x[:, 5] = T.GOAL
    out = m({'inputs': x}, return_steps=True)
    assert out.logits.shape == (4, 1, 5) and out.step_logits.shape == (3, 4, 1, 5)
    assert torch.equal(out.halting_steps, torch.full((4, 1), 3.0))
    assert torch.allclose(out.step_logits[-1], out.logits)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp('navdata')
    T.generate_dataset(600, 200, grid_size=5, seed=0, output_dir=d, progress=False)
    return d


def _train(data, ck, **kw):
    args = dict(train_path=str(data / 'train.pt'), val_path=str(data / 'test.pt'),
                dim=16, depth=1, dropout=0.1, epochs=4, patience=10, lr=3e-3)
    if 'resume' in kw: args = {}  # a resumed run takes its settings from the checkpoint
    return N.train_nav(command='pytest', checkpoint_dir=str(ck), quiet=True, threads=1, **{**args, **kw})


def test_checkpoint_keys_history_and_seed_snippet(data, tmp_path):
    s = _train(data, tmp_path / 'exp001' / 'checkpoints', epochs=3)
    ck_dir = tmp_path / 'exp001' / 'checkpoints'
    for e in (1, 2, 3): assert (ck_dir / f'checkpoint_epoch_{e}.pt').exists()
    assert (ck_dir / 'metrics.csv').exists() and (ck_dir / 'config.json').exists()   # the run layout beside them
    for name in ('best.pt', 'checkpoint_epoch_3.pt'):
        ck = torch.load(ck_dir / name, map_location='cpu')   # the seed's snippet: PyTorch's default weights_only=True
        assert {'epoch', 'model_state_dict', 'optimizer_state_dict', 'val_acc', 'val_loss', 'config'} <= set(ck)
        assert {'grid_size', 'dim', 'depth', 'dropout'} <= set(ck['config']) and ck['config']['model_type'] == 'nav_trm'
        # the seed's loading recipe
        m = create_model(grid_size=ck['config']['grid_size'], dim=ck['config']['dim'], depth=ck['config']['depth'],
                         dropout=ck['config']['dropout'])
        m.load_state_dict(ck['model_state_dict'])
    h = json.loads((ck_dir / 'history.json').read_text())
    for k in ('train_loss', 'train_acc', 'val_loss', 'val_acc'): assert isinstance(h[k], list) and len(h[k]) == 3
    assert max(h['val_acc']) == pytest.approx(s['best_val_acc'])
    seed_snippet = r"""
for exp in experiments/exp*/; do
    echo "=== $exp ==="
    python -c "
import json
with open('${exp}checkpoints/history.json') as f:
    h = json.load(f)
    print(f'Best val acc: {max(h[\"val_acc\"]):.4f}')
    print(f'Final val acc: {h[\"val_acc\"][-1]:.4f}')
"
done
"""  # the seed's "Comparing Experiments" loop, unchanged
    (tmp_path / 'experiments').mkdir(); (tmp_path / 'exp001').rename(tmp_path / 'experiments' / 'exp001')
    env = {**os.environ, 'PATH': f'{Path(sys.executable).parent}:{os.environ["PATH"]}'}
    out = subprocess.run(['bash', '-c', seed_snippet], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and not out.stderr, out.stderr
    assert re.search(r'Best val acc: 0\.\d{4}\nFinal val acc: 0\.\d{4}', out.stdout)


@pytest.mark.parametrize('recursion', [{}, {'n_sup': 3, 'n_latent': 2}], ids=['defaults', 'n_sup3_n_latent2'])
def test_seed_snippet_rebuilds_the_trained_model(data, tmp_path, recursion):
    "The seed's create_model(4 keys) + load_state_dict gives the trained model's logits exactly (defaults or not)."
    from halting_lab import load_checkpoint
    _train(data, tmp_path, epochs=2, **recursion)
    path = tmp_path / 'checkpoint_epoch_2.pt'
    trained = load_checkpoint(path)                             # the Lightning weights of the same moment
    want = {'n_sup': 2, 'n_latent': 1, **recursion}
    assert {k: getattr(trained.config, k) for k in want} == want
    assert N.train_defaults()['n_sup'] == NavConfig().n_sup == create_model().config.n_sup  # one source
    ck = torch.load(path, map_location='cpu')
    assert {k: ck['config'][k] for k in want} == want and set(N.SEED_CONFIG_KEYS) <= set(ck['config'])
    x = T.load_split(data / 'test.pt')['grids'][:64].reshape(64, -1).long()
    with torch.no_grad(): ref = trained(x, return_steps=True).step_logits
    model = create_model(grid_size=ck['config']['grid_size'], dim=ck['config']['dim'], depth=ck['config']['depth'],
                         dropout=ck['config']['dropout'])      # the seed's loading snippet, unchanged
    model.load_state_dict(ck['model_state_dict']); model.eval()
    loaded, _ = N.load_nav_checkpoint(path)
    with torch.no_grad():
        for m in (model, loaded):
            got = m(x, return_steps=True).step_logits
            assert got.shape == ref.shape and torch.equal(got, ref)


def test_early_stopping_triggers(data, tmp_path):
    s = _train(data, tmp_path, lr=1e-12, weight_decay=0.0, epochs=20, patience=2)  # nothing can improve
    assert s['stopped_early'] and s['epochs_run'] == 3 and s['best_epoch'] == 1
    assert not (tmp_path / 'checkpoint_epoch_4.pt').exists() and (tmp_path / 'checkpoint_epoch_3.pt').exists()


def test_resume_equals_uninterrupted(data, tmp_path):
    full = _train(data, tmp_path / 'full', epochs=4, patience=2)
    res = _train(data, tmp_path / 'res', resume=str(tmp_path / 'full' / 'checkpoint_epoch_2.pt'))
    a = torch.load(tmp_path / 'full' / 'checkpoint_epoch_4.pt', weights_only=True)
    b = torch.load(tmp_path / 'res' / 'checkpoint_epoch_4.pt', weights_only=True)
    for k in a['model_state_dict']: assert torch.equal(a['model_state_dict'][k], b['model_state_dict'][k]), k
    for k in ('train_loss', 'train_acc', 'val_loss', 'val_acc', 'best'): assert a['history'][k] == b['history'][k]
    assert a['bad_epochs'] == b['bad_epochs'] and a['best'] == b['best']
    assert b['train_args']['patience'] == 2  # the resumed run kept its own settings
    # an interrupted run (stopped after epoch 2) resumed in place continues the same way
    _train(data, tmp_path / 'cut', epochs=2, patience=2)
    _train(data, tmp_path / 'cut', epochs=4, resume=str(tmp_path / 'cut' / 'checkpoint_epoch_2.pt'))
    c = torch.load(tmp_path / 'cut' / 'checkpoint_epoch_4.pt', weights_only=True)
    for k in a['model_state_dict']: assert torch.equal(a['model_state_dict'][k], c['model_state_dict'][k]), k


@pytest.fixture(scope='module')
def trained(data, tmp_path_factory):
    "A model trained for a few seconds on 5x5 grids: (summary, best.pt path)."
    ck = tmp_path_factory.mktemp('trained')
    return _train(data, ck, dim=32, depth=2, epochs=4, dropout=0.0), ck / 'best.pt'


def test_tiny_training_beats_chance(trained):
    assert trained[0]['best_val_acc'] > 0.6  # chance is 0.2


def _policy_quality(model, problems):
    "Share of free non-goal cells whose argmax action is a BFS-optimal move, and of goal cells answered `stay`."
    from halting_lab.viewers.nav import action_probs
    good = total = stay = 0
    for walls, _, goal in problems:
        P = action_probs(model, walls, goal)[-1]; d = bfs_dist(walls, goal)
        for r, c in np.argwhere(~walls):
            a = int(np.argmax(P[r, c]))
            if (r, c) == goal: stay += a == T.STAY; continue
            if d[r, c] < 0: continue
            total += 1; good += a != T.STAY and d[T.step(walls, (r, c), a)] == d[r, c] - 1
    return good / total, stay / len(problems)


def test_viewer_on_trained_model(trained, data):
    "Rollout vs A*, per-cell probabilities, the recursion-step slider and success by difficulty, on a trained model."
    from halting_lab.viewers import nav as V
    summary, ckpt = trained
    v = V.NavViewer(ckpt, data_path=data / 'test.pt')
    untrained = create_model(grid_size=5, dim=32, depth=2).eval()
    rng = random.Random(3); problems = [T.random_problem(rng, 5) for _ in range(25)]
    (good, stay), (good_u, _) = _policy_quality(v.model, problems), _policy_quality(untrained, problems)
    assert good > 0.75 and stay > 0.9 and good > good_u + 0.3, (good, stay, good_u)
    for walls, s, g in problems[:10]:                       # probabilities: NaN on walls, a distribution elsewhere
        P = V.action_probs(v.model, walls, g, n_sup=3)
        assert P.shape == (3, 5, 5, 5) and np.isnan(P[:, walls]).all() and np.allclose(P[:, ~walls].sum(-1), 1, atol=1e-5)
        r = V.rollout(v.model, walls, s, g)
        d = bfs_dist(walls, g)
        assert r['path'][0] == s and r['astar_path'] == T.astar(walls, s, g) and len(r['astar_path']) - 1 == d[s]
        for a, b in zip(r['path'], r['path'][1:]): assert abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 and not walls[b]
        for pos, act in zip(r['path'], r['actions']): assert act == int(np.nanargmax(P[1][pos]))  # greedy at the trained n_sup=2
        assert r['success'] == (r['path'][-1] == g and r['actions'][-1] == T.STAY)
        assert r['optimal'] == (r['success'] and len(r['path']) - 1 == d[s])
    # success by difficulty: the aggregation of exactly these rollouts, and a trained model solves most short problems
    df = V.success_by_difficulty(v.model, 40, seed=7)
    rng = random.Random(7); rows = {}
    for _ in range(40):
        walls, s, g = T.random_problem(rng, 5); r = V.rollout(v.model, walls, s, g)
        rows.setdefault(len(r['astar_path']) - 1, []).append((r['success'], r['optimal']))
    assert df.path_len.tolist() == sorted(rows) and int(df.problems.sum()) == 40
    for row in df.itertuples():
        assert row.problems == len(rows[row.path_len])
        assert row.success_rate == pytest.approx(np.mean([a for a, _ in rows[row.path_len]]))
        assert row.optimal_rate == pytest.approx(np.mean([b for _, b in rows[row.path_len]])) and row.optimal_rate <= row.success_rate
    overall = (df.success_rate * df.problems).sum() / 40
    du = V.success_by_difficulty(untrained, 40, seed=7)
    assert overall > 0.5 and overall > (du.success_rate * du.problems).sum() / 40 + 0.3
    assert df[df.path_len <= 2].success_rate.min() >= 0.8
    # the recursion-step slider: other step counts, other probabilities (and figure)
    assert np.nanmax(np.abs(v.probs(1) - v.probs(2))) > 1e-3
    box = v.widget; c = box.controls
    opacity = lambda: np.array(c['figure'].data[1].marker.opacity)
    at2 = opacity(); c['step'].value = 1
    assert 'recursion step 1/4' in c['figure'].layout.title.text and not np.allclose(opacity(), at2)
    # a chosen grid: text map, token grid, (walls, start, goal); in the widget, editing the map box
    text = "S.#..\n..#..\n....#\n.##..\n....G"
    v.set_grid(text); w, s, g = T.parse_map(text)
    assert v.problem[1:] == ((0, 0), (4, 4)) and np.array_equal(v.problem[0], w)
    r = v.rollout(); assert r['path'][0] == (0, 0) and r['astar_path'] == T.astar(w, s, g)
    v.set_grid(T.encode_state(w, (2, 1), g)); assert v.problem[1] == (2, 1)
    v.set_grid((w, (1, 0), g)); assert v.problem[1] == (1, 0)
    with pytest.raises(Exception, match='trained on 5x5'): v.set_grid("S.\n.G")
    with pytest.raises(Exception, match='not reachable'): v.set_grid("S.#..\n..#..\n###..\n.....\n....G")
    c['map'].value = "G....\n.#.#.\n.....\n.#.#.\n....S"
    assert c['source'].value == 'map' and v.problem[1:] == ((4, 4), (0, 0))
    sg = c['figure'].data[-1]; assert [list(sg.x), list(sg.y)] == [[4, 0], [4, 0]]   # start / goal markers moved
    c['map'].value = "G..\n...\n..S"                        # wrong size: the error is shown, the problem kept
    assert v.problem[1] == (4, 4) and 'trained on 5x5' in str(c['output'].outputs)
    c['success'].click(); assert 'success_rate' in str(c['output'].outputs)   # the table at the slider's step count


def test_nan_loss_stops_without_poisoned_checkpoint(data, tmp_path, monkeypatch, capsys):
    real = NavTRM._readout; calls = {'n': 0}
    n_batches = -(-600 // 64)
    def poisoned(self, y, idx):
        out = real(self, y, idx)
        if self.training: calls['n'] += 1
        return out * float('nan') if calls['n'] > 2 * n_batches * 2 else out  # NaN from epoch 3 on (n_sup=2)
    monkeypatch.setattr(NavTRM, '_readout', poisoned)
    with pytest.raises(N.NavDiverged, match='NaN|nan'):
        _train(data, tmp_path, epochs=5)
    assert (tmp_path / 'checkpoint_epoch_2.pt').exists() and not (tmp_path / 'checkpoint_epoch_3.pt').exists()
    best = torch.load(tmp_path / 'best.pt', weights_only=True)
    assert all(torch.isfinite(v).all() for v in best['model_state_dict'].values())
    assert len(json.loads((tmp_path / 'history.json').read_text())['val_acc']) == 2


def test_cli_generate_train_console_and_run_dir(tmp_path, capsys):
    d = tmp_path / 'data'
    assert cli_main(['nav', 'generate', '--num-train', '300', '--num-test', '60', '--grid-size', '5',
                     '--output-dir', str(d), '--seed', '1', '--no-progress']) == 0
    rc = cli_main(['nav', 'train', '--train-path', str(d / 'train.pt'), '--val-path', str(d / 'test.pt'),
                   '--dim', '16', '--depth', '1', '--epochs', '2', '--threads', '1',
                   '--run-id', 'nav_cli_test', '--runs-root', str(tmp_path / 'runs')])
    assert rc == 0
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if l.startswith('Epoch ')]
    assert len(lines) == 2
    pat = r'^Epoch \d+/2 - Train Loss: \d+\.\d{4}, Train Acc: \d\.\d{4} Val Loss: \d+\.\d{4}, Val Acc: \d\.\d{4}( \*)?$'
    assert all(re.match(pat, l) for l in lines) and lines[0].endswith(' *')
    rd = tmp_path / 'runs' / 'nav_cli_test'
    cfg = json.loads((rd / 'config.json').read_text())
    assert cfg['command'].startswith('halting-lab nav train') and 'torch' in cfg['versions']
    assert (rd / 'checkpoints' / 'best.pt').exists() and (rd / 'train.log').read_text().count('Epoch ') == 2
    import pandas as pd
    m = pd.read_csv(rd / 'metrics.csv'); m = m[m.kind == 'epoch']          # the workbench's metrics.csv
    h = json.loads((rd / 'checkpoints' / 'history.json').read_text())
    assert len(m) == 2 and np.allclose(m['val/exact_acc'], h['val_acc']) and np.allclose(m['train/ce'], h['train_loss'])
    assert cfg['task'] == 'nav' and cfg['model_type'] == 'nav_trm'
    assert cli_main(['nav', 'train', '--train-path', str(tmp_path / 'missing.pt'), '--quiet']) == 1
    assert 'file not found' in capsys.readouterr().err


def test_preempt_file_stops_and_auto_resume_continues(data, tmp_path):
    "Slurm protocol: runs/<id>/PREEMPT stops the run ('preempted'); --resume auto continues exactly."
    root = tmp_path / 'runs'
    full = _train(data, tmp_path / 'full', epochs=3)
    kw = dict(run_id='r', runs_root=str(root), checkpoint_dir=None)
    s1 = N.train_nav(command='pytest', train_path=str(data / 'train.pt'), val_path=str(data / 'test.pt'), dim=16, depth=1,
                     dropout=0.1, epochs=1, patience=10, lr=3e-3, quiet=True, threads=1, **kw)
    assert s1['status'] == 'finished'
    (root / 'r' / 'PREEMPT').touch()
    s2 = N.train_nav(command='pytest', resume='auto', epochs=3, quiet=True, threads=1, **kw)
    assert s2['status'] == 'preempted' and json.loads((root / 'r' / 'results.json').read_text())['status'] == 'preempted'
    assert not (root / 'r' / 'checkpoints' / 'checkpoint_epoch_2.pt').exists()
    assert not (root / 'r' / 'PREEMPT').exists()                         # consumed by the stop
    s3 = N.train_nav(command='pytest', resume='auto', epochs=3, quiet=True, threads=1, **kw)
    assert s3['status'] == 'finished' and s3['history']['val_acc'] == full['history']['val_acc']
    a = torch.load(tmp_path / 'full' / 'checkpoint_epoch_3.pt', weights_only=True)
    b = torch.load(root / 'r' / 'checkpoints' / 'checkpoint_epoch_3.pt', weights_only=True)
    for k in a['model_state_dict']: assert torch.equal(a['model_state_dict'][k], b['model_state_dict'][k]), k


def test_grid_search_sweep_then_compare(tmp_path, monkeypatch):
    "The seed's dim x depth x dropout grid as one `halting-lab sweep` of nav_train.ipynb (tiny 2x2x1), then nav_compare.ipynb."
    import pandas as pd
    from halting_lab.sweep import execute_notebook
    runs = tmp_path / 'runs'
    env = {**os.environ, 'HALTING_LAB_RUNS': str(runs), 'OMP_NUM_THREADS': '1'}
    tiny = {'num_train': 200, 'num_test': 40, 'grid_size': 5, 'epochs': 2, 'threads': 1, 'num_rollouts': 6, 'num_show': 2,
            'data_dir': tmp_path / 'data'}
    r = subprocess.run([str(HL), 'sweep', str(NAV_TRAIN), '--prefix', 'nav_grid', '--grid', 'dim=8,16', 'depth=1,2', 'dropout=0.1',
                        *[x for k, v in tiny.items() for x in ('-p', k, str(v))]],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    configs = [(d, k) for d in (8, 16) for k in (1, 2)]
    for d, k in configs:
        rd = runs / f'nav_grid_dim{d}_depth{k}_dropout0.1'
        assert json.loads((rd / 'status.json').read_text())['state'] == 'finished'
        res = json.loads((rd / 'results.json').read_text())
        assert res['status'] == 'finished' and res['epochs_run'] == 2 and 0 <= res['rollout_success'] <= 1
        cfg = json.loads((rd / 'config.json').read_text())['model_config']
        assert (cfg['dim'], cfg['depth'], cfg['dropout'], cfg['grid_size'], cfg['n_sup']) == (d, k, 0.1, 5, NavConfig.n_sup)
        assert (rd / 'nav_train.ipynb').exists() and (rd / 'checkpoints' / 'best.pt').exists()
        for f in ('curves.png', 'rollouts.png', 'success_by_difficulty.png'): assert (rd / 'figures' / f).stat().st_size > 1000
    summary = pd.read_csv(runs / 'nav_grid' / 'summary.csv')              # the sweep's own summary notebook
    assert len(summary) == 4 and set(summary.state) == {'finished'} and summary.best_val_acc.notna().all()
    monkeypatch.setenv('HALTING_LAB_RUNS', str(runs))                     # nav_compare with its default runs_glob
    nb = execute_notebook(ROOT / 'nbs' / 'experiments' / 'nav_compare.ipynb', runs / 'nav_compare', {})
    df = pd.read_csv(runs / 'nav_compare' / 'nav_compare.csv')
    assert len(df) == 4 and sorted(zip(df.dim, df.depth)) == configs and set(df.dropout) == {0.1}
    for row in df.itertuples():
        h = json.loads((runs / row.run / 'checkpoints' / 'history.json').read_text())
        assert row.best_val_acc == pytest.approx(max(h['val_acc'])) and row.final_val_acc == pytest.approx(h['val_acc'][-1])
    assert (runs / 'nav_compare' / 'heatmap_dim_depth.png').stat().st_size > 1000
    assert nb.read_text().count('Best val acc: ') >= 4                    # the seed-style printout


# The seed's Recipes 2 and 3: generator and trainer flags (the seed's text), as nav_train.ipynb parameters
SEED_RECIPES = {
    'nav_r2': '--num-train 50000 --num-test 2000 --augment --dim 128 --depth 3 --dropout 0.15 --weight-decay 0.01 --lr 5e-4 '
              '--epochs 100 --patience 20',
    'nav_r3': '--num-train 100000 --num-test 5000 --augment --dim 256 --depth 4 --dropout 0.2 --weight-decay 0.02 --lr 3e-4 '
              '--epochs 150 --patience 30 --batch-size 128',
}


@pytest.mark.parametrize('run_id', list(SEED_RECIPES))
def test_recipe_slurm_job_renders(tmp_path, run_id):
    "The Slurm commands in nav_train.ipynb carry every flag of the seed's recipe and render with --dry-run."
    import shlex
    prose = ''.join(json.loads(NAV_TRAIN.read_text())['cells'][0]['source']).replace('\\\n', ' ')
    cmd = next(l for l in prose.splitlines() if l.startswith('halting-lab slurm submit') and f'--run-id {run_id} ' in l)
    argv = shlex.split(cmd)[1:]
    params = {argv[i + 1]: argv[i + 2] for i in range(len(argv)) if argv[i] == '-p'}
    seed = shlex.split(SEED_RECIPES[run_id])
    want = {}
    for i, flag in enumerate(seed):
        if flag.startswith('--'):
            want[flag[2:].replace('-', '_')] = 'True' if i + 1 == len(seed) or seed[i + 1].startswith('--') else seed[i + 1]
    assert params == want
    r = subprocess.run([str(HL), *argv, '--dry-run'], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, 'HALTING_LAB_RUNS': str(tmp_path)})
    assert r.returncode == 0, r.stderr
    from halting_lab.sweep import parse_value
    pline = next(l for l in r.stdout.splitlines() if l.strip().startswith('PARAMS=('))
    job = shlex.split(pline.strip()[len('PARAMS=('):-1])
    rendered = {job[i + 1]: parse_value(job[i + 2]) for i in range(len(job)) if job[i] == '-p'}
    assert rendered == {k: parse_value(v) for k, v in want.items()}, pline   # what papermill gets in the job
    assert f'-r run_id {run_id}' in pline and '-r resume_ckpt auto' in pline
    for line in ('#SBATCH --gpus=1', '#SBATCH --requeue', f'NOTEBOOK={NAV_TRAIN}'): assert line in r.stdout, line
    assert list(tmp_path.iterdir()) == []                                  # a dry run writes nothing


def test_optimal_actions_and_augmented_labels_match_bfs():
    "Augmented labels are the tie-break label of the transformed grid (not just the transformed action)."
    d = T.build_split(300, grid_size=6, seed=9, progress=False)
    opt = T.optimal_actions(d['grids'])
    for i in range(0, 300, 11):
        walls, pos, goal = T.decode_state(d['grids'][i].numpy()); dist = bfs_dist(walls, goal)
        want = [a for a in range(4) if T.step(walls, pos, a) != pos and dist[T.step(walls, pos, a)] == dist[pos] - 1]
        assert opt[i].nonzero().flatten().tolist() == (want if pos != goal else [T.STAY])
    x = d['grids'].reshape(300, -1).long(); t = torch.arange(300) % 8
    xa, ya = T.augment_batch(x, opt, t, T.dihedral_tables(6))
    for i in range(0, 300, 13):
        w, p, g = T.decode_state(xa[i].reshape(6, 6).numpy())
        assert int(ya[i]) == T.next_action(w, p, g)


def _old_format_checkpoint(path, model, **extra):
    "A checkpoint as the previous nav trainer wrote it (numpy RNG state pickled as a numpy array)."
    opt = torch.optim.AdamW(model.parameters())
    torch.save({'epoch': 3, 'model_state_dict': model.state_dict(), 'optimizer_state_dict': opt.state_dict(),
                'val_acc': 0.5, 'val_loss': 1.0, 'config': model.config.to_dict(), 'model_type': 'nav_trm',
                'rng': {'torch': torch.get_rng_state(), 'numpy': np.random.get_state(), 'python': random.getstate()},
                'train_args': {'dim': model.config.dim}, **extra}, path)


def test_old_checkpoints_load_safely_and_hostile_files_are_refused(tmp_path, data):
    from halting_lab.viewers import nav as V
    m = create_model(grid_size=5, dim=16, depth=1).eval()
    _old_format_checkpoint(tmp_path / 'old.pt', m)
    with pytest.raises(Exception): torch.load(tmp_path / 'old.pt', weights_only=True)   # needs numpy globals
    loaded, ck = N.load_nav_checkpoint(tmp_path / 'old.pt')                            # converted on read, safely
    x = T.load_split(data / 'test.pt')['grids'][:8].reshape(8, -1).long()
    with torch.no_grad(): assert torch.equal(loaded(x).logits, m(x).logits)
    assert V.NavViewer(tmp_path / 'old.pt').model.config.dim == 16
    with pytest.raises(Exception, match='cannot be resumed exactly'):
        N.train_nav(resume=str(tmp_path / 'old.pt'), checkpoint_dir=str(tmp_path / 'x'), quiet=True)
    # a pickled object that is not a tensor/plain type: refused unless trusted=True (never executed here)
    _old_format_checkpoint(tmp_path / 'hostile.pt', m, payload=Path('/tmp'))
    with pytest.raises(Exception, match='not a halting_lab checkpoint'): N.load_nav_checkpoint(tmp_path / 'hostile.pt')
    assert N.load_nav_checkpoint(tmp_path / 'hostile.pt', trusted=True)[1]['payload'] == Path('/tmp')
    for bad in (b'', b'hello', os.urandom(256)):
        (tmp_path / 'bad.pt').write_bytes(bad)
        with pytest.raises(Exception, match='not a halting_lab checkpoint'): N.load_nav_checkpoint(tmp_path / 'bad.pt')
    (tmp_path / 'bad.pt').write_bytes(b'junk')
    with pytest.raises(Exception, match='weights_only'): T.load_split(tmp_path / 'bad.pt')


def test_seed_resume_snippet(data, tmp_path):
    "The seed's 'Resume Training' snippet, unchanged, under PyTorch's default weights_only=True."
    _train(data, tmp_path / 'checkpoints', epochs=2)
    checkpoint = torch.load(tmp_path / 'checkpoints' / 'checkpoint_epoch_2.pt')
    model = create_model(grid_size=checkpoint['config']['grid_size'], dim=checkpoint['config']['dim'],
                         depth=checkpoint['config']['depth'], dropout=checkpoint['config']['dropout'])
    optimizer = torch.optim.AdamW(model.parameters())
    model.load_state_dict(checkpoint['model_state_dict'])
    optimizer.load_state_dict(checkpoint['optimizer_state_dict'])
    start_epoch = checkpoint['epoch'] + 1
    assert start_epoch == 3 and optimizer.state_dict()['state'][0]['step'] > 0


def test_seed_default_layout_without_flags(data, tmp_path, monkeypatch):
    "No --checkpoint-dir, no --run-id: the seed's checkpoints/ is the run dir (best.pt, metrics.csv side by side)."
    monkeypatch.chdir(tmp_path)
    assert cli_main(['nav', 'train', '--train-path', str(data / 'train.pt'), '--val-path', str(data / 'test.pt'),
                     '--dim', '16', '--depth', '1', '--epochs', '1', '--threads', '1', '--quiet']) == 0
    ck = Path('checkpoints')
    for f in ('best.pt', 'checkpoint_epoch_1.pt', 'history.json', 'metrics.csv', 'config.json'): assert (ck / f).exists(), f
    checkpoint = torch.load('checkpoints/best.pt', map_location='cpu')   # the seed's snippet
    assert checkpoint['epoch'] == 1 and checkpoint['config']['dim'] == 16
