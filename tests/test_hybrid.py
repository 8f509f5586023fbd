"""Hybrid LLM + TRM on ARC (seed 001): text <-> grid, verifier, planner, adapters, joint step, baseline.

The real SmolLM2-135M-Instruct (packaged GGUF) is loaded once for the module (~20 s on 2 cores);
generations are kept to a few tokens on 2x2..5x5 tasks.
"""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch

os.environ.setdefault('OMP_NUM_THREADS', '1')
torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]

from halting_lab.core import HaltingLabError
from halting_lab.models.hybrid import (ARCPlanner, GridVerifier, LatentToTextAdapter, ScriptedReasoner,
                                       TextReasoningModule, TextToLatentAdapter, _tiny_task, grid_to_text,
                                       text_to_grid)
from halting_lab.models.trm import TRM, TRMConfig
from halting_lab.train import hybrid as H


def tiny_trm(hidden=32, steps=2, seed=0):
    torch.manual_seed(seed)
    return TRM(TRMConfig(vocab_size=12, seq_len=900, hidden_size=hidden, num_heads=2, H_cycles=2, L_cycles=1,
                         halt_max_steps=steps, puzzle_emb_ndim=0)).eval()


@pytest.fixture(scope='module')
def llm(tmp_path_factory):
    "The packaged SmolLM2, loaded once for this module (load_llm caches it for HybridARC too)."
    log = tmp_path_factory.mktemp('llm') / 'calls.jsonl'
    return TextReasoningModule(None, frozen=True, log_path=log, max_new_tokens=24)


def test_grid_text_round_trip():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (30, 30), (3, 7), (7, 3), (2, 30)]:
        g = rng.integers(0, 10, shape).tolist()
        assert text_to_grid(grid_to_text(g)) == g
        spaced = '\n'.join(' '.join(map(str, r)) for r in g)
        assert text_to_grid('Here it is:\n' + spaced + '\nThat is all.') == g
    assert text_to_grid(str([[1, 2], [3, 4]])) == [[1, 2], [3, 4]]
    assert text_to_grid('no digits at all') is None
    with pytest.raises(HaltingLabError, match='ragged'):
        grid_to_text([[1, 2], [3]])


def test_verifier_feedback_on_wrong_answers():
    t, v = _tiny_task(), GridVerifier()
    target = t['test'][0]['output']
    cases = {  # candidate -> (failed check, words expected in the feedback)
        'shape': ([[0, 5, 0]], 'expected 2x2'),
        'colours': ([[0, 8], [6, 0]], '[8]'),
        'not_copy': ([[5, 0], [0, 6]], 'copies the test input'),
        'parsed': (None, 'no grid'),
        'target': ([[0, 5], [0, 6]], '50% of cells right'),
    }
    for check, (cand, words) in cases.items():
        r = v.verify(cand, t, target=target)
        assert not r.ok and r.checks[check] is False, check
        assert r.feedback.startswith('REJECTED') and words in r.feedback, (check, r.feedback)
    ok = v.verify(target, t, target=target)
    assert ok.ok and ok.feedback == 'ACCEPTED' and ok.cell_accuracy == 1.0
    # label-free: a plausible wrong grid passes (the verifier cannot know), the target check is absent
    lf = GridVerifier(use_target=False).verify([[0, 6], [5, 0]], t, target=target)
    assert lf.ok and 'target' not in lf.checks and lf.cell_accuracy == 0.5


@pytest.mark.parametrize('max_attempts', [1, 3, 16])
def test_planner_never_exceeds_max_attempts(max_attempts):
    t = _tiny_task()
    sr = ScriptedReasoner(['50\n06'])                       # always wrong (copies the input)
    res = ARCPlanner(sr, max_attempts=max_attempts).solve(t)
    assert len(res.attempts) == max_attempts == len(sr.calls) and not res.verified
    res = ARCPlanner(ScriptedReasoner(['50\n06']), trm=tiny_trm(), max_attempts=max_attempts, trm_steps=1).solve(t)
    assert len(res.attempts) == max_attempts and res.attempts[0].source == 'trm'


def test_planner_stops_at_first_verified():
    t = _tiny_task()
    sr = ScriptedReasoner(['garbage', '05\n60', '05\n60'])
    res = ARCPlanner(sr, max_attempts=16).solve(t)
    assert [a.verdict.ok for a in res.attempts] == [False, True] and len(sr.calls) == 2
    assert res.answer == [[0, 5], [6, 0]] and res.verified
    assert 'no grid' in sr.calls[1][0]                      # attempt 1's feedback reached attempt 2
    # with a TRM that is right, the LM is never asked (TRM-only right => hybrid right)
    trm = tiny_trm()
    planner = ARCPlanner(ScriptedReasoner(['x']), trm=trm, max_attempts=5, trm_steps=1)
    planner._trm_candidate = lambda task, ti, prompt=None, trm=None: ([[0, 5], [6, 0]], 1, None)
    res = planner.solve(t)
    assert len(res.attempts) == 1 and res.attempts[0].source == 'trm' and planner.reasoner.calls == []


def test_planner_real_llm(llm):
    t = _tiny_task()
    n0 = llm.calls
    res = ARCPlanner(llm, trm=tiny_trm(), max_attempts=2, trm_steps=1, reasoning_tokens=4).solve(t)
    assert 1 <= len(res.attempts) <= 2 and res.attempts[0].source == 'trm'
    llm_attempts = [a for a in res.attempts if a.source != 'trm']
    assert llm.calls - n0 == len(llm_attempts)
    for a in llm_attempts: assert a.reasoning and 'llm' in a.candidates
    if not res.verified: assert len(res.attempts) == 2
    lines = [json.loads(l) for l in llm.log_path.read_text().splitlines()]
    assert lines and {'prompt', 'answer', 'tag'} <= set(lines[-1]) and 'Test\nInput:\n50\n06' in lines[-1]['prompt']


def test_adapter_shapes():
    t2l = TextToLatentAdapter(576, 512, positions=900)
    h, m = torch.randn(2, 11, 576), torch.ones(2, 11, dtype=torch.bool)
    z = t2l(h, m)
    assert z.shape == (2, 900, 512) and z.abs().max() == 0   # gated: silent at init
    l2t = LatentToTextAdapter(512, 576, prefix_len=4, embed_rms=0.02)
    assert l2t(torch.randn(2, 900, 512)).shape == (2, 4, 576)


def _param_sums(module):
    return {n: float(p.detach().double().sum()) for n, p in module.named_parameters()}


def test_joint_step_trains_adapters_and_trm_not_llm(llm):
    cfg = H.JointModelConfig(trm_hidden_size=32, trm_halt_max_steps=2, lr=1e-2, max_new_tokens=24)
    model = H.HybridARC(cfg, trm=tiny_trm(32, 2))
    assert model.reasoner.llm is llm.llm                     # one LM per process
    before = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith('reasoner.')}
    llm_before = _param_sums(model.reasoner.llm)
    opt = H.make_optimizer(model)
    assert not any(p is q for g in opt.param_groups for p in g['params'] for q in model.reasoner.llm.parameters())
    ex = H.loo_examples({'flip': _tiny_task()})[:1]
    out = H.joint_step(model, ex, {}, opt, {})
    assert np.isfinite(out['loss']) and out['lm_loss'] > 0 and out['trm_loss'] > 0
    after = model.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert 'text_to_latent.gate' in changed
    assert any(k.startswith('latent_to_text.') for k in changed)
    assert any(k.startswith('trm.L_level.') for k in changed) and 'trm.lm_head.weight' in changed
    assert _param_sums(model.reasoner.llm) == llm_before
    assert all(p.grad is None and not p.requires_grad for p in model.reasoner.llm.parameters())
    # a second step: the adapter's projection now gets gradient through the non-zero gate
    H.joint_step(model, ex, {}, opt, {})
    assert not torch.equal(before['text_to_latent.proj.1.weight'], model.state_dict()['text_to_latent.proj.1.weight'])


def test_baseline_two_tasks(llm, tmp_path):
    out = tmp_path / 'baseline_results.json'
    rc = H.arc_cli(['baseline', '--data_path', 'arc1', '--split', 'evaluation', '--attempts', '1',
                    '--max_tasks', '2', '--max_size', '5', '--output', str(out), '--reasoning_tokens', '2'])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res['summary']['tasks'] == 2 and res['summary']['llm_calls'] == len(res['tasks']) >= 2
    for k in ('exact_match', 'shape_match', 'cell_accuracy', 'avg_attempts', 'avg_reasoning_length'):
        assert 0 <= res['summary'][k] <= (1 if k in ('exact_match', 'shape_match', 'cell_accuracy') else 1e6)
    for row in res['tasks']:
        assert row['attempts'] == 1 and row['target'] and row['attempt_log'][0]['reasoning']
    calls = [json.loads(l) for l in out.with_suffix('.calls.jsonl').read_text().splitlines()]
    assert len(calls) == res['summary']['llm_calls'] and all(c['prompt'] and 'answer' in c for c in calls)


def test_joint_cli_end_to_end(llm, tmp_path):
    yml = tmp_path / 'config_joint.yaml'
    yml.write_text('data_path: "arc1"\nllama_model: null\nllama_frozen: true\ntrm_checkpoint: null\n'
                   'trm_hidden_size: 32\ntrm_halt_max_steps: 1\nbatch_size: 2\nmax_attempts: 16\nepochs: 10\nlr: 0.0001\n')
    out = tmp_path / 'joint'
    rc = H.arc_cli(['joint', '--config', str(yml), '--output_dir', str(out), '--epochs', '1', '--max_attempts', '1',
                    '--max_tasks', '1', '--max_size', '4', '--device', 'cpu', '--lr', '1e-3'])
    assert rc == 0
    cols = (out / 'metrics.csv').read_text().splitlines()[0].split(',')
    assert set(H.METRIC_NAMES) <= set(cols)
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['epochs'] == 1 and cfg['batch_size'] == 2 and cfg['lr'] == 1e-3
    ck = torch.load(out / 'checkpoints' / 'last.ckpt', weights_only=True)
    assert not any(k.startswith('reasoner.') for k in ck['state_dict'])
    m = H.load_joint_checkpoint(out / 'checkpoints' / 'last.ckpt')
    assert torch.equal(m.text_to_latent.gate.detach(), ck['state_dict']['text_to_latent.gate'])
    ev = json.loads((out / 'eval_epoch_1.json').read_text())
    assert ev['rows'] and all(r['attempts'] == 1 for r in ev['rows'])


def test_registered_and_light_import():
    from halting_lab.registry import get_model, find_command, trainable_models
    assert get_model('hybrid_arc').cls() is H.HybridARC and not get_model('hybrid_arc').trainable
    assert find_command('arc').fn == 'halting_lab.train.hybrid:arc_cli'
    assert find_command('arc')(['--help']) == 0
    code = 'import sys, halting_lab.train.hybrid; print("transformers" in sys.modules)'
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip() == 'False', r.stderr[-500:]


def test_joint_notebook_parameters_match_config():
    nb = json.loads((ROOT / 'nbs/experiments/hybrid_joint.ipynb').read_text())
    cell = next(c for c in nb['cells'] if 'parameters' in c.get('metadata', {}).get('tags', []))
    ns = {}
    exec(''.join(cell['source']), ns)
    from dataclasses import fields
    missing = [f.name for f in fields(H.JointModelConfig) if f.name != 'model_type' and f.name not in ns]
    assert not missing


def test_joint_step_trains_trm_puzzle_embedding_rows_sparsely(llm):
    "A TRM with a puzzle table: joint_step moves only the batch's row (sparse sign-SGD), the table has no .grad."
    torch.manual_seed(0)
    trm = TRM(TRMConfig(vocab_size=12, seq_len=900, hidden_size=32, num_heads=2, H_cycles=2, L_cycles=1,
                        halt_max_steps=2, puzzle_emb_ndim=32, puzzle_emb_len=1, num_puzzle_identifiers=4)).eval()
    model = H.HybridARC(H.JointModelConfig(trm_hidden_size=32, trm_halt_max_steps=2, lr=1e-2, lm_loss_weight=0.0,
                                           max_new_tokens=24), trm=trm)
    opt = H.make_optimizer(model)
    w = model.trm.puzzle_emb.weight
    assert not any(p is w for g in opt.param_groups for p in g['params'])
    before = w.detach().clone()
    H.joint_step(model, H.loo_examples({'flip': _tiny_task()})[:1], {'flip': 2}, opt, {})
    assert w.grad is None and not w.sparse_pending
    assert torch.nonzero((w != before).any(-1)).flatten().tolist() == [2]
