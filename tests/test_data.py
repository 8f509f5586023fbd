"""Data layer: HRM/TRM format round trip, validation errors, maze generator, aug8, CLI, atomicity, sampler resume."""
import json, subprocess, sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from halting_lab.core import dihedral_transform, inverse_dihedral_transform
from halting_lab.data import hrm
from halting_lab.tasks import maze

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args):
    "Run `halting-lab ...` in a fresh interpreter; returns the CompletedProcess."
    code = f"from halting_lab.cli import main; raise SystemExit(main({list(args)!r}))"
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    "A small aug8 maze dataset (9x9)."
    d = tmp_path_factory.mktemp('data') / 'maze9'
    maze.build_maze_dataset(d, num_train=12, num_test=5, size=9, min_path_len=8, seed=0, aug=True, progress=False)
    return d


# ---------------------------------------------------------------- format round trip
def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 12, (20, 25)); y = rng.integers(0, 12, (20, 25))
    pidx = np.array([0, 3, 7, 12, 20]); gidx = np.array([0, 2, 4]); pid = np.array([1, 2, 3, 4])
    sets = {'all': dict(inputs=x, labels=y, puzzle_indices=pidx, group_indices=gidx, puzzle_identifiers=pid)}
    hrm.write_dataset(tmp_path / 'd', {'train': sets, 'test': sets}, vocab_size=12, identifiers=['<blank>', 'a', 'b', 'c', 'd'])
    md, got = hrm.read_split(tmp_path / 'd' / 'train')
    a = got['all']
    np.testing.assert_array_equal(a['inputs'], x); np.testing.assert_array_equal(a['labels'], y)
    np.testing.assert_array_equal(a['puzzle_indices'], pidx); np.testing.assert_array_equal(a['group_indices'], gidx)
    np.testing.assert_array_equal(a['puzzle_identifiers'], pid)
    assert isinstance(a['inputs'], np.memmap)
    assert a['inputs'].dtype == np.uint8 and a['labels'].dtype == np.uint8
    for f in ('puzzle_identifiers', 'puzzle_indices', 'group_indices'): assert a[f].dtype == np.int32
    js = json.loads((tmp_path / 'd' / 'train' / 'dataset.json').read_text())
    assert list(js) == ['pad_id', 'ignore_label_id', 'blank_identifier_id', 'vocab_size', 'seq_len', 'num_puzzle_identifiers',
                        'total_groups', 'mean_puzzle_examples', 'total_puzzles', 'sets']
    assert js['seq_len'] == 25 and js['total_groups'] == 2 and js['total_puzzles'] == 2 and js['num_puzzle_identifiers'] == 5
    assert js['mean_puzzle_examples'] == pytest.approx(5.0) and js['sets'] == ['all']
    assert json.loads((tmp_path / 'd' / 'identifiers.json').read_text())[0] == '<blank>'
    assert hrm.check_dataset(tmp_path / 'd')['train']['examples'] == 20


def test_large_vocab_is_int32(tmp_path):
    x = np.arange(600).reshape(2, 300)
    hrm.write_dataset(tmp_path / 'd', {'train': {'inputs': x, 'labels': x}}, vocab_size=600)
    assert np.load(tmp_path / 'd' / 'train' / 'all__inputs.npy').dtype == np.int32


def test_hrm_and_trm_variants_load(small, tmp_path):
    import shutil
    trm_md = hrm.read_metadata(small / 'train')
    assert trm_md.total_puzzles == 12                              # TRM variant (what we write)
    hrm_dir = tmp_path / 'hrm'; shutil.copytree(small, hrm_dir)
    for split in ('train', 'test'):
        p = hrm_dir / split / 'dataset.json'; d = json.loads(p.read_text()); del d['total_puzzles']; p.write_text(json.dumps(d))
    md, sets = hrm.read_split(hrm_dir / 'train')
    assert md.total_puzzles is None and 'total_puzzles' not in md.to_dict()
    assert hrm.check_dataset(hrm_dir)['train']['examples'] == 96
    from halting_lab.data.datamodule import PuzzleDataModule
    dm = PuzzleDataModule(hrm_dir, batch_size=8)
    assert next(iter(dm.train_dataloader()))['inputs'].shape == (8, 81)


def test_multiple_sets(tmp_path):
    x = np.ones((4, 9), int)
    hrm.write_dataset(tmp_path / 'd', {'train': {'a': {'inputs': x, 'labels': x}, 'b': {'inputs': x[:2] * 2, 'labels': x[:2]}}}, vocab_size=3)
    md, sets = hrm.read_split(tmp_path / 'd' / 'train')
    assert md.sets == ['a', 'b'] and md.total_groups == 6
    from halting_lab.data.datamodule import PuzzleDataset
    ds = PuzzleDataset(tmp_path / 'd', 'train')
    assert len(ds) == 6 and int(ds[5]['inputs'][0]) == 2 and int(ds[5]['index']) == 5
    assert len(PuzzleDataset(tmp_path / 'd', 'train', set_name='b')) == 2


# ---------------------------------------------------------------- validation errors
def _copy(small, tmp_path):
    import shutil
    d = tmp_path / 'bad'; shutil.copytree(small, d); return d

def _edit_json(d, **kw):
    p = d / 'train' / 'dataset.json'; j = json.loads(p.read_text()); j.update(kw); p.write_text(json.dumps(j))

def _save(d, field, arr): np.save(d / 'train' / f'all__{field}.npy', arr)

def _load(d, field): return np.load(d / 'train' / f'all__{field}.npy')

BAD = {
    'missing_json':    (hrm.MissingFileError, 'dataset.json', lambda d: (d / 'train' / 'dataset.json').unlink()),
    'missing_array':   (hrm.MissingFileError, 'all__labels.npy', lambda d: (d / 'train' / 'all__labels.npy').unlink()),
    'missing_field':   (hrm.MissingFieldError, 'vocab_size', lambda d: (lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != 'vocab_size'})))(d / 'train' / 'dataset.json')),
    'float_dtype':     (hrm.WrongDtypeError, 'all__inputs.npy', lambda d: _save(d, 'inputs', _load(d, 'inputs').astype(np.float32))),
    'shape_mismatch':  (hrm.ShapeMismatchError, 'all__labels.npy', lambda d: _save(d, 'labels', _load(d, 'labels')[:-1])),
    'token_range':     (hrm.TokenOutOfRangeError, 'all__inputs.npy', lambda d: _save(d, 'inputs', np.where(_load(d, 'inputs') == 1, 7, _load(d, 'inputs')).astype(np.uint8))),
    'label_range':     (hrm.TokenOutOfRangeError, 'all__labels.npy', lambda d: _edit_json(d, vocab_size=5)),
    'not_monotone':    (hrm.BadIndicesError, 'all__puzzle_indices.npy', lambda d: _save(d, 'puzzle_indices', np.r_[0, 5, 3, _load(d, 'puzzle_indices')[3:]].astype(np.int32))),
    'not_start_0':     (hrm.BadIndicesError, 'all__group_indices.npy', lambda d: _save(d, 'group_indices', (_load(d, 'group_indices') + 1).astype(np.int32))),
    'last_not_n':      (hrm.BadIndicesError, 'all__puzzle_indices.npy', lambda d: _save(d, 'puzzle_indices', np.r_[_load(d, 'puzzle_indices')[:-1], 95].astype(np.int32))),
    'seq_len':         (hrm.SeqLenMismatchError, 'seq_len', lambda d: _edit_json(d, seq_len=100)),
    'negative_token':  (hrm.TokenOutOfRangeError, 'token id -1', lambda d: _save(d, 'inputs', np.where(_load(d, 'inputs') == 1, -1, _load(d, 'inputs').astype(np.int8)))),
    'negative_label':  (hrm.TokenOutOfRangeError, 'token id -3', lambda d: _save(d, 'labels', np.where(_load(d, 'labels') == 1, -3, _load(d, 'labels').astype(np.int32)))),
    'float_indices':   (hrm.WrongDtypeError, 'dtype float64', lambda d: _save(d, 'puzzle_indices', _load(d, 'puzzle_indices').astype(np.float64))),
    'uint64_groups':   (hrm.WrongDtypeError, 'dtype uint64', lambda d: _save(d, 'group_indices', _load(d, 'group_indices').astype(np.uint64))),
    'bool_ids':        (hrm.WrongDtypeError, 'dtype bool', lambda d: _save(d, 'puzzle_identifiers', _load(d, 'puzzle_identifiers').astype(bool))),
    'total_groups':    (hrm.GroupCountMismatchError, "'total_groups' is 13", lambda d: _edit_json(d, total_groups=13)),
}

@pytest.mark.parametrize('case', list(BAD))
def test_named_errors(small, tmp_path, case):
    err, needle, corrupt = BAD[case]
    d = _copy(small, tmp_path); corrupt(d)
    with pytest.raises(err) as ei: hrm.check_dataset(d)
    msg = str(ei.value)
    assert needle in msg, msg
    assert 'train' in msg and 'expected' in msg, msg
    assert isinstance(ei.value, hrm.DatasetFormatError)
    field = {'missing_json': None, 'missing_array': 'labels', 'missing_field': 'vocab_size', 'float_dtype': 'inputs', 'shape_mismatch': 'labels',
             'token_range': 'inputs', 'label_range': 'labels', 'not_monotone': 'puzzle_indices', 'not_start_0': 'group_indices',
             'last_not_n': 'puzzle_indices', 'seq_len': 'seq_len', 'negative_token': 'inputs', 'negative_label': 'labels',
             'float_indices': 'puzzle_indices', 'uint64_groups': 'group_indices', 'bool_ids': 'puzzle_identifiers',
             'total_groups': 'group_indices'}[case]
    if field: assert field in msg, msg


def test_integer_variants_accepted_and_total_puzzles_warning(small, tmp_path):
    "Readers accept the builders' integer variants (int64 indices, int32 tokens); total_puzzles = groups or puzzles is fine."
    d = _copy(small, tmp_path)
    for f in ('puzzle_identifiers', 'puzzle_indices', 'group_indices'): _save(d, f, _load(d, f).astype(np.int64))
    _save(d, 'inputs', _load(d, 'inputs').astype(np.int32))
    s = hrm.check_dataset(d)['train']
    assert s['warnings'] == [] and s['groups'] == 12 and s['puzzles'] == 96
    _edit_json(d, total_puzzles=96)                                  # TRM's ARC builder counts puzzles
    assert hrm.check_dataset(d)['train']['warnings'] == []
    _edit_json(d, total_puzzles=50)                                  # neither: reported, not fatal
    w = hrm.check_dataset(d)['train']['warnings']
    assert len(w) == 1 and "'total_puzzles' is 50" in w[0] and '96 puzzles in 12 groups' in w[0]


def test_data_check_cli(small, tmp_path):
    r = _cli('data', 'check', str(small))
    assert r.returncode == 0, r.stderr
    assert 'train: 96 examples' in r.stdout and 'seq_len 81' in r.stdout and 'S' in r.stdout and 'G' in r.stdout
    d = _copy(small, tmp_path); _edit_json(d, seq_len=100)
    r = _cli('data', 'check', str(d))
    assert r.returncode != 0 and 'SeqLenMismatchError' in r.stderr and 'seq_len' in r.stderr
    r = _cli('data', 'check', str(tmp_path / 'nope'))
    assert r.returncode != 0 and 'MissingFileError' in r.stderr


# ---------------------------------------------------------------- maze generator
def _bfs_reference(grid):
    "Independent solver: plain-Python BFS over the text grid; returns (length, set of cells on some shortest path, count)."
    n = len(grid)
    cells = {(r, c) for r in range(n) for c in range(n) if grid[r][c] != '#'}
    s = next((r, c) for r in range(n) for c in range(n) if grid[r][c] == 'S')
    g = next((r, c) for r in range(n) for c in range(n) if grid[r][c] == 'G')
    def bfs(src):
        dist = {src: 0}; q = deque([src])
        while q:
            r, c = q.popleft()
            for nb in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if nb in cells and nb not in dist: dist[nb] = dist[(r, c)] + 1; q.append(nb)
        return dist
    ds, dg = bfs(s), bfs(g)
    return ds.get(g, -1), ds, dg


def test_labels_are_shortest_paths():
    for unique, lp in ((True, 0.03), (False, 0.15)):
        x, y = maze.generate_mazes(40, size=13, min_path_len=10, seed=5, loop_prob=lp, unique_path=unique)
        for xi, yi in zip(x, y):
            grid = maze.decode_maze(xi).split('\n'); lab = maze.decode_maze(yi).split('\n')
            L, ds, dg = _bfs_reference(grid)
            assert L >= 10
            path = {(r, c) for r in range(13) for c in range(13) if lab[r][c] == 'o'}
            assert len(path) == L - 1                               # exactly the inner cells of a shortest path
            assert all(ds[p] + dg[p] == L for p in path)            # each on a shortest path
            assert len({ds[p] for p in path}) == L - 1              # one cell per distance -> a single path
            assert all(grid[r][c] == ' ' for r, c in path)          # walls / S / G untouched
            assert [(a, b) for a, b in zip(''.join(grid), ''.join(lab)) if a != b and b != 'o'] == []
            assert maze.shortest_path_length(xi) == L
            np.testing.assert_array_equal(maze.solve_maze(xi), yi)  # deterministic tie-break
            if unique:
                assert sum(1 for p in ds if p in dg and ds[p] + dg[p] == L) == L + 1


def test_carved_mazes_are_perfect_and_seeded():
    "carve_mazes (all mazes at once): each maze is a spanning tree of its lattice (independent flood fill); seeded."
    rng = np.random.default_rng(11)
    for k in (2, 5, 8):
        g = maze.carve_mazes(40, k, rng); m = 2 * k - 1
        assert g.shape == (40, m, m)
        for x in g:
            assert x[::2, ::2].all() and not x[1::2, 1::2].any()          # lattice cells open, wall posts closed
            assert x.sum() == k * k + (k * k - 1)                          # k^2 cells + k^2-1 passages: a tree if connected
            seen = {(0, 0)}; q = deque([(0, 0)])
            while q:
                r, c = q.popleft()
                for nb in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                    if 0 <= nb[0] < m and 0 <= nb[1] < m and x[nb] and nb not in seen: seen.add(nb); q.append(nb)
            assert len(seen) == x.sum()
        assert len({x.tobytes() for x in g}) == 40 or k == 2
    a = maze.generate_walls(30, 12, 3); b = maze.generate_walls(30, 12, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, maze.generate_walls(30, 12, 4))
    assert {(int(np.argmax(w.any(1))), int(np.argmax(w.any(0)))) for w in maze.generate_walls(200, 12, 0, loop_prob=0)} == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_shortest_path_length_shapes():
    x, _ = maze.generate_mazes(3, size=9, min_path_len=6, seed=1)
    a = maze.shortest_path_length(x)
    assert a.shape == (3,) and (a >= 6).all()
    assert maze.shortest_path_length(x[0].reshape(9, 9)) == a[0]
    assert (maze.shortest_path_length(x.reshape(3, 9, 9)) == a).all()


def test_aug8_is_dihedral_group():
    x, y = maze.generate_mazes(3, size=11, min_path_len=8, seed=2)
    a = maze.augment_dihedral(x, y)
    n = 11
    X, Y = a['inputs'].reshape(3, 8, n, n), a['labels'].reshape(3, 8, n, n)
    for m in range(3):
        assert len({X[m, t].tobytes() for t in range(8)}) == 8      # 8 distinct transforms
        for t in range(8):
            np.testing.assert_array_equal(inverse_dihedral_transform(X[m, t], t), x[m].reshape(n, n))
            np.testing.assert_array_equal(inverse_dihedral_transform(Y[m, t], t), y[m].reshape(n, n))
            np.testing.assert_array_equal(dihedral_transform(x[m].reshape(n, n), t), X[m, t])
            # label is still a shortest path of the transformed maze
            assert (Y[m, t] == maze.PATH).sum() + 1 == maze.shortest_path_length(X[m, t])
    np.testing.assert_array_equal(a['group_indices'], [0, 8, 16, 24])
    np.testing.assert_array_equal(a['puzzle_indices'], np.arange(25))
    assert (a['puzzle_identifiers'] == 0).all()


def test_build_layout_and_test_not_augmented(small):
    s = hrm.check_dataset(small)
    assert (s['train']['examples'], s['train']['puzzles'], s['train']['groups']) == (96, 96, 12)
    assert (s['test']['examples'], s['test']['groups']) == (5, 5)
    md = s['train']['metadata']
    assert (md['vocab_size'], md['seq_len'], md['num_puzzle_identifiers'], md['mean_puzzle_examples'], md['total_puzzles']) == (6, 81, 1, 1, 12)
    tr = {r.tobytes() for r in np.load(small / 'train' / 'all__inputs.npy')}
    assert not tr & {r.tobytes() for r in np.load(small / 'test' / 'all__inputs.npy')}   # no test maze in train


def test_determinism(tmp_path):
    for d in ('a', 'b'):
        maze.build_maze_dataset(tmp_path / d, num_train=5, num_test=3, size=9, min_path_len=8, seed=7, aug=True, subsample_size=4, progress=False)
    for split in ('train', 'test'):
        for f in hrm.FIELDS:
            np.testing.assert_array_equal(np.load(tmp_path / 'a' / split / f'all__{f}.npy'), np.load(tmp_path / 'b' / split / f'all__{f}.npy'))
    maze.build_maze_dataset(tmp_path / 'c', num_train=5, num_test=3, size=9, min_path_len=8, seed=8, progress=False)
    assert not np.array_equal(np.load(tmp_path / 'a' / 'test' / 'all__inputs.npy'), np.load(tmp_path / 'c' / 'test' / 'all__inputs.npy'))


def test_atomic_build(tmp_path, monkeypatch):
    out = tmp_path / 'ds'
    maze.build_maze_dataset(out, num_train=4, num_test=2, size=7, min_path_len=4, seed=0, progress=False)
    before = np.load(out / 'train' / 'all__inputs.npy')
    def boom(*a, **k): raise RuntimeError('disk full')
    monkeypatch.setattr(hrm, 'write_split', boom)
    with pytest.raises(RuntimeError):
        maze.build_maze_dataset(out, num_train=4, num_test=2, size=7, min_path_len=4, seed=1, progress=False)
    np.testing.assert_array_equal(np.load(out / 'train' / 'all__inputs.npy'), before)   # earlier dataset intact
    with pytest.raises(RuntimeError):
        maze.build_maze_dataset(tmp_path / 'new', num_train=4, num_test=2, size=7, min_path_len=4, seed=1, progress=False)
    assert not (tmp_path / 'new').exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ds']                          # no temp dirs left


def test_build_maze_cli_seed_command(tmp_path):
    out = tmp_path / 'maze-aug8'
    r = _cli('build-maze', 'preprocess-data', '--output-dir', str(out), '--subsample-size', '6', '--aug',
             '--num-train', '10', '--num-test', '3', '--size', '9', '--min-path-len', '8', '--quiet')
    assert r.returncode == 0, r.stderr
    s = hrm.check_dataset(out)
    assert s['train']['examples'] == 48 and s['train']['groups'] == 6 and s['test']['examples'] == 3
    # re-pack aug8 from an existing (HRM-format) source, subsampled
    r = _cli('build-maze', '--source-dir', str(out), '--output-dir', str(tmp_path / 'again'), '--aug', '--subsample-size', '6', '--quiet')
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(tmp_path / 'again' / 'train' / 'all__inputs.npy'), np.load(out / 'train' / 'all__inputs.npy'))


def test_source_csv(tmp_path):
    x, y = maze.generate_mazes(4, size=9, min_path_len=6, seed=3)
    src = tmp_path / 'src'; src.mkdir()
    for split, sl in (('train', slice(0, 3)), ('test', slice(3, 4))):
        rows = ['source,question,answer,rating'] + [f'gen,{maze.decode_maze(a).replace(chr(10), "")},{maze.decode_maze(b).replace(chr(10), "")},0'
                                                    for a, b in zip(x[sl], y[sl])]
        (src / f'{split}.csv').write_text('\n'.join(rows) + '\n')
    maze.build_maze_dataset(tmp_path / 'out', source_dir=src, aug=True, progress=False)
    got = np.load(tmp_path / 'out' / 'train' / 'all__inputs.npy')
    assert got.shape == (24, 81)
    np.testing.assert_array_equal(got[::8], x[:3])


def test_render(tmp_path):
    x, y = maze.generate_mazes(1, size=9, min_path_len=6, seed=0)
    pred = y[0].copy(); pred[np.nonzero(y[0] == maze.PATH)[0][0]] = maze.OPEN
    p = maze.save_maze_figure(tmp_path / 'f' / 'm.png', x[0], label=y[0], prediction=pred, halting_steps=np.arange(81))
    assert p.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    import matplotlib.pyplot as plt
    fig, axes = maze.render_maze(x[0], label=y[0]); assert len(axes) == 2; plt.close(fig)


# ---------------------------------------------------------------- datamodule / sampler
def test_batch_dict_and_ignore(tmp_path):
    x = np.array([[1, 2, 3, 0]] * 4); y = np.array([[0, 2, 3, 1]] * 4)
    hrm.write_dataset(tmp_path / 'd', {'train': {'inputs': x, 'labels': y}, 'test': {'inputs': x, 'labels': y}}, vocab_size=4)
    from halting_lab.data.datamodule import PuzzleDataModule
    dm = PuzzleDataModule(tmp_path / 'd', batch_size=4, seed=0)
    b = next(iter(dm.train_dataloader()))
    assert set(b) == {'inputs', 'labels', 'puzzle_identifiers', 'index'}
    assert (b['labels'][:, 0] == -100).all() and (b['labels'][:, 3] == 1).all()
    assert sorted(b['index'].tolist()) == [0, 1, 2, 3]


def test_sampler_resume_mid_epoch(small):
    import torch
    from halting_lab.data.datamodule import PuzzleDataModule, ResumableRandomSampler
    dm = PuzzleDataModule(small, batch_size=10, seed=3); dl = dm.train_dataloader()
    dm.train_sampler.set_epoch(1)
    full = [b['index'] for b in dl]
    dm2 = PuzzleDataModule(small, batch_size=10, seed=3); dl2 = dm2.train_dataloader()
    dm2.train_sampler.set_epoch(1); it = iter(dl2)
    first = [next(it)['index'] for _ in range(3)]
    state = dm2.train_sampler.state_dict(); assert state == {'seed': 3, 'epoch': 1, 'num_yielded': 30, 'n': 96}
    dm3 = PuzzleDataModule(small, batch_size=10, seed=3); dl3 = dm3.train_dataloader()
    dm3.train_sampler.load_state_dict(state)
    rest = [b['index'] for b in dl3]
    assert torch.equal(torch.cat(first + rest), torch.cat(full))
    assert sorted(torch.cat(full).tolist()) == list(range(96))
    s = ResumableRandomSampler(96, 3); s.set_epoch(2)
    assert list(s) != torch.cat(full).tolist()                      # other epoch, other order
    with pytest.raises(Exception): ResumableRandomSampler(95, 3).load_state_dict(state)


def test_subsample(small):
    from halting_lab.data.datamodule import PuzzleDataModule
    dm = PuzzleDataModule(small, batch_size=4, subsample=10, seed=0); dm.setup('fit')
    assert len(dm.train_dataset) == 10
    idx = sorted(int(b['index'][i]) for b in dm.train_dataloader() for i in range(len(b['index'])))
    assert len(set(idx)) == 10 and max(idx) < 96


# ---------------------------------------------------------------- issue 19: files cut short, object arrays, splits that disagree
def _bytes(d, split, field): return d / split / f'all__{field}.npy'

MORE_BAD = {
    'truncated_body':   (hrm.TruncatedFileError, ['train/all__inputs.npy', "'inputs'", 'truncated'],
                         lambda d: _bytes(d, 'train', 'inputs').write_bytes(_bytes(d, 'train', 'inputs').read_bytes()[:-7])),
    'truncated_header': (hrm.TruncatedFileError, ['test/all__labels.npy', 'header'],
                         lambda d: _bytes(d, 'test', 'labels').write_bytes(_bytes(d, 'test', 'labels').read_bytes()[:30])),
    'empty_file':       (hrm.TruncatedFileError, ['train/all__group_indices.npy', 'not a .npy'],
                         lambda d: _bytes(d, 'train', 'group_indices').write_bytes(b'')),
    'object_array':     (hrm.WrongDtypeError, ['train/all__labels.npy', 'dtype object'],
                         lambda d: np.save(_bytes(d, 'train', 'labels'), np.array([None, 1], dtype=object), allow_pickle=True)),
    'empty_test':       (hrm.EmptySplitError, ['test/all__inputs.npy', '0 examples'],
                         lambda d: hrm.write_split(d / 'test', {'inputs': np.zeros((0, 81)), 'labels': np.zeros((0, 81))}, vocab_size=6)),
    'test_seq_len':     (hrm.SeqLenMismatchError, ['test/dataset.json', "'seq_len' is 25", 'train/dataset.json'],
                         lambda d: hrm.write_split(d / 'test', {'inputs': np.ones((3, 25)), 'labels': np.ones((3, 25))}, vocab_size=6)),
    'test_vocab':       (hrm.SplitMismatchError, ['test/dataset.json', "'vocab_size' is 8"],
                         lambda d: hrm.write_split(d / 'test', {'inputs': np.ones((3, 81)), 'labels': np.ones((3, 81))}, vocab_size=8)),
    'test_ids':         (hrm.SplitMismatchError, ["'puzzle_identifiers' has id 3", 'num_puzzle_identifiers of train/dataset.json (1)'],
                         lambda d: hrm.write_split(d / 'test', {'inputs': np.ones((3, 81)), 'labels': np.ones((3, 81)),
                                                                'puzzle_identifiers': np.array([3, 3, 3])}, vocab_size=6)),
    'missing_test':     (hrm.MissingFileError, ['test/dataset.json', 'missing'], lambda d: __import__('shutil').rmtree(d / 'test')),
    'bad_task':         (hrm.DatasetFormatError, ['train/dataset.json', "'task'"], lambda d: _edit_json(d, task=3)),
}

@pytest.mark.parametrize('case', list(MORE_BAD))
def test_more_named_errors(small, tmp_path, case):
    err, needles, corrupt = MORE_BAD[case]
    d = _copy(small, tmp_path); corrupt(d)
    with pytest.raises(err) as ei: hrm.check_dataset(d)
    for n in needles: assert n in str(ei.value), str(ei.value)
    assert 'expected' in str(ei.value)


def test_task_field_is_optional(small, tmp_path):
    "Newer builders record `task` in dataset.json; datasets without it read and validate the same."
    d = _copy(small, tmp_path)
    assert hrm.read_metadata(d / 'train').task in (None, 'maze')
    _edit_json(d, task='maze')
    assert hrm.read_metadata(d / 'train').task == 'maze'
    assert hrm.validate_dataset(d)['train']['metadata']['task'] == 'maze'


def test_datamodule_validates_both_splits_first(small, tmp_path):
    "A broken test split stops the DataModule's setup (before any training step), naming the file."
    from halting_lab.data.datamodule import PuzzleDataModule
    d = _copy(small, tmp_path)
    np.save(_bytes(d, 'test', 'inputs'), np.load(_bytes(d, 'test', 'inputs')).astype(np.float32))
    dm = PuzzleDataModule(d, batch_size=8)
    with pytest.raises(hrm.WrongDtypeError, match="test/all__inputs.npy: field 'inputs' has dtype float32"): dm.setup('fit')
