"""Models: ActRNN and UniversalTransformer shapes and the shared halting interface (maze-shaped and toy
inputs), ACT invariants through the models, padding excluded, return_steps, the registry, and the
parity demonstration notebook run by papermill."""
import json, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch
from halting_lab.core import HaltingOutput, model_class
from halting_lab.models.act_rnn import ActRNN, ActRNNConfig
from halting_lab.models.universal_transformer import UniversalTransformer, UTConfig
from halting_lab.tasks.toy import ToyDataModule, TOY_TASKS, TOY_VOCAB_SIZE

ROOT = Path(__file__).resolve().parents[1]

def _maze_batch(B=2, side=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {'inputs': torch.randint(1, 6, (B, side * side), generator=g), 'labels': torch.randint(1, 6, (B, side * side), generator=g),
            'puzzle_identifiers': torch.zeros(B, dtype=torch.long), 'index': torch.arange(B)}

def _toy_batch(task='addition', B=4):
    dm = ToyDataModule(task, batch_size=B, num_train=16, num_val=4, max_length=5, seed=0); dm.setup('fit')
    return dm, next(iter(dm.train_dataloader()))

def _models(vocab, seq_len, steps=4):
    return [ActRNN(ActRNNConfig(vocab_size=vocab, seq_len=seq_len, hidden_size=16, halt_max_steps=steps, halt_bias_init=-1.)),
            ActRNN(ActRNNConfig(vocab_size=vocab, seq_len=seq_len, hidden_size=16, halt_max_steps=steps, act_mode='per_sequence')),
            ActRNN(ActRNNConfig(vocab_size=vocab, seq_len=seq_len, hidden_size=16, halt_max_steps=steps, mixing='attention')),
            *[UniversalTransformer(UTConfig(vocab_size=vocab, seq_len=seq_len, ut_embedding_size=16, ut_key_depth=16,
                                            ut_value_depth=16, ut_filter_size=32, ut_max_hops=steps, ut_act=True, ut_act_type=t,
                                            halt_bias_init=-1.)) for t in ('basic', 'accumulated', 'global')]]

def _check_invariants(o:HaltingOutput, mask, max_steps):
    B, L = mask.shape
    assert o.halting_steps.shape == (B, L) and o.ponder_cost.shape == (B, L)
    S = o.num_steps
    assert 1 <= S <= max_steps and o.halting_steps.max() <= max_steps
    assert o.step_logits.shape[:3] == (S, B, L) and o.halt_cumprob.shape == (S, B, L)
    probs = o.extras['step_probs'].detach()
    torch.testing.assert_close(probs.sum(0), mask.float(), atol=1e-5, rtol=0)           # weights sum to 1
    torch.testing.assert_close(o.halt_cumprob[-1].detach(), mask.float(), atol=1e-5, rtol=0)
    hs, pc = o.halting_steps.detach(), o.ponder_cost.detach()
    assert (hs[~mask] == 0).all() and (pc[~mask] == 0).all()                            # pads excluded
    assert (hs[mask] >= 1).all()
    R = (pc - hs)[mask]
    assert ((R > 0) & (R <= 1 + 1e-5)).all()                                             # ponder cost = N + R
    # the remainder is the weight of each position's halting step
    n = hs.long().clamp_min(1) - 1
    torch.testing.assert_close(probs.gather(0, n[None])[0][mask], R, atol=1e-5, rtol=0)

def test_registry():
    assert model_class('act_rnn') is ActRNN and model_class('universal_transformer') is UniversalTransformer
    assert ActRNN.config_cls is ActRNNConfig and UniversalTransformer.config_cls is UTConfig
    assert ActRNNConfig().model_type == 'act_rnn' and UTConfig().model_type == 'universal_transformer'

@pytest.mark.timeout(300)
def test_maze_shapes_and_invariants():
    torch.manual_seed(0)
    b = _maze_batch(B=2, side=30)
    for m in _models(6, 900):
        o = m(b, return_steps=True)
        assert isinstance(o, HaltingOutput) and o.logits.shape == (2, 900, 6)
        assert o.halting_steps.view(2, 30, 30).shape == (2, 30, 30)                      # a 30x30 halting map per maze
        assert o.step_logits.shape[-1] == 6
        _check_invariants(o, b['inputs'] != 0, 4)
        (o.logits.float().mean() + o.ponder_cost.mean()).backward()
        o2 = m(b)                                                                         # default: no per-step record
        assert o2.step_logits is None and o2.halt_cumprob is None and o2.halting_steps.shape == (2, 900)

@pytest.mark.parametrize('task', TOY_TASKS)
def test_toy_shapes_and_padding(task):
    torch.manual_seed(0)
    dm, b = _toy_batch(task)
    mask = b['inputs'] != 0
    assert (~mask).any() or task == 'parity'
    for m in _models(TOY_VOCAB_SIZE, dm.seq_len):
        o = m(b, return_steps=True)
        assert o.logits.shape == (4, dm.seq_len, TOY_VOCAB_SIZE)
        _check_invariants(o, mask, 4)

def test_per_sequence_one_count():
    dm, b = _toy_batch('copy', B=8)
    for m in (_models(TOY_VOCAB_SIZE, dm.seq_len)[1], _models(TOY_VOCAB_SIZE, dm.seq_len)[5]):
        hs = m(b).halting_steps
        for r in range(8): assert hs[r][b['inputs'][r] != 0].unique().numel() == 1

def test_padding_does_not_leak():
    "Real positions' outputs do not depend on what the padding embedding is (attention models mask pad keys)."
    dm, b = _toy_batch('reverse', B=4)
    for m in _models(TOY_VOCAB_SIZE, dm.seq_len)[2:]:
        m.eval(); mask = b['inputs'] != 0
        o1 = m(b).logits.detach()
        with torch.no_grad(): m.embed.weight[0] += 5 * torch.randn_like(m.embed.weight[0])
        o2 = m(b).logits.detach()
        torch.testing.assert_close(o1[mask], o2[mask], atol=1e-4, rtol=1e-4)

def test_budget_and_early_stop():
    b = _maze_batch(B=2, side=6)
    m = ActRNN(ActRNNConfig(vocab_size=6, seq_len=36, hidden_size=8, halt_max_steps=3, halt_bias_init=-20.))
    o = m(b, return_steps=True)
    assert o.num_steps == 3 and (o.halting_steps == 3).all()                             # tiny h: the budget closes
    m = ActRNN(ActRNNConfig(vocab_size=6, seq_len=36, hidden_size=8, halt_max_steps=10, halt_bias_init=20.))
    o = m(b, return_steps=True)
    assert o.num_steps == 1 and (o.halting_steps == 1).all()                             # h ~ 1: one step, loop stops
    u = UniversalTransformer(UTConfig(vocab_size=6, seq_len=36, ut_embedding_size=16, ut_key_depth=16, ut_value_depth=16,
                                      ut_filter_size=16, ut_max_hops=5, ut_act=False))
    o = u(b, return_steps=True)
    assert o.num_steps == 5 and (o.halting_steps == 5).all() and o.ponder_cost is None

@pytest.mark.timeout(600)
def test_parity_notebook(tmp_path):
    "The parity demonstration (papermill, small parameters): halting steps grow with the number of ones."
    out = tmp_path / 'toy_parity.ipynb'
    cmd = [sys.executable, '-m', 'papermill', str(ROOT / 'nbs/experiments/toy_parity.ipynb'), str(out),
           '-p', 'steps', '700', '-p', 'seq_len', '9', '-p', 'seed', '0', '-p', 'out_dir', str(tmp_path), '--cwd', str(ROOT)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=580)
    res = json.loads((tmp_path / 'parity_results.json').read_text())
    assert (tmp_path / 'parity_halting.png').exists()
    assert res['corr_ones'] > 0.2, res
    assert res['accuracy'] > 0.9, res


def test_pondernet_eval_halts_at_cumulative_median():
    "ActRNN with halting_rule='pondernet' in eval mode: each cell stops at the first step whose cumulative p reaches 0.5."
    torch.manual_seed(0)
    m = ActRNN(ActRNNConfig(vocab_size=6, seq_len=36, hidden_size=16, halt_max_steps=6, halting_rule='pondernet',
                            halt_bias_init=-1.)).eval()
    b = _maze_batch(B=2, side=6)
    with torch.no_grad(): o = m(b, return_steps=True)
    p = o.extras['pondernet_p']                                      # [S, B, L] the p_n of the steps run
    first = (p.cumsum(0) >= 0.5).float().argmax(0) + 1               # first step with cumulative p >= 0.5
    assert torch.equal(o.halting_steps, first.float()), (o.halting_steps, first)
    assert o.halting_steps.max() < 6                                 # lambda ~ 0.27: the median comes before the budget
    torch.testing.assert_close(o.logits, o.step_logits.gather(0, (first - 1)[None, ..., None].expand(1, 2, 36, 6))[0].float())

@pytest.mark.timeout(300)
def test_compiled_path_has_no_graph_break_and_same_result():
    "Under torch.compile ActRNN's halting loop runs every step (masked): one graph, and the same outputs as the eager early exit."
    import unittest.mock
    torch.manual_seed(0)
    b = _maze_batch(B=2, side=6)
    models = [ActRNN(ActRNNConfig(vocab_size=6, seq_len=36, hidden_size=8, halt_max_steps=4, halt_bias_init=0.)),
              ActRNN(ActRNNConfig(vocab_size=6, seq_len=36, hidden_size=8, halt_max_steps=4, halting_rule='pondernet', halt_bias_init=0.))]
    for m in models:
        for train_mode in (True, False):
            m.train(train_mode)
            e = torch._dynamo.explain(m)(b)
            assert (e.graph_count, e.graph_break_count) == (1, 0), (m.config.halting_rule, train_mode, e.break_reasons)
        m.eval()
        with torch.no_grad():
            eager = m(b)
            with unittest.mock.patch('torch.compiler.is_compiling', return_value=True): full = m(b)
        assert full.extras['step_probs'].shape[0] == 4
        for k in ('logits', 'halting_steps', 'ponder_cost'): assert torch.equal(getattr(eager, k), getattr(full, k)), (m.config.halting_rule, k)
    assert models[0].eval()(b).extras['step_probs'].shape[0] == 2        # h = 0.5 per step: the eager ACT loop exits after 2
