"""REOAC (seed 002): operators, the ensure_update fallback, the 11 critic features, the verifiers, rollout
determinism, a tiny training run's outputs (schema), LoRA checkpoints, evaluation, and exact resume after a
preemption signal. Everything runs on CPU with a microscopic MDLM (seconds)."""
import json, math, os, signal
from pathlib import Path
import pytest
import torch
import yaml

from halting_lab.models.reoac import (StepView, operator_mask, apply_operators, aggregate_features,
                                      predicted_text_spans, RelationalEnergyCritic, OperatorActor, N_FEATURES,
                                      FEATURE_NAMES, OPERATORS)
from halting_lab.models.mdlm import TinyMDLMBackbone, HFMaskedDiffusionBackbone
from halting_lab.tasks import math as mt
from halting_lab.train import reoac as R


# ---------------------------------------------------------------- operators
def _view():
    # 8 slots; slots 0-1 decoded; confidence/entropy/numerals chosen so that every operator differs
    return StepView(masked=torch.tensor([[False, False, True, True, True, True, True, True]]),
                    conf=torch.tensor([[1., 1., .2, .9, .5, .97, .6, .3]]),
                    entropy=torch.tensor([[0., 0., .8, .03, .5, .01, .4, .7]]),
                    pred=torch.zeros(1, 8, dtype=torch.long),
                    is_digit=torch.tensor([[False, False, True, False, True, False, False, True]]))

def _sel(op, v, k=2, **kw): return operator_mask(op, v, k=k, **kw)[0].nonzero().flatten().tolist()

def test_operators_on_constructed_masks():
    v = _view()
    assert _sel(0, v) == [3, 5]                        # top-k confident
    assert _sel(1, v) == [2, 3]                        # left to right
    assert _sel(2, v, entropy_threshold=0.05) == [3, 5]  # all below the entropy threshold
    assert _sel(2, v, entropy_threshold=0.45) == [3, 5, 6]
    r = _sel(3, v, generator=torch.Generator().manual_seed(0))
    assert len(r) == 2 and set(r) <= {2, 3, 4, 5, 6, 7}
    assert _sel(4, v) == [4, 7]                        # numerals, most confident first
    v.answer_span = torch.tensor([[False] * 6 + [True, True]])
    assert _sel(4, v) == [7]                           # only the answer span after '####'
    assert _sel(4, v, fast=True) == [4, 7]             # fast_operator: no span parsing
    for op in range(5):                                # never a decoded slot; never more than k (except op 2)
        s = _sel(op, v, k=3, generator=torch.Generator().manual_seed(1))
        assert not set(s) & {0, 1} and (op == 2 or len(s) <= 3)
    with pytest.raises(Exception, match='operator id'): operator_mask(7, v)


def test_ensure_update_fallback():
    v = _view()
    v.is_digit[:] = False                              # answer_span_first selects nothing
    ops = torch.tensor([4])
    upd, fb = apply_operators(ops, v, k=2, fallback_operator=1)
    assert fb.tolist() == [True] and upd[0].nonzero().flatten().tolist() == [2, 3]   # left_to_right fallback
    upd, fb = apply_operators(ops, v, k=2, ensure_update=False)
    assert not upd.any() and fb.tolist() == [False]
    done = StepView(masked=torch.zeros(1, 8, dtype=torch.bool), conf=v.conf, entropy=v.entropy, pred=v.pred,
                    is_digit=v.is_digit)
    upd, fb = apply_operators(ops, done)               # nothing masked: no fallback needed
    assert not upd.any() and fb.tolist() == [False]


# ---------------------------------------------------------------- the 11 features
def test_features_on_hand_computed_relation():
    # G = 3 slots, P = 4 prompt positions (position 0 is padding)
    Rm = torch.tensor([[[5., 1., 0., 0.], [5., .5, .5, .5], [5., -1., 0., 1.]]])
    pv = torch.tensor([[False, True, True, True]])
    v = StepView(masked=torch.tensor([[True, True, False]]), conf=torch.tensor([[.95, .5, .2]]),
                 entropy=torch.tensor([[.1, .6, .9]]), pred=torch.zeros(1, 3, dtype=torch.long),
                 is_digit=torch.tensor([[False, True, True]]))
    f = aggregate_features(Rm, pv, v, step=2, max_steps=8, answer_marker=torch.tensor([False]), tau=0.5)[0]
    def row_ent(r):
        p = torch.tensor(r).div(0.5).softmax(0)
        return float(-(p * p.log()).sum()) / math.log(3)
    expect = {'masked_frac': 2 / 3, 'step_frac': 0.25, 'conf_mean': .725, 'conf_min': .5, 'entropy_mean': .35,
              'confident_frac': .5, 'rel_mean': (1 + 0 + 0 + 1.5 + 0) / 9, 'rel_rowmax': (1 + .5 + 1) / 3,
              'rel_row_entropy': (row_ent([1., 0, 0]) + 1.0 + row_ent([-1., 0, 1])) / 3,
              'numeral_frac': .5, 'answer_marker': 0.}
    assert len(FEATURE_NAMES) == N_FEATURES == 11
    for i, name in enumerate(FEATURE_NAMES):
        assert abs(float(f[i]) - expect[name]) < 1e-5, (name, float(f[i]), expect[name])
    # nothing masked: confidence features take their documented neutral values
    v.masked[:] = False
    f = aggregate_features(Rm, pv, v, 8, 8, torch.tensor([True]))[0]
    assert f[[0, 2, 3, 4, 5, 9, 10]].tolist() == [0., 1., 1., 0., 0., 0., 1.]


def test_answer_span_from_multichar_tokens():
    strings = ['', '[MASK]', '?', '12', ' ####', ' 3', '4']
    toks = torch.tensor([[3, 4, 5, 6]])                # '12 #### 34'
    v = StepView(masked=torch.zeros(1, 4, dtype=torch.bool), conf=torch.ones(1, 4), entropy=torch.zeros(1, 4),
                 pred=toks, is_digit=torch.zeros(1, 4, dtype=torch.bool))
    mk, span = predicted_text_spans(toks, v, strings)
    assert mk.tolist() == [True] and span[0].tolist() == [False, False, True, True]


# ---------------------------------------------------------------- verifiers
@pytest.mark.parametrize('text,gold,ok', [
    ('so the total is 1,234 #### 1,234', '1234', True),
    ('#### $1,000.00', '1000', True),
    ('She has 3/4 of it. #### 3/4', '0.75', True),
    ('answer: 12 apples then 15', '15', True),            # no ####: the last number
    ('#### 15 (and 12 more)', '15', True),                # the number right after ####
    ('#### -7', '-7', True),
    ('#### 7', '-7', False),
    ('nothing here', '0', False),
])
def test_gsm8k_verifier(text, gold, ok):
    assert mt.is_correct(text, gold, 'gsm8k') is ok


@pytest.mark.parametrize('text,gold,ok', [
    (r'so $\boxed{\frac{1}{2}}$', '0.5', True),
    (r'\boxed{\dfrac{3}{6}}', r'\frac12', True),
    (r'first \boxed{2} then \boxed{x^{2}}', 'x^2', True),    # the last box
    (r'\boxed{\left( 1, 2 \right)}', '(1,2)', True),
    (r'\boxed{2\sqrt{2}}', r'\sqrt{8}', True),
    (r'\boxed{\frac{1}{3}}', '0.33', False),
    ('no box 5', '5', False),
])
def test_math_verifier(text, gold, ok):
    assert mt.is_correct(text, gold, 'math') is ok


def test_reward_modes():
    assert mt.reward('#### 8577', '8577', mode='strict') == 1.0
    assert mt.reward('#### 8567', '8577', mode='strict') == 0.0
    assert 0.1 < mt.reward('#### 8567', '8577', mode='shaped') < 1.0
    with pytest.raises(Exception, match='reward.mode'): mt.reward('1', '1', mode='other')


# ---------------------------------------------------------------- rollouts
def _engine(seed=0, **rc):
    torch.manual_seed(seed)
    bb = TinyMDLMBackbone(dim=16, n_layers=1, n_heads=2, max_len=64).eval()
    cr = RelationalEnergyCritic(16)
    ac = OperatorActor(cr.in_dim)
    cfg = {**R.DEFAULT_CONFIG['rollout'], 'gen_len': 12, 'max_steps': 6, 'tokens_per_step': 2,
           'selection_mode': 'sample', 'token_mode': 'sample', **rc}
    return R.RolloutEngine(bb, cr, ac, cfg, prompt_len=16)


def test_rollout_determinism_under_a_seed():
    eng = _engine()
    prompts = ['12+34=?', '999+1=?', 'Tom has 3 pens, buys 2 more. How many pens?']
    run = lambda s: eng.run(prompts, 'sample', torch.Generator().manual_seed(s), record_relation=True)
    (t1, s1, tr1), (t2, s2, tr2), (t3, s3, tr3) = run(5), run(5), run(6)
    assert torch.equal(t1, t2) and torch.equal(s1, s2)
    assert [t.ops for t in tr1] == [t.ops for t in tr2]
    assert all(torch.equal(a, b) for x, y in zip(tr1, tr2) for a, b in zip(x.relation, y.relation))
    assert not (torch.equal(t1, t3) and [t.ops for t in tr1] == [t.ops for t in tr3])
    assert not (t1[:, 16:] == eng.bb.mask_id).any() and (s1 <= 6).all()


def test_fixed_operator_and_stop_threshold():
    eng = _engine(token_mode='argmax', selection_mode='argmax')
    toks, steps, tr = eng.run(['1+1=?'], 'argmax', None, fixed=1)
    assert set(tr[0].ops) == {1} and int(steps[0]) == 6     # 12 slots / 2 per step = 6 steps
    assert tr[0].unmasked[0] == [0, 1]                       # left to right
    eng = _engine(token_mode='argmax', stop_threshold=0.0)  # mdlm-confidence halts at the first step
    toks, steps, tr = eng.run(['1+1=?'], 'argmax', None, fixed=1)
    assert int(steps[0]) == 1 and not (toks[:, 16:] == eng.bb.mask_id).any()


# ---------------------------------------------------------------- training outputs
def _micro(tmp, **over):
    base = {'num_iterations': 3, 'episodes_per_iter': 4, 'buffer_size': 16, 'output_dir': str(tmp),
            'dataset': {'n_train': 40, 'n_test': 6},
            'backbone': {'pretrain_steps': 3, 'pretrain_batch_size': 8,
                         'tiny': {'dim': 16, 'n_layers': 1, 'n_heads': 2, 'max_len': 128}},
            'rollout': {'max_steps': 4, 'tokens_per_step': 9, 'branch_steps': 1, 'branch_k': 1, 'batch_size': 8},
            'update': {'critic_steps': 2, 'actor_steps': 2, 'backbone_steps': 1, 'minibatch_size': 16},
            'logging': {'checkpoint_interval': 2, 'samples_per_iter': 1}}
    return R.load_config(preset='tiny', overrides=R.deep_merge(base, over, strict=False))


def _load(p): return torch.load(p, map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('reoac')
    res = R.train_reoac(_micro(tmp), quiet=True)
    return tmp, res


def test_tiny_training_writes_every_output(tiny_run):
    tmp_path, res = tiny_run
    run = Path(res['run_dir'])
    assert res['status'] == 'finished' and run.parent.name == 'reoac_tiny' and run.parent.parent == tmp_path
    ck = run / 'checkpoints'
    for f in ('actor.pt', 'critic.pt', 'backbone.pt', 'backbone_pretrained.pt', 'last.ckpt'):
        assert (ck / f).exists(), f
        _load(ck / f)                                          # tensors + plain types only
    assert _load(ck / 'actor.pt')['format'] == 'reoac-actor'
    rows = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()]
    assert [r['iteration'] for r in rows] == [1, 2, 3]
    for r in rows:
        assert set(R.METRIC_FIELDS) <= set(r) and r['episodes'] == 4
        assert abs(r['total_loss'] - r['critic_loss'] - r['actor_loss'] - r['backbone_loss']) < 1e-9
    samples = sorted((run / 'samples').glob('*.json'))
    assert [p.name for p in samples] == ['iter1_ep0.json', 'iter2_ep0.json', 'iter3_ep0.json']
    s = json.loads(samples[0].read_text())
    assert {'prompt', 'final_text', 'reward', 'cost', 'operator_id', 'feature_vector', 'relation', 'trace'} <= set(s)
    assert len(s['feature_vector']) == 11 and len(s['operator_id']) == s['steps'] == len(s['trace'])
    assert len(s['relation']) == 10 and len(s['relation'][0]) == 12 and len(s['trace'][0]['q_values']) == 5
    assert abs(s['cost'] - 0.02 * s['steps']) < 1e-9
    for f in ('energy_map.csv', 'energy_map.png', 'embedding_proj.csv', 'embedding_proj.png', 'loss.png'):
        assert (run / 'viz' / f).exists(), f
    assert json.loads((run / 'config.json').read_text())['config']['rollout']['max_steps'] == 4
    # evaluation: the policy and the five fixed operators, strict reward, eval json + compare.csv
    out = R.evaluate(R.load_config(overrides=json.loads((run / 'config.json').read_text())['config']),
                     ck, ['policy', 0, 1, 2, 3, 4], max_examples=4)
    assert [o['operator'] for o in out] == ['policy'] + list(OPERATORS)
    ev = json.loads((run / 'eval_math_gen.json').read_text())
    assert ev['reward'] == 'strict' and len(ev['per_example']['policy']) == 4
    assert (run / 'compare.csv').read_text().splitlines()[0].startswith('operator,operator_id,n,accuracy,mean_steps')


def test_slurm_inference_script_outside_slurm(tiny_run, tmp_path):
    "slurm/reoac_infer.sbatch with the run's own config (`-`), a fixed operator and 2 examples, run by bash."
    import subprocess, sys
    run = Path(tiny_run[1]['run_dir'])
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", SLURM_SUBMIT_DIR=str(root),
               OMP_NUM_THREADS='1')
    env.pop('SLURM_JOB_ID', None)
    r = subprocess.run(['bash', str(root / 'slurm' / 'reoac_infer.sbatch'), '-', str(run / 'checkpoints'), '1', '2'],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ev = json.loads((run / 'eval_math_gen.json').read_text())
    assert [s['operator'] for s in ev['summary']] == ['left_to_right'] and ev['summary'][0]['n'] == 2


def test_fast_critic_samples_have_no_relation(tmp_path):
    res = R.train_reoac(_micro(tmp_path, num_iterations=1, rollout={'fast_critic': True, 'fast_operator': True,
                                                                     'use_hidden': True, 'branch_steps': 0}), quiet=True)
    s = json.loads(next((Path(res['run_dir']) / 'samples').glob('*.json')).read_text())
    assert {'prompt', 'final_text', 'reward', 'cost'} <= set(s) and 'relation' not in s


def test_lora_checkpoint_and_eval(tmp_path):
    res = R.train_reoac(_micro(tmp_path, num_iterations=1, finetune_mode='lora'), quiet=True)
    ck = Path(res['run_dir']) / 'checkpoints'
    assert (ck / 'backbone_lora' / 'adapter_config.json').exists() and not (ck / 'backbone.pt').exists()
    cfg = R.load_config(overrides=json.loads((ck.parent / 'config.json').read_text())['config'])
    bb = R.load_backbone(cfg, ck)
    ref = _load(ck / 'last.ckpt')['backbone']
    got = {k: v for k, v in bb.state_dict().items()}
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)


def test_resume_after_sigusr1_is_exact(tmp_path, monkeypatch):
    straight = R.train_reoac(_micro(tmp_path / 'a'), run_dir=tmp_path / 'a' / 'run', quiet=True)
    orig = R.Trainer.iteration_step
    def step_then_signal(self):
        out = orig(self)
        if self.iteration == 1: os.kill(os.getpid(), signal.SIGUSR1)   # Slurm's walltime warning
        return out
    monkeypatch.setattr(R.Trainer, 'iteration_step', step_then_signal)
    first = R.train_reoac(_micro(tmp_path / 'b'), run_dir=tmp_path / 'b' / 'run', quiet=True)
    assert first['status'] == 'preempted' and first['iteration'] == 1
    assert json.loads((tmp_path / 'b' / 'run' / 'results.json').read_text())['status'] == 'preempted'
    monkeypatch.setattr(R.Trainer, 'iteration_step', orig)
    second = R.train_reoac(_micro(tmp_path / 'b'), run_dir=tmp_path / 'b' / 'run', resume='auto', quiet=True)
    assert second['status'] == 'finished' and second['iteration'] == 3
    a, b = tmp_path / 'a' / 'run', tmp_path / 'b' / 'run'
    strip = lambda p: [{k: v for k, v in json.loads(l).items()} for l in (p / 'metrics.jsonl').read_text().splitlines()]
    assert strip(a) == strip(b)
    for f in ('actor.pt', 'critic.pt', 'backbone.pt'):
        sa, sb = _load(a / 'checkpoints' / f)['state_dict'], _load(b / 'checkpoints' / f)['state_dict']
        assert all(torch.equal(sa[k], sb[k]) for k in sa), f
    assert sorted(p.name for p in (a / 'samples').iterdir()) == sorted(p.name for p in (b / 'samples').iterdir())
    assert (a / 'samples' / 'iter3_ep0.json').read_text() == (b / 'samples' / 'iter3_ep0.json').read_text()


def test_cli_prep_and_errors(tmp_path, capsys):
    assert R.reoac_cli(['prep', 'synthetic', '--out_dir', str(tmp_path), '--n_train', '5', '--n_test', '3']) == 0
    rows = mt.read_jsonl(tmp_path / 'math_gen_test.jsonl')
    assert len(rows) == 3 and all(r['answer'].endswith('#### ' + r['final']) for r in rows)
    with pytest.raises(Exception, match='--raw'):
        R.reoac_cli(['prep', 'gsm8k', '--raw', str(tmp_path / 'missing')])
    bad = tmp_path / 'bad.yaml'
    bad.write_text('rollout:\n  max_stepz: 3\n')
    with pytest.raises(Exception, match=r"bad.yaml.rollout: unknown key 'max_stepz'"):
        R.load_config(bad)


def test_shipped_config_matches_defaults():
    assert yaml.safe_load(R.default_config_path().read_text()) == R.DEFAULT_CONFIG
    from halting_lab.slurm import PREEMPTED_RC
    assert R.PREEMPTED_RC == PREEMPTED_RC


def test_registry_entries():
    from halting_lab.registry import get_model, get_task, get_halting, find_command
    assert get_model('mdlm').trainable is False
    assert get_task('math_gen').kind == 'generated'
    assert get_halting('mdlm-confidence').make(max_steps=4).threshold == 0.9
    assert find_command('reoac').fn in ('halting_lab.train.reoac:reoac_cli', R.reoac_cli)


def test_hf_adapter_on_a_local_tiny_masked_lm(tmp_path):
    "The real loading path (AutoModelForMaskedLM + AutoTokenizer) on a tiny BERT saved to a local directory."
    transformers = pytest.importorskip('transformers')
    vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + list('0123456789+=?#') + ['##' + c for c in '0123456789#']
    (tmp_path / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
    tok = transformers.BertTokenizer(str(tmp_path / 'vocab.txt'))
    tok.save_pretrained(str(tmp_path / 'm'))
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertForMaskedLM(cfg).save_pretrained(str(tmp_path / 'm'))
    bb = HFMaskedDiffusionBackbone.from_pretrained(str(tmp_path / 'm'), torch_dtype='float32',
                                                   trust_remote_code=False, suppress_load_warnings=True)
    assert bb.mask_id == 4 and bb.pad_id == 0 and bb.hidden_size == 16
    x = bb.encode_batch(['12+34=?'], prompt_len=10, gen_len=6)
    out = bb(x)
    assert out.logits.shape == (1, 16, len(vocab)) and out.hidden.shape == (1, 16, 16)
    cr = RelationalEnergyCritic(16)
    eng = R.RolloutEngine(bb.eval(), cr, OperatorActor(cr.in_dim),
                          {**R.DEFAULT_CONFIG['rollout'], 'gen_len': 6, 'max_steps': 3, 'tokens_per_step': 2}, 10)
    toks, steps, tr = eng.run(['12+34=?'], 'argmax')
    assert not (toks[:, 10:] == bb.mask_id).any() and int(steps[0]) == 3
    with pytest.raises(Exception, match='cannot load'):
        HFMaskedDiffusionBackbone.from_pretrained(str(tmp_path / 'nope'), trust_remote_code=False)
