"""Universal Transformer: `hidden_size` is the width (issue 18), the runbook's flags, old checkpoints load."""
import dataclasses
import pytest
import torch
from halting_lab.models.universal_transformer import UniversalTransformer, UTConfig, is_v1_config

RUNBOOK = dict(ut_embedding_size=64, ut_heads=4, ut_key_depth=256, ut_value_depth=256, ut_filter_size=256)

def nparams(model): return sum(p.numel() for p in model.parameters())

def test_param_count_scales_with_hidden_size():
    counts = {h: nparams(UniversalTransformer(UTConfig(vocab_size=6, seq_len=900, hidden_size=h, ut_pos_bias='none', **RUNBOOK)))
              for h in (64, 128, 256, 512)}
    assert counts[64] < counts[128] < counts[256] < counts[512]
    assert counts[64] == 99911                    # equal sizes: no projection, the earlier width-64 model
    with_bias = nparams(UniversalTransformer(UTConfig(vocab_size=6, seq_len=900, hidden_size=512, **RUNBOOK)))
    assert with_bias - counts[512] == 4 * 59 ** 2  # default on a square grid: one bias per head and 2-D offset
    m = UniversalTransformer(UTConfig(vocab_size=6, seq_len=900, hidden_size=512, **RUNBOOK))
    assert m.embed.weight.shape == (6, 64) and m.proj.weight.shape == (512, 64)
    assert m.block.q.weight.shape == (256, 512) and m.block.ff[0].weight.shape == (256, 512)
    assert m.halt.weight.shape == (1, 512) and m.head.weight.shape == (6, 512)
    assert m.pos_signal.shape == (900, 512) and m.step_signal.shape == (6, 512)

def test_runbook_flags_set_the_width():
    "The runbook's command line builds a 512-wide model (flags parsed as `halting-lab train` does)."
    from halting_lab.train.config import parse_train_args, params_to_configs
    argv = ['--task', 'maze', '--model_type', 'universal_transformer', '--data_dir', 'x', '--hidden_size', '512',
            '--ut_embedding_size', '64', '--ut_heads', '4', '--ut_key_depth', '256', '--ut_value_depth', '256',
            '--ut_filter_size', '256', '--ut_max_hops', '6', '--ut_act', '--ut_act_loss_weight', '0.001']
    tc, mc = params_to_configs(parse_train_args(argv))
    assert (mc.hidden_size, mc.ut_embedding_size, mc.halt_max_steps, mc.ut_act) == (512, 64, 6, True)
    assert nparams(UniversalTransformer(dataclasses.replace(mc, seq_len=900))) == 827_079 + 4 * 59 ** 2   # was 99,911

def test_help_says_what_each_flag_is():
    from halting_lab.train.config import build_parser
    text = build_parser().format_help()
    for flag in ('--ut_embedding_size', '--ut_key_depth', '--ut_max_hops', '--ut_pos_bias', '--ut_act_type', '--ut_inner_layers'):
        assert flag in text
    assert 'projected to --hidden_size' in text and 'Manhattan distance' in text

def _old_config(**kw):
    "A model config as the earlier class stored it (`dataclasses.asdict`): width ut_embedding_size, hidden_size ignored."
    return {'model_type': 'universal_transformer', 'vocab_size': 6, 'seq_len': 25, 'num_puzzle_identifiers': 1,
            'hidden_size': 512, 'ut_embedding_size': 16, 'ut_heads': 2, 'ut_key_depth': 16, 'ut_value_depth': 16,
            'ut_filter_size': 32, 'ut_max_hops': 3, 'ut_act': True, 'ut_act_type': 'basic', 'ut_act_epsilon': 0.01,
            'ut_act_loss_weight': 0.001, 'halt_bias_init': 1.0, 'dropout': 0.0, 'pad_id': 0, **kw}

def _old_weights(seed=0):
    "Weights in the earlier layout: one 16-wide block, no projection (the state_dict keys it wrote)."
    torch.manual_seed(seed)
    ref = UniversalTransformer(UTConfig(vocab_size=6, seq_len=25, hidden_size=16, ut_embedding_size=16, ut_heads=2,
                                        ut_key_depth=16, ut_value_depth=16, ut_filter_size=32, halt_max_steps=3,
                                        ut_act=True, ut_pos_bias='none'))
    sd = ref.state_dict()
    assert not any(k.startswith('proj.') for k in sd) and sd['embed.weight'].shape == (6, 16)
    return ref.eval(), sd

def test_old_checkpoint_loads(tmp_path):
    import halting_lab
    old = _old_config()
    assert is_v1_config(old)
    ref, sd = _old_weights()
    ck = {'epoch': 3, 'global_step': 30, 'state_dict': {f'model.{k}': v for k, v in sd.items()},
          'halting_lab': {'format': 1, 'model_type': 'universal_transformer', 'model_config': old,
                          'train_config': {'task': 'maze'}, 'has_ema': False, 'mid_epoch': False},
          'hyper_parameters': {'train_cfg': {'task': 'maze'}, 'model_cfg': old, 'model_type': 'universal_transformer'}}
    path = tmp_path / 'old.ckpt'
    torch.save(ck, path)
    m = halting_lab.load_checkpoint(path)
    assert (m.config.hidden_size, m.config.halt_max_steps, m.pos_bias, m.proj) == (16, 3, None, None)
    x = torch.randint(1, 6, (4, 25))
    with torch.no_grad():
        a, b = m({'inputs': x}), ref({'inputs': x})
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.halting_steps, b.halting_steps)

def test_old_config_in_lightning_module():
    "Resuming/`load_from_checkpoint` build the model from the stored hyper-parameters: same width there."
    from halting_lab.train.lightning import HaltingLitModule
    lit = HaltingLitModule({'task': 'maze', 'use_ema': False}, _old_config(), 'universal_transformer')
    _, sd = _old_weights()
    lit.model.load_state_dict(sd)                 # strict: same keys and shapes
    assert lit.model.config.hidden_size == 16

def test_halt_max_steps_is_canonical():
    c = UTConfig(ut_max_hops=4)
    assert c.halt_max_steps == 4 and c.ut_max_hops == 4
    d = dataclasses.asdict(c)
    assert d["halt_max_steps"] == 4 and "ut_max_hops" not in d and not is_v1_config(d)
    assert UTConfig(**d).halt_max_steps == 4
    assert dataclasses.replace(c, halt_max_steps=2).halt_max_steps == 2
    assert UniversalTransformer(UTConfig(seq_len=9, hidden_size=8, ut_embedding_size=8, ut_key_depth=8, ut_value_depth=8,
                                         ut_filter_size=8, ut_max_hops=5)).criterion().max_steps == 5
