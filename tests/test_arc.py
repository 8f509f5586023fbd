"""ARC (seed 001, data + TRM part): builder, augmentation inverses, voting, metrics, sources, errors.

The official TRM builder's code is not vendored; instead a dataset is written by hand in its exact
layout (np.stack'ed uint8 canvases, int32 index arrays, dataset.json without our `task` key,
identifiers.json / test_puzzles.json in the root) and must load, train and evaluate here.
Bit-identity with the official builder on all 800 ARC-AGI-1 tasks was checked by running both
(benchmarks/bench_arc.py build --official DIR).
"""
import json
import numpy as np
import pytest, torch

from halting_lab.core import HaltingLabError
from halting_lab.tasks import arc as A

T1 = {'train': [{'input': [[1, 0], [0, 1]], 'output': [[2, 0], [0, 2]]},
                {'input': [[3]], 'output': [[4]]}],
      'test': [{'input': [[1, 1, 0]], 'output': [[2, 2, 0]]}]}
T2 = {'train': [{'input': [[5, 5]], 'output': [[6]]}], 'test': [{'input': [[7]], 'output': [[8, 8]]}]}


# --- grids and canvas ---------------------------------------------------------------------------

@pytest.mark.parametrize('shape', [(1, 1), (30, 30), (2, 7), (30, 3), (13, 1)])
def test_canvas_round_trip(shape):
    g = np.random.default_rng(sum(shape)).integers(0, 10, shape).astype(np.uint8)
    c = A.grid_to_canvas(g)
    assert c.shape == (900,) and c.dtype == np.uint8
    np.testing.assert_array_equal(A.crop(c), g)
    h, w = shape
    cv = c.reshape(30, 30)
    if h < 30: assert (cv[h, :w] == A.EOS).all()          # EOS row below
    if w < 30: assert (cv[:h, w] == A.EOS).all()          # EOS column right
    assert (cv[h + 1:, :] == A.PAD).all() and (cv[:, w + 1:] == A.PAD).all()


def test_place_at_offset_keeps_border_inside_canvas():
    cv = A.place(np.zeros((30, 30), np.uint8), np.full((3, 4), 9, np.uint8), 27, 26)
    assert (cv[27:30, 26:30] == 11).all() and (cv == 1).sum() == 0    # grid touches both edges: no EOS


# --- augmentation ------------------------------------------------------------------------------

def test_every_augmentation_inverts_exactly_and_fixes_colour_0():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 10, (4, 6)).astype(np.uint8)
    for t in range(8):
        for _ in range(5):
            m = np.concatenate([[0], rng.permutation(np.arange(1, 10))]).astype(np.uint8)
            name = A.aug_name('abcd1234', t, m)
            assert A.parse_identifier(name) [0] == 'abcd1234'
            a = A.augment_grid(g, t, m)
            np.testing.assert_array_equal(A.invert_grid(a, name), g)
            assert (a[A.arc_dihedral(g, t) == 0] == 0).all()       # colour 0 stays 0
            assert set(np.unique(a[A.arc_dihedral(g, t) != 0])) <= set(range(1, 10))


def test_dihedral_ids_follow_the_official_numbering():
    g = np.arange(6).reshape(2, 3)
    expect = [g, np.rot90(g, 1), np.rot90(g, 2), np.rot90(g, 3), np.fliplr(g), np.flipud(g), g.T, np.fliplr(np.rot90(g, 1))]
    for t, e in enumerate(expect): np.testing.assert_array_equal(A.arc_dihedral(g, t), e)


def test_identifier_digits_are_new_colours():
    # digit i = new colour of colour i: an official identifier decodes with the official inverse
    name = 'x|||t4|||0213456789'
    np.testing.assert_array_equal(A.invert_grid(np.array([[2, 1, 0]], np.uint8), name), np.array([[0, 2, 1]]))
    with pytest.raises(HaltingLabError, match='10 digits'): A.parse_identifier('x|||t1|||012')


# --- voting and metrics ---------------------------------------------------------------------------

G = lambda *rows: np.array(rows, np.uint8)

def test_vote_frequency_then_confidence_then_first_seen():
    a, b, c = G([1]), G([2]), G([3, 3])
    r = A.vote([(a, .1), (b, .9), (a, .2), (c, .99)])
    assert [x[1] for x in r] == [2, 1, 1] and r[0][0].tolist() == [[1]]
    assert r[1][0].tolist() == [[3, 3]]                      # count tie: higher mean confidence first
    assert abs(r[0][2] - 0.15) < 1e-12                       # mean confidence of the voters
    r = A.vote([(b, .5), (a, .5)])
    assert [x[0].tolist() for x in r] == [[[2]], [[1]]]      # full tie: first seen first


def test_pass_at_2_and_pair_metrics():
    a, b = G([1, 2]), G([1, 5])
    m = A.pair_metrics(A.vote([(b, .9), (a, .1)]), a)
    assert (m['pass@1'], m['pass@2'], m['shape_match'], m['cell_accuracy']) == (0.0, 1.0, 1.0, 0.5)
    m = A.pair_metrics(A.vote([(G([1]), 0)]), a)
    assert (m['shape_match'], m['cell_accuracy']) == (0.0, 0.0)
    m = A.pair_metrics([], a)                                 # no prediction at all
    assert m == {'pass@1': 0.0, 'pass@2': 0.0, 'exact_match': 0.0, 'shape_match': 0.0, 'cell_accuracy': 0.0}


def _rec(tid, t, m, x, p, q=0.0, steps=3):
    tr = (lambda g: A.augment_grid(np.array(g, np.uint8), t, m)) if t is not None else (lambda g: np.array(g, np.uint8))
    return {'name': A.aug_name(tid, t, m) if t is not None else tid, 'input': A.grid_to_canvas(tr(x)),
            'pred': A.grid_to_canvas(tr(p)), 'q': q, 'steps': steps}


def test_vote_tasks_maps_back_and_aggregates():
    tp = {'t1': T1, 't2': {'train': T2['train'], 'test': [{'input': [[7]], 'output': [[8, 8]]}, {'input': [[9]], 'output': [[1]]}]}}
    m = np.array([0, 3, 2, 1, 4, 5, 6, 7, 8, 9], np.uint8)
    x1, y1 = T1['test'][0]['input'], T1['test'][0]['output']
    recs = [_rec('t1', 6, m, x1, y1, q=.2, steps=2), _rec('t1', 3, m, x1, [[0]], q=.9, steps=4),
            _rec('t1', 5, m, x1, [[0]], q=.1, steps=4), _rec('t1', None, None, x1, y1, q=.3, steps=2),
            _rec('t2', 7, m, [[7]], [[8, 8]]), _rec('t2', 2, m, [[9]], [[2]])]
    rows = {r['task']: r for r in A.vote_tasks(recs, tp)}
    # t1: right answer twice, wrong answer twice -> tie on count, broken by mean q: .25 (right) vs .5 (wrong)
    assert rows['t1']['pass@1'] == 0.0 and rows['t1']['pass@2'] == 1.0 and rows['t1']['aug_exact_match'] == 0.5
    assert rows['t2']['pass@1'] == 0.5 and rows['t2']['test_pairs'] == 2
    s = A.summarize(list(rows.values()), budget=4)
    assert s['pass@1'] == 0.25 and s['pass@2'] == 0.75                  # task-averaged (official)
    assert abs(s['exact_match'] - 1 / 3) < 1e-12                        # pooled over the 3 test pairs
    assert abs(s['avg_trm_steps'] - 3.0) < 1e-12 and abs(s['steps_saved'] - 1.0) < 1e-12


# --- sources -----------------------------------------------------------------------------------

def _write_dir(root, tasks):
    root.mkdir(parents=True, exist_ok=True)
    for k, v in tasks.items(): (root / f'{k}.json').write_text(json.dumps(v))
    return root


def test_user_directory_flat_and_subset_folders(tmp_path):
    flat = _write_dir(tmp_path / 'mine', {'aaa': T1, 'bbb': T2})
    assert set(A.load_subset(str(flat), 'all')) == {'aaa', 'bbb'}
    s = A.build_arc_dataset(tmp_path / 'out', str(flat), ['all'], 'all', num_aug=3, seed=0)
    assert s['tasks'] == 2 and s['test']['groups'] == 2 and s['test']['puzzles'] == 8
    nested = tmp_path / 'repo'
    _write_dir(nested / 'training', {'ccc': T1}); _write_dir(nested / 'evaluation', {'ddd': T2})
    s = A.build_arc_dataset(tmp_path / 'out2', str(nested), ['training', 'evaluation'], 'evaluation', num_aug=2, seed=0)
    assert s['train']['groups'] == 2 and s['test']['groups'] == 1
    with pytest.raises(HaltingLabError, match='no subset folder'): A.load_subset(str(nested), 'concept')


def test_kaggle_prefix_with_and_without_solutions(tmp_path, capsys):
    ch = {'aaa': {'train': T1['train'], 'test': [{'input': T1['test'][0]['input']}]}}
    (tmp_path / 'arc-agi_evaluation_challenges.json').write_text(json.dumps(ch))
    (tmp_path / 'arc-agi_training_challenges.json').write_text(json.dumps({'bbb': T2}))
    pre = str(tmp_path / 'arc-agi')
    assert A.load_kaggle(pre, 'evaluation')['aaa']['test'][0]['output'] == [[0]]     # dummy, as the official builder
    (tmp_path / 'arc-agi_evaluation_solutions.json').write_text(json.dumps({'aaa': [T1['test'][0]['output']]}))
    assert A.load_kaggle(pre, 'evaluation')['aaa']['test'][0]['output'] == T1['test'][0]['output']
    rc = A.build_arc_cli(['--input_file_prefix', pre, '--output_dir', str(tmp_path / 'd'), '--subsets', 'training',
                          'evaluation', '--test_set_name', 'evaluation', '--num_aug', '2', '--quiet'])
    assert rc == 0 and json.loads(capsys.readouterr().out)['tasks'] == 2
    tp = json.loads((tmp_path / 'd' / 'test_puzzles.json').read_text())
    assert list(tp) == ['aaa'] and tp['aaa']['test'][0]['output'] == T1['test'][0]['output']


@pytest.mark.parametrize('bad, msg', [
    ({'train': T1['train']}, "missing 'test'"),
    ({'train': [{'input': [[1, 2], [3]], 'output': [[1]]}], 'test': T1['test']}, 'ragged rows'),
    ({'train': T1['train'], 'test': [{'input': [[1, 10]], 'output': [[1]]}]}, 'colour 10'),
    ({'train': [{'input': [[1]]}], 'test': T1['test']}, "train\\[0\\] has no 'output'"),
])
def test_malformed_task_json_names_file_and_task(tmp_path, bad, msg):
    d = _write_dir(tmp_path / 'tasks', {'good0001': T1, 'bad00001': bad})
    with pytest.raises(HaltingLabError, match=msg) as e: A.load_task_dir(d)
    assert str(d / 'bad00001.json') in str(e.value) and 'task bad00001' in str(e.value)


def test_invalid_json_syntax_names_file(tmp_path):
    d = tmp_path / 't'; d.mkdir(); (d / 'x.json').write_text('{"train": [')
    with pytest.raises(HaltingLabError, match='x.json: invalid JSON'): A.load_task_dir(d)


# --- contamination guard -------------------------------------------------------------------------

def test_contamination_guard_arc2_training_vs_arc1_evaluation(tmp_path):
    args = dict(subsets=['training', 'arc1:evaluation'], test_set_name='arc1:evaluation', num_aug=0)
    with pytest.raises(HaltingLabError, match='376 test task\\(s\\).*--allow-overlap'):
        A.build_arc_dataset(tmp_path / 'x', 'arc2', **args)
    s = A.build_arc_dataset(tmp_path / 'y', 'arc2', allow_overlap=True, max_tasks=2, **args)
    assert len(s['overlap']) == 376 and not (tmp_path / 'x').exists()


def test_contamination_guard_user_dirs(tmp_path):
    _write_dir(tmp_path / 'r' / 'training', {'same': T1, 'other': T2}); _write_dir(tmp_path / 'r' / 'evaluation', {'same': T1})
    with pytest.raises(HaltingLabError, match='same \\(same task id'):
        A.build_arc_dataset(tmp_path / 'o', str(tmp_path / 'r'), ['training', 'evaluation'], 'evaluation', num_aug=0)
    _write_dir(tmp_path / 's' / 'training', {'renamed': T1}); _write_dir(tmp_path / 's' / 'evaluation', {'orig': T1})
    s = A.build_arc_dataset(tmp_path / 'o2', str(tmp_path / 's'), ['training', 'evaluation'], 'evaluation', num_aug=0)
    assert s['leaks'] == [['orig', 'renamed', 'same content']]      # reported, not fatal (ARC-AGI-1 has one)


# --- the written format, and an official-layout dataset ---------------------------------------------

def test_builder_output_format(tmp_path):
    s = A.build_arc_dataset(tmp_path / 'd', 'arc1', ['training', 'evaluation'], 'evaluation', num_aug=4, max_tasks=3, seed=1)
    root = tmp_path / 'd'
    ids = json.loads((root / 'identifiers.json').read_text())
    assert ids[0] == '<blank>' and len(ids) == s['num_puzzle_identifiers'] == 1 + 6 * 5
    assert all(A.parse_identifier(n)[0] in {i.split('|||')[0] for i in ids[1:]} for n in ids[1:])
    for split in ('train', 'test'):
        md = json.loads((root / split / 'dataset.json').read_text())
        assert md['task'] == 'arc' and md['vocab_size'] == 12 and md['seq_len'] == 900 and md['total_puzzles'] == s[split]['puzzles']
        assert md['num_puzzle_identifiers'] == len(ids) and md['sets'] == ['all']
        a = {f: np.load(root / split / f'all__{f}.npy') for f in ('inputs', 'labels', 'puzzle_identifiers', 'puzzle_indices', 'group_indices')}
        assert a['inputs'].dtype == a['labels'].dtype == np.uint8
        assert all(a[f].dtype == np.int32 for f in ('puzzle_identifiers', 'puzzle_indices', 'group_indices'))
        assert abs(md['mean_puzzle_examples'] - len(a['inputs']) / len(a['puzzle_identifiers'])) < 1e-12
        # each group: an original then its augmented copies
        for g in range(len(a['group_indices']) - 1):
            names = [ids[a['puzzle_identifiers'][p]] for p in range(a['group_indices'][g], a['group_indices'][g + 1])]
            assert '|||' not in names[0] and all(n.startswith(names[0] + '|||') for n in names[1:])
        if split == 'test':   # test grids top-left: cropping + inverting gives back the task's test inputs
            tp = json.loads((root / 'test_puzzles.json').read_text())
            for p, pid in enumerate(a['puzzle_identifiers']):
                n = ids[pid]
                for i in range(a['puzzle_indices'][p], a['puzzle_indices'][p + 1]):
                    x = A.invert_grid(A.crop(a['inputs'][i]), n); y = A.invert_grid(A.crop(a['labels'][i]), n)
                    assert any(np.array_equal(x, q['input']) and np.array_equal(y, q['output']) for q in tp[A.parse_identifier(n)[0]]['test'])


def _official_layout(root):
    "A dataset written the way the official builder writes one (no `task` key, compact JSON, np.stack)."
    tasks = {'aaa': T1, 'bbb': T2}
    names = ['<blank>', 'aaa', 'aaa|||t1|||0213456789', 'bbb', 'bbb|||t5|||0987654321']
    ident = {n: i for i, n in enumerate(names)}
    def split(kind, translate):
        inputs, labels, pid, pidx, gidx = [], [], [], [0], [0]
        for tid in tasks:
            for n in [x for x in names if x.split('|||')[0] == tid]:
                _, t, m = A.parse_identifier(n)
                for k, pair in enumerate(tasks[tid][kind]):
                    x, y = (A.augment_grid(np.array(pair[g], np.uint8), t, m) for g in ('input', 'output'))
                    r = 1 if translate and k else 0
                    inputs.append(A.grid_to_canvas(x, r, r)); labels.append(A.grid_to_canvas(y, r, r))
                pidx.append(len(inputs)); pid.append(ident[n])
            gidx.append(len(pid))
        d = root / ('train' if translate else 'test'); d.mkdir(parents=True)
        for k, v in dict(inputs=np.stack(inputs), labels=np.stack(labels), puzzle_identifiers=np.array(pid, np.int32),
                         puzzle_indices=np.array(pidx, np.int32), group_indices=np.array(gidx, np.int32)).items():
            np.save(d / f'all__{k}.npy', v)
        (d / 'dataset.json').write_text(json.dumps(dict(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=12,
            seq_len=900, num_puzzle_identifiers=len(names), total_groups=len(gidx) - 1,
            mean_puzzle_examples=len(inputs) / len(pid), total_puzzles=len(pid), sets=['all'])))
    split('train', True); split('test', False)
    (root / 'identifiers.json').write_text(json.dumps(names)); (root / 'test_puzzles.json').write_text(json.dumps(tasks))
    return root


def test_official_layout_trains(tmp_path, monkeypatch):
    monkeypatch.setenv('HALTING_LAB_RUNS', str(tmp_path / 'runs'))
    root = _official_layout(tmp_path / 'official')
    from halting_lab.train.run import train
    res = train(model_type='trm', task='arc', data_dir=str(root), default_root_dir=str(tmp_path / 'run'), max_epochs=1,
                batch_size=4, limit_train_batches=1, limit_val_batches=1, progress_bar=False, hidden_size=16, num_heads=2,
                H_cycles=1, L_cycles=1, halt_max_steps=2, puzzle_emb_ndim=16, puzzle_emb_len=1, seed=0)
    assert res['status'] == 'finished' and (tmp_path / 'run' / 'checkpoints' / 'last.ckpt').exists()


def test_official_layout_loads_and_evaluates_with_a_perfect_model(tmp_path):
    root = _official_layout(tmp_path / 'official')
    ids, tp = A.read_arc_meta(root)
    assert ids[2] == 'aaa|||t1|||0213456789'
    from halting_lab.registry import dataset_task, recorded_task
    assert recorded_task(root) is None and dataset_task(root) == 'arc'   # recognised by test_puzzles.json
    dm = A.arc_datamodule({'data_dir': str(root), 'batch_size': 2}); dm.setup('fit')
    b = next(iter(dm.train_dataloader()))
    assert b['inputs'].shape == (2, 900) and dm.num_puzzle_identifiers == 5

    class Oracle(torch.nn.Module):   # answers with the stored labels: pass@1 must be 1 after the inverse maps
        def __init__(self, x, y): super().__init__(); self.table = {bytes(a): b for a, b in zip(x, y)}
        def forward(self, batch):
            from halting_lab.core import HaltingOutput
            lab = np.stack([self.table[bytes(r)] for r in batch['inputs'].numpy().astype(np.uint8)])
            logits = torch.nn.functional.one_hot(torch.as_tensor(lab.astype(np.int64)), 12).float()
            return HaltingOutput(logits=logits, halting_steps=torch.ones(lab.shape))
    x, y, *_ = A.split_examples(root)
    res = A.evaluate_arc(tmp_path / 'ck' / 'last.ckpt', root, model=Oracle(x, y), device='cpu')
    assert res['pass@1'] == res['exact_match'] == res['cell_accuracy'] == 1.0 and res['aug_exact_match'] == 1.0
    assert (tmp_path / 'ck' / 'eval_results.json').exists() and (tmp_path / 'ck' / 'eval_per_task.csv').exists()
    assert A.evaluate_arc(tmp_path / 'ck' / 'last.ckpt', root, num_samples=1, model=Oracle(x, y), device='cpu')['tasks'] == 1


def test_not_an_arc_dataset(tmp_path):
    with pytest.raises(HaltingLabError, match='identifiers.json: missing'): A.read_arc_meta(tmp_path)
    with pytest.raises(HaltingLabError, match='--data_dir: required'): A.arc_datamodule({'batch_size': 2})


def test_registered_task_and_verbs():
    from halting_lab import registry
    spec = registry.get_task('arc')
    assert spec.builder == 'build-arc' and spec.charset == A.ARC_CHARSET and spec.kind == 'puzzle'
    assert registry.get_command('arc-eval').fn is A.arc_eval_cli
    assert spec.evaluator is A.arc_eval_cli and spec.recognizes is A.is_arc_dataset
    assert registry.find_command('build-arc') is not None


# --- end to end: build -> train (TRM, 1 batch) -> arc-eval CLI ---------------------------------------

@pytest.mark.timeout(300)
def test_train_and_arc_eval_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('HALTING_LAB_RUNS', str(tmp_path / 'runs'))
    from halting_lab.cli import main
    assert main(['build-arc', '--source', 'arc1', '--subsets', 'evaluation', '--test_set_name', 'evaluation',
                 '--num_aug', '2', '--max_tasks', '2', '--max_size', '10', '--output_dir', str(tmp_path / 'd'), '--quiet']) == 0
    from halting_lab.train.run import train
    run = tmp_path / 'runs' / 'arc_tiny'
    train(model_type='trm', task='arc', data_dir=str(tmp_path / 'd'), default_root_dir=str(run), max_epochs=1, batch_size=4,
          limit_train_batches=2, limit_val_batches=1, progress_bar=False, hidden_size=16, num_heads=2, H_cycles=1, L_cycles=1,
          halt_max_steps=2, puzzle_emb_ndim=16, puzzle_emb_len=1, learning_rate=1e-3, seed=0)
    ck = run / 'checkpoints' / 'last.ckpt'
    capsys.readouterr()
    assert main(['arc-eval', '--ckpt', str(ck), '--data_dir', str(tmp_path / 'd'), '--device', 'cpu', '--halting', 'q']) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res['tasks'] == 2 and res['halting'] == 'q' and 1 <= res['avg_trm_steps'] <= 2 and res['step_budget'] == 2
    saved = json.loads((ck.parent / 'eval_results.json').read_text())
    assert len(saved['per_task']) == 2 and 0.0 <= saved['pass@2'] <= 1.0
    # plain `halting-lab eval` on an ARC dataset (test_puzzles.json) hands off to arc-eval: voting, same numbers
    out = tmp_path / 'plain.json'
    assert main(['eval', '--ckpt', str(ck), '--data_dir', str(tmp_path / 'd'), '--device', 'cpu', '--halting', 'q',
                 '--output', str(out)]) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    drop = lambda d: {k: v for k, v in d.items() if k not in ('output', 'wall_s')}
    assert drop(plain) == drop(res) and json.loads(out.read_text())['pass@2'] == saved['pass@2']
    # eval's flags mean the same in arc-eval (the task's registered evaluator gets eval's argv unchanged)
    a = A.arc_eval_parser().parse_args(['--ckpt', 'c', '--data_dir', 'd', '--limit', '1', '--halt_max_steps', '3',
                                        '--no_ema', '--batch_size', '8'])
    assert (a.num_samples, A._arc_budget(a), a.no_ema, a.batch_size, a.device) == (1, 3, True, 8, 'auto')
    assert main(['eval', '--ckpt', str(ck), '--data_dir', str(tmp_path / 'd'), '--split', 'train']) != 0
    assert '--split train: an ARC dataset' in capsys.readouterr().err


def test_slurm_template_matches_the_recipe():
    import shlex
    from pathlib import Path
    from halting_lab.train.recipes import recipe_argv
    from halting_lab.train.config import parse_train_args
    text = (Path(__file__).parent.parent / 'slurm' / 'arc_pretrain.sbatch').read_text()
    block = text.split('halting-lab train \\\n', 1)[1].split('\n\n', 1)[0]
    argv = shlex.split(block.replace('\\\n', ' ').replace('"$DATA_DIR"', A.ARC_RECIPE['data_dir']))
    expect = recipe_argv({**A.ARC_RECIPE, 'devices': '4', 'batch_size': A.ARC_RECIPE['batch_size'] // 4})
    assert argv == expect
    parse_train_args(argv)
    assert ' '.join(A.build_argv(A.ARC_DATA, 'X')[1:]).replace('X', '"$DATA_DIR"') in text


# --- sparse puzzle embedding (models/sparse_emb) --------------------------------------------------

def test_sparse_embedding_matches_dense_update_on_touched_rows_only():
    from halting_lab.models.sparse_emb import SparseEmbedding, SparseSignSGD, dense_signsgd_reference
    torch.manual_seed(0)
    emb = SparseEmbedding(100, 6, init_std=1.0); start = emb.weight.detach().clone()
    ids = [torch.tensor([5, 9, 9, 60, 99]), torch.tensor([[9, 1], [5, 5]])]    # repeats, 2-D ids, two forwards
    proj = torch.randn(6)
    loss = lambda es: sum((e @ proj).sin().sum() for e in es)
    ref = dense_signsgd_reference(start, ids, loss, lr=0.05, wd=0.2)
    opt = SparseSignSGD([emb], lr=0.05, weight_decay=0.2)
    emb.train(); loss([emb(i) for i in ids]).backward(); opt.step()
    touched = torch.tensor([1, 5, 9, 60, 99])
    torch.testing.assert_close(emb.weight[touched], ref[touched])
    rest = torch.ones(100, dtype=torch.bool); rest[touched] = False
    assert torch.equal(emb.weight[rest], start[rest]) and emb.weight.grad is None
    assert emb.weight.sparse_pending == [] and emb.weight.sparse_last_rows.tolist() == touched.tolist()
    opt.step()                                                                  # nothing recorded: no change
    torch.testing.assert_close(emb.weight[touched], ref[touched])
    emb.eval(); emb(torch.tensor([3]))
    assert emb.weight.sparse_pending == []                                      # eval forwards are not recorded
