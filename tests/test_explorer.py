"""The halting-step explorer on every trainable model family, end to end without a browser.

For each model type that `halting-lab train` trains on HRM-format grids (act_rnn, universal_transformer, trm: all give
per-position outputs), a tiny model is trained for one batch on generated 7x7 mazes, so that the checkpoint is written
exactly as training writes it; the explorer then loads it through `halting_lab.load_checkpoint` (the cache's default
loader), runs its inference, checks shapes and values against the model's own forward pass, writes the static panels
and drives the widget.
"""
import numpy as np
import pytest, torch

TINY = dict(max_epochs=1, batch_size=16, limit_train_batches=1, limit_val_batches=1, learning_rate=1e-3, progress_bar=False, seed=0)
FAMILY = {'act_rnn': dict(hidden_size=16, time_limit=4),
          'universal_transformer': dict(hidden_size=16, ut_embedding_size=16, ut_heads=2, ut_key_depth=16, ut_value_depth=16,
                                        ut_filter_size=16, ut_max_hops=3, ut_act=True),
          'trm': dict(hidden_size=16, H_cycles=1, L_cycles=1, halt_max_steps=3, puzzle_emb_ndim=0)}
STEP_BUDGET = ('halt_max_steps', 'ut_max_hops')   # config field of the max steps (canonical name first)
N_TEST, SIDE = 12, 7

def _train_model_types():
    "The built-in grid families that are registered (plugin models: tests/test_plugin.py)."
    from halting_lab.registry import trainable_models
    return [mt for mt in trainable_models() if mt in FAMILY]

@pytest.fixture(scope='module')
def maze_dir(tmp_path_factory):
    from halting_lab.tasks.maze import build_maze_dataset
    d = tmp_path_factory.mktemp('data') / 'maze7'
    build_maze_dataset(d, num_train=32, num_test=N_TEST, size=SIDE, seed=0, progress=False)
    return d

@pytest.mark.timeout(300)
@pytest.mark.parametrize('model_type', _train_model_types())
def test_explorer_on_trained_checkpoint(model_type, maze_dir, tmp_path, monkeypatch):
    assert model_type in FAMILY, f'no tiny config for model_type {model_type!r}: add one to FAMILY'
    monkeypatch.setenv('HALTING_LAB_RUNS', str(tmp_path / 'runs'))
    monkeypatch.setenv('MPLBACKEND', 'Agg')
    import halting_lab
    from halting_lab.core import model_class
    from halting_lab.train.run import train
    from halting_lab.viewers import explorer as X
    run = tmp_path / 'runs' / f'{model_type}_tiny'
    train(model_type=model_type, data_dir=str(maze_dir), default_root_dir=str(run), **TINY, **FAMILY[model_type])
    ck = run / 'checkpoints' / 'last.ckpt'
    model = halting_lab.load_checkpoint(ck)
    assert type(model) is model_class(model_type)
    budget = int(next(getattr(model.config, f) for f in STEP_BUDGET if hasattr(model.config, f)))

    # inference through the cache (default loader = halting_lab.load_checkpoint), progress reported per batch
    seen = []
    res = X.InferenceCache(disk=False).get(ck, maze_dir, 'test', device='cpu', batch_size=5, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(0, N_TEST), (5, N_TEST), (10, N_TEST), (N_TEST, N_TEST)]
    L = SIDE * SIDE
    assert res.inputs.shape == res.labels.shape == res.preds.shape == res.halting_steps.shape == (N_TEST, L)
    assert res.meta['checkpoint'] == str(ck) and res.meta['device'] == 'cpu' and res.meta['vocab_size'] == 6
    S = res.num_steps
    assert 1 <= S <= budget and res.step_preds.shape == (N_TEST, S, L)
    nonpad = res.inputs != 0
    assert nonpad.all()                                              # 7x7 mazes fill the grid
    assert (res.halting_steps[nonpad] >= 1).all() and (res.halting_steps <= budget).all(), (res.halting_steps.min(), res.halting_steps.max(), budget)
    assert set(np.unique(res.preds)) <= set(range(6))
    if res.halt_cumprob is not None:
        hc = res.halt_cumprob.astype(np.float32)
        assert hc.shape == (N_TEST, S, L) and (hc >= -1e-3).all() and (hc <= 1 + 1e-3).all()
        assert (np.diff(hc, axis=1) >= -1e-2).all()                  # cumulative: never decreases over steps
    s = res.summary()
    assert s['n'] == N_TEST and 0 <= s['exact_acc'] <= 1 and 1 <= s['mean_halting'] <= budget
    assert res.accuracy_by_budget().shape == (S,)

    # the explorer's numbers are the model's own: same final prediction and halting steps as a direct forward pass
    split = X.load_split(maze_dir, 'test')
    with torch.no_grad():
        out = model.eval()(X.make_batch(split['inputs'][:5], split['labels'][:5]), return_steps=True)
    np.testing.assert_array_equal(res.preds[:5], out.logits.argmax(-1).numpy())
    np.testing.assert_allclose(res.halting_steps[:5], out.halting_steps.float().numpy(), atol=1e-5)

    # static panels, into the run (what executed notebooks and the docs show)
    files = X.show_static(res)
    out_dir = run / 'figures' / 'halting_explorer' / 'last-test'
    assert {f.parent for f in files} == {out_dir}
    names = {f.name for f in files}
    assert {'halting_dataset.png', 'halting_dataset.html'} <= names
    assert {f'halting_example_{i}.png' for i in X.static_indices(res)} <= names
    for f in files:
        assert f.stat().st_size > 1000, f
        if f.suffix == '.png': assert f.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
        else: assert 'plotly' in f.read_text()[:3_000_000].lower()

    # the widget on the run: picks it, loads on the chosen device, sliders redraw the halting map of the example shown
    ex = X.HaltingExplorer(runs_dir=run.parent, run=run, device='cpu', cache=X.InferenceCache(disk=False))
    assert ex.w_run.value == str(run) and ex.res is not None and ex.res.n == N_TEST
    assert ex.w_progress.value == ex.w_progress.max == N_TEST and model_type in ex.w_status.value
    for i in (0, N_TEST - 1):
        ex.w_sample.value = i
        np.testing.assert_array_equal(np.asarray(ex.fig.data[3].z).ravel(), res.halting_steps[i])   # trace 3: halting steps
        np.testing.assert_array_equal(np.asarray(ex.fig.data[0].z).ravel(), res.inputs[i].astype(np.float32))
    ex.w_step.value = 1
    np.testing.assert_array_equal(np.asarray(ex.fig.data[4].z).ravel(), res.step_preds[N_TEST - 1, 0].astype(np.float32))
