"Robot ACT policy (seed 004): LeRobot v3.0 validation checklist, policy, exact kill/resume, retention, REPORT."

import os, shutil, json, signal

os.environ.setdefault('OMP_NUM_THREADS', '1')
from pathlib import Path
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from halting_lab.core import HaltingLabError, load_json
from halting_lab.tasks.lerobot import (
    make_synthetic,
    validate_dataset,
    break_dataset,
    blocked_message,
    LeRobotData,
    ValidationFailed,
    CHECKS,
    DATA_PATH,
    EPISODES_PATH,
)
from halting_lab.models.act_policy import ACTPolicy, ACTConfig, TemporalEnsembler, SEED_004_PRESET
from halting_lab.train.robot import (
    robot_cli,
    run_robot,
    robot_params,
    parse_report,
    parse_handoff,
    split_messages,
    epoch_losses,
    fit_local,
    split_params,
)

torch.set_num_threads(1)
TINY = dict(
    dim_model=32,
    n_heads=4,
    dim_feedforward=64,
    n_encoder_layers=1,
    n_decoder_layers=1,
    n_vae_encoder_layers=1,
    latent_dim=8,
    chunk_size=4,
    n_action_steps=4,
    image_height=32,
    image_width=32,
    dropout=0.1,
)


@pytest.fixture(scope='module')
def base50(tmp_path_factory):
    "A valid 50-episode synthetic dataset (short episodes, 64x48 frames)."
    return make_synthetic(tmp_path_factory.mktemp('lr') / 'ds50', n_episodes=50, length=6, seed=3)


@pytest.fixture
def ds(base50, tmp_path):
    "A private copy of the 50-episode dataset, to break."
    return Path(shutil.copytree(base50, tmp_path / 'ds'))


# ----------------------------------------------------------------------------------- the layout
def test_layout_matches_lerobot_v3(base50):
    info = load_json(base50 / 'meta/info.json')
    assert info['codebase_version'] == 'v3.0' and info['fps'] == 30 and info['total_episodes'] == 50
    assert info['data_path'] == DATA_PATH
    f = info['features']['observation.images.ego']
    assert (
        f['dtype'] == 'video'
        and f['shape'] == [48, 64, 3]
        and f['names'] == ['height', 'width', 'channels']
    )
    assert f['info']['video.fps'] == 30
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(base50 / 'data/chunk-000/file-000.parquet')
    assert pf.metadata.num_row_groups == 50  # one row group per episode
    assert set(pf.schema_arrow.names) == {
        'observation.state',
        'action',
        'timestamp',
        'frame_index',
        'episode_index',
        'index',
        'task_index',
    }
    eps = pq.read_table(base50 / EPISODES_PATH).column_names
    for c in (
        'episode_index',
        'length',
        'tasks',
        'dataset_from_index',
        'dataset_to_index',
        'videos/observation.images.ego/from_timestamp',
        'videos/observation.images.ego/to_timestamp',
    ):
        assert c in eps
    assert (
        len(list((base50 / 'videos/observation.images.ego/chunk-000').glob('*.mp4'))) == 1
    )  # all episodes, one mp4


def test_valid_dataset_passes(base50):
    rep = validate_dataset(base50)  # default --min-episodes 50
    assert rep.ok, [f.message for f in rep.failures]
    assert rep.n_episodes == 50 and all(v == 0 for v in rep.by_check().values())


# ----------------------------------------------------------------------------------- the checklist
def _only(rep, check):
    assert not rep.ok
    assert {f.check for f in rep.failures} == {check}, [(f.check, f.message) for f in rep.failures]
    return rep.failures


def test_min_episodes(base50):
    fs = _only(validate_dataset(base50, min_episodes=51), 'episodes')
    assert fs[0].field == 'total_episodes' and '50' in fs[0].message and '51' in fs[0].message
    assert '에피소드 수 부족 (50개, 최소 51개)' in blocked_message(
        validate_dataset(base50, min_episodes=51)
    )


@pytest.mark.parametrize(
    'how,check,field',
    [
        ('frame_count', 'frame_count', 'observation.images.ego'),
        ('action_range', 'action_range', 'action'),
        ('nan_state', 'finite', 'observation.state'),
        ('inf_action', 'finite', 'action'),
    ],
)
def test_per_episode_breaks(ds, how, check, field):
    break_dataset(ds, how, episode=7)
    fs = _only(validate_dataset(ds), check)
    assert [(f.episode, f.field) for f in fs] == [(7, field)]
    assert 'episode_007' in fs[0].message


def test_frame_count_message_like_seed(ds):
    break_dataset(ds, 'frame_count', episode=23)
    rep = validate_dataset(ds)
    ep = next(e for e in LeRobotData(ds).episodes() if e['episode_index'] == 23)
    n = ep['length']
    assert (
        f'episode_023의 프레임 수 불일치 (비디오 {n}프레임, 액션 {n - 1}프레임'
        in blocked_message(rep)
    )
    assert blocked_message(rep).splitlines()[0] == '@Watcher [BLOCKED] 데이터 검증 실패.'
    assert blocked_message(rep).splitlines()[-1] == '요청: Developer에게 재생성 요청'


def test_resolution(ds):
    break_dataset(ds, 'resolution')  # info.json now declares 640x480; frames are 64x48
    fs = _only(validate_dataset(ds), 'resolution')
    assert len(fs) == 50 and all(f.field == 'observation.images.ego' for f in fs)
    assert '64x48' in fs[0].message and '640x480' in fs[0].message


def test_expected_resolution_flag(base50):
    fs = _only(validate_dataset(base50, expected_resolution=(640, 480)), 'resolution')
    assert len(fs) == 50


def test_success_criteria(ds):
    break_dataset(ds, 'success_criteria')
    fs = _only(validate_dataset(ds), 'success_criteria')
    assert fs[0].field == 'success_criteria'


def test_feature_shapes(ds):
    break_dataset(ds, 'feature_shapes')
    fs = _only(validate_dataset(ds), 'feature_shapes')
    assert fs[0].field == 'observation.state' and '[6]' in fs[0].message and '[4]' in fs[0].message


def test_missing_fps(ds):
    break_dataset(ds, 'missing_fps')
    fs = _only(validate_dataset(ds), 'info')
    assert fs[0].field == 'fps'


def test_every_failure_reported_and_cli(ds, tmp_path, capsys):
    for how, ep in (('frame_count', 3), ('action_range', 5), ('nan_state', 9)):
        break_dataset(ds, how, episode=ep)
    break_dataset(ds, 'success_criteria')
    rc = robot_cli(
        ['validate', str(ds), '--json', str(tmp_path / 'r.json'), '--min-episodes', '60']
    )
    assert rc == 1
    r = json.loads((tmp_path / 'r.json').read_text())
    got = {(f['check'], f['episode']) for f in r['failures']}
    assert got == {
        ('episodes', None),
        ('frame_count', 3),
        ('action_range', 5),
        ('finite', 9),
        ('success_criteria', None),
    }
    assert set(r['checks']) == set(CHECKS) and r['checks']['resolution']['ok'] and not r['ok']
    out = capsys.readouterr().out
    assert out.count('문제: ') == 5 and '[BLOCKED]' in out


def test_cli_valid_exit_zero(base50, capsys):
    assert robot_cli(['validate', str(base50)]) == 0


# ----------------------------------------------------------------------------------- the policy
def _batch(B=3, K=4):
    return {
        'observation.state': torch.randn(B, 4),
        'observation.images.ego': torch.rand(B, 3, 32, 32),
        'action': torch.rand(B, K, 4) * 2 - 1,
        'action_is_pad': torch.zeros(B, K, dtype=torch.bool),
    }


def test_policy_shapes_and_chunking():
    torch.manual_seed(0)
    pol = ACTPolicy(ACTConfig(**{**TINY, 'chunk_size': 6, 'n_action_steps': 4}))
    b = _batch(K=6)
    out = pol(b)
    assert out['action'].shape == (3, 6, 4) and out['mu'].shape == (3, 8)
    l = pol.compute_loss(b)
    assert torch.isfinite(l['loss']) and l['loss'].requires_grad
    obs = {k: v for k, v in b.items() if k.startswith('observation')}
    acts = [pol.select_action(obs) for _ in range(9)]
    assert acts[0].shape == (3, 4) and pol.replans == [0, 4, 8]
    assert torch.allclose(torch.stack(acts[:4], 1), pol.predict_chunk(obs)[:, :4], atol=1e-6)


def test_no_vae_and_seed_preset():
    pol = ACTPolicy(ACTConfig(**{**TINY, 'use_vae': False}))
    assert not hasattr(pol, 'vae_encoder') and pol(_batch())['mu'] is None
    c = ACTConfig(**SEED_004_PRESET['model'])
    assert (
        c.chunk_size,
        c.n_action_steps,
        c.vision_backbone,
        c.state_dim,
        c.action_dim,
        c.image_height,
    ) == (20, 20, 'resnet18', 4, 4, 224)


def test_temporal_ensembling():
    torch.manual_seed(1)
    K, coeff = 5, 0.2
    chunks = [torch.randn(2, K, 3) for _ in range(8)]
    ens = TemporalEnsembler(coeff, K)
    for t, c in enumerate(chunks):
        got = ens.update(c)
        preds = torch.stack(
            [chunks[s][:, t - s] for s in range(max(0, t - K + 1), t + 1)]
        )  # oldest first
        w = torch.exp(-coeff * torch.arange(len(preds), dtype=torch.float32))[:, None, None]
        assert torch.allclose(got, (preds * w).sum(0) / w.sum(), atol=1e-5)
    pol = ACTPolicy(ACTConfig(**{**TINY, 'n_action_steps': 1, 'temporal_ensemble_coeff': 0.01}))
    obs = {k: v for k, v in _batch().items() if k.startswith('observation')}
    a0 = pol.select_action(obs)
    assert torch.allclose(
        a0, pol.predict_chunk(obs)[:, 0], atol=1e-6
    )  # first step: the chunk's first action


# ----------------------------------------------------------------------------------- training runs
@pytest.fixture(scope='module')
def small(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp('small') / 'ds', n_episodes=6, length=10, seed=5)


def _params(ds, **kw):
    base = dict(
        dataset=str(ds),
        min_episodes=5,
        max_epochs=4,
        batch_size=8,
        learning_rate=1e-3,
        seed=3,
        save_checkpoint_every=1,
        keep_checkpoints=3,
        report_every_min=30.0,
        val_episodes=1,
        log_every_n_steps=1,
    )
    return robot_params(None, **{**base, **TINY, **kw})


class _PreemptAt(Callback):
    "Create the run's PREEMPT flag after global step `step` (what `scancel --signal` / SIGTERM trigger)."

    def __init__(self, step, signal_=False):
        self.step, self.signal_ = step, signal_

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            if self.signal_:
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                (Path(trainer.default_root_dir) / 'PREEMPT').touch()


def _losses(run):
    return [
        (e, round(tl, 6), None if vl is None else round(vl, 6))
        for e, tl, vl in epoch_losses(Path(run) / 'metrics.csv')
    ]


def test_kill_and_resume_is_exact(small, tmp_path, capsys):
    full = run_robot(_params(small), run_dir=tmp_path / 'full', engine='train')
    assert full['status'] == 'finished'
    # SIGTERM after step 9 (mid second epoch); the Preemption callback sees it at the next batch boundary
    first = run_robot(
        _params(small),
        run_dir=tmp_path / 'cut',
        callbacks=[_PreemptAt(9, signal_=True)],
        engine='train',
    )
    assert (
        first['status'] == 'preempted'
        and first['preempt_reason'] == 'SIGTERM'
        and first['global_step'] == 10
    )
    assert first['global_step'] < full['global_step'] // 2
    second = run_robot(_params(small), run_dir=tmp_path / 'cut', engine='train')
    assert second['status'] == 'finished'
    assert (
        _losses(tmp_path / 'cut') == _losses(tmp_path / 'full')
        and len(_losses(tmp_path / 'full')) == 4
    )
    msgs = split_messages((tmp_path / 'cut/report.log').read_text())
    kinds = [parse_report(m)['kind'] for m in msgs if m.startswith('@Watcher')]
    assert kinds == [
        'stopped',
        'restart',
    ]  # report_every_min 30: no periodic report in this short run; restart announced
    h = parse_handoff(msgs[-1])
    assert (
        h['epochs'] == 4
        and h['episodes'] == 6
        and abs(h['final_loss'] - _losses(tmp_path / 'full')[-1][1]) < 1e-3
    )
    assert Path(h['curve']).exists() and h['best'].endswith('act_best/')


def test_retention_best_copy_and_frozen_flags(small, tmp_path):
    p = _params(
        small, max_epochs=5, checkpoint_copy_to=str(tmp_path / 'copy'), report_every_min=0.0
    )
    res = run_robot(p, run_dir=tmp_path / 'run', engine='train')
    assert res['status'] == 'finished'
    ck = tmp_path / 'run/checkpoints'
    names = sorted(q.name for q in ck.iterdir() if q.is_dir())
    assert names == ['act_best', 'act_epoch_003', 'act_epoch_004', 'act_epoch_005']
    metas = {q.name: load_json(q / 'meta.json') for q in ck.iterdir() if q.is_dir()}
    best = min(range(1, 6), key=lambda e: [l for l in _losses(tmp_path / 'run') if l[0] == e][0][2])
    assert metas['act_best']['epoch'] == best
    assert sorted(q.name for q in (tmp_path / 'copy').iterdir()) == names + [
        'last.ckpt',
        'loss_curve.png',
    ]
    reports = [
        parse_report(m)
        for m in split_messages((tmp_path / 'run/report.log').read_text())
        if m.startswith('@Watcher')
    ]
    assert reports and all(r['total'] == 5 and r['lr'] == 1e-3 for r in reports)
    assert reports[-1]['checkpoint'].startswith(str(tmp_path / 'copy/act_epoch_'))
    # the same run id with another learning rate is refused, naming the flag
    with pytest.raises(HaltingLabError, match='--learning_rate'):
        run_robot(
            {**p, 'learning_rate': 3e-4, 'max_epochs': 5}, run_dir=tmp_path / 'run', engine='train'
        )
    # a fresh machine: the run folder is gone, the copy location restores last.ckpt and the run resumes finished
    shutil.rmtree(tmp_path / 'run')
    again = run_robot(p, run_dir=tmp_path / 'run', engine='train')
    assert again['global_step'] == res['global_step'] and again['epochs_completed'] == 5


def test_training_refuses_invalid_dataset(small, tmp_path, capsys):
    bad = Path(shutil.copytree(small, tmp_path / 'bad'))
    break_dataset(bad, 'action_range', episode=2)
    with pytest.raises(ValidationFailed, match=r'\[BLOCKED\]'):
        run_robot(_params(bad), run_dir=tmp_path / 'run', engine='train')
    assert not (tmp_path / 'run/checkpoints').exists()
    rc = robot_cli(
        [
            'train',
            '--dataset',
            str(bad),
            '--min_episodes',
            '5',
            '--run-dir',
            str(tmp_path / 'r2'),
            '--engine',
            'local',
        ]
    )
    assert rc == 1 and '[BLOCKED]' in capsys.readouterr().err


def test_notebook_parameters_are_cli_flags():
    "The papermill notebook's parameters are `robot train`'s flags plus its own few."
    from halting_lab.train.robot import train_flags

    nb = json.loads((Path(__file__).parents[1] / 'nbs/experiments/robot_train.ipynb').read_text())
    cell = next(c for c in nb['cells'] if 'parameters' in c.get('metadata', {}).get('tags', []))
    ns = {}
    exec(''.join(cell['source']), ns)
    names = {k for k in ns if not k.startswith('__')}
    own = {
        'run_id',
        'runs_root',
        'preset',
        'demo',
        'synthetic_episodes',
        'synthetic_length',
        'synthetic_width',
        'synthetic_height',
        'replan_every',
    }
    assert names - own == set(train_flags())


def test_preempt_flag_and_frozen_flags_in_the_module(small, tmp_path):
    "The PREEMPT flag file stops a run; a resume with another lr is refused by the module itself."
    first = run_robot(
        _params(small), run_dir=tmp_path / 'run', callbacks=[_PreemptAt(3)], engine='train'
    )
    assert first['status'] == 'preempted' and first['preempt_reason'] == 'PREEMPT file'
    (
        tmp_path / 'run/config.json'
    ).unlink()  # bypass the CLI's config.json check: the checkpoint still refuses
    with pytest.raises(HaltingLabError, match=r'--learning_rate 0\.001 -> 0\.0003'):
        run_robot(
            {**_params(small), 'learning_rate': 3e-4}, run_dir=tmp_path / 'run', engine='train'
        )


@pytest.mark.timeout(600)
def test_robot_train_notebook(tmp_path):
    "The papermill notebook end to end (small parameters): HANDOFF, loss curve, replanning numbers."
    import subprocess, sys

    root = Path(__file__).parents[1]
    out = tmp_path / 'robot_train.ipynb'
    cmd = [
        sys.executable,
        '-m',
        'papermill',
        str(root / 'nbs/experiments/robot_train.ipynb'),
        str(out),
        '-p',
        'runs_root',
        str(tmp_path / 'runs'),
        '-p',
        'synthetic_length',
        '8',
        '-p',
        'max_epochs',
        '2',
        '-p',
        'report_every_min',
        '30.0',
        '-p',
        'replan_every',
        '3',
        '--cwd',
        str(root),
    ]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    subprocess.run(cmd, check=True, cwd=root, capture_output=True, timeout=580, env=env)
    run = tmp_path / 'runs/robot_demo'
    h = parse_handoff(split_messages((run / 'report.log').read_text())[-1])
    assert (
        h['epochs'] == 2 and h['episodes'] == 50 and (run / 'checkpoints/loss_curve.png').exists()
    )
    text = out.read_text()
    assert "'changed_fraction'" in text and 'ACT 학습 완료' in text
