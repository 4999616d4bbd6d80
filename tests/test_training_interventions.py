"""Interventions during training (``train.interventions``) against ground truth."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from icl_circuits.config import RunConfig, apply_overrides
from icl_circuits.errors import ConfigError
from icl_circuits.intervention_config import InterventionConfig
from icl_circuits.models.build import build_native, query_logits
from icl_circuits.runs.read import load_config, read_metrics
from icl_circuits.runs.store import list_checkpoints, load_checkpoint
from icl_circuits.training import trainer
from icl_circuits.training.ensemble import train_ensemble
from icl_circuits.training.interventions import Interventions, fork_run, previous_token_pattern
from icl_circuits.training.optim import l2_penalty
from tests.conftest import tiny_config


def with_interventions(*ivs: InterventionConfig, **train) -> RunConfig:
    cfg = tiny_config(**{"steps": 12, "n_checkpoints": 4, **train})
    return cfg.replace(train=cfg.train.replace(interventions=ivs))


def weights(run, step) -> dict[str, torch.Tensor]:
    return load_checkpoint(run, step)["model"]


def model_and_batch(cfg: RunConfig):
    source = cfg.data.build_source(cfg.seed)
    model = build_native(cfg.model, seed=cfg.seed, **cfg.data.model_shape())
    return model, source.train_batch(0, 16)


# ----------------------------------------------------------------------------- config
def test_interventions_round_trip_through_config_json_and_overrides(tmp_path):
    iv = InterventionConfig(kind="ablate", targets=("L1H0",), method="mean", start=4, end=8)
    cfg = with_interventions(iv)
    over = apply_overrides(
        tiny_config(steps=12, n_checkpoints=4),
        ['train.interventions=[{"kind": "ablate", "targets": ["L1H0"], "method": "mean", "start": 4, "end": 8}]'],
    )
    assert over == cfg
    run = trainer.train(cfg, tmp_path / "run", progress=False)
    stored = json.loads((run / "config.json").read_text())["train"]["interventions"]
    assert stored == [{"kind": "ablate", "targets": ["L1H0"], "method": "mean", "start": 4, "end": 8}]
    assert load_config(run) == cfg


@pytest.mark.parametrize(
    ("iv", "message"),
    [
        ({"kind": "ablate", "targets": ["L0H7"]}, "train.interventions[0].targets: head L0H7 does not exist"),
        ({"kind": "freeze", "targets": ["layers.5"]}, "train.interventions[0].targets: no parameter of the model"),
        ({"kind": "freeze", "targets": ["L2H0"]}, "train.interventions[0].targets: head L2H0 does not exist"),
        ({"kind": "freeze", "targets": ["head.nope[0:2]"]}, "train.interventions[0].targets: no parameter"),
        ({"kind": "freeze", "targets": ["layers.0.attn.q.weight[0:999]"]}, "train.interventions[0].targets: layers"),
    ],
)
def test_a_missing_head_or_module_is_one_line(tmp_path, iv, message):
    cfg = apply_overrides(tiny_config(steps=4), [f"train.interventions={json.dumps([iv])}"])
    with pytest.raises(ConfigError) as err:
        trainer.train(cfg, tmp_path / "run", progress=False)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists(), "checked before the folder is made"


@pytest.mark.parametrize(
    ("iv", "field"),
    [
        ({"kind": "ablate", "targets": ["head0"]}, "train.interventions[0].targets"),
        ({"kind": "pattern", "targets": ["L0H0"]}, "train.interventions[0].method"),
        ({"kind": "ablate", "targets": ["L0H0"], "start": 5, "end": 3}, "train.interventions[0].end"),
        ({"kind": "path", "targets": ["mlp"]}, "train.interventions[0].targets"),
        ({"kind": "kill", "targets": ["L0H0"]}, "train.interventions[0].kind"),
        ({"kind": "freeze", "targets": ["head.mlp.0.weight[4:2]"]}, "train.interventions[0].targets"),
    ],
)
def test_bad_intervention_fields_are_one_line(iv, field):
    with pytest.raises(ConfigError) as err:
        apply_overrides(tiny_config(), [f"train.interventions={json.dumps([iv])}"])
    assert str(err.value).startswith(f"{field}: ") and "\n" not in str(err.value)


def test_the_vectorised_seeds_refuse_interventions_in_one_line(tmp_path):
    cfg = with_interventions(InterventionConfig(kind="ablate", targets=("L0H0",)))
    with pytest.raises(ConfigError, match=r"^train.interventions: the vectorised seeds do not apply"):
        train_ensemble(cfg, [0, 1], [tmp_path / "a", tmp_path / "b"], progress=False)


# ----------------------------------------------------------------------------- no interventions
def _unmodified_step(self, lr, inputs, step):
    """``SingleModel.step`` without the intervention hooks."""
    tc, (tokens, target) = self.tc, inputs
    for group in self.optimizer.param_groups:
        group["lr"] = lr
    loss = F.cross_entropy(query_logits(self.step_model, tokens), target)
    total = loss + tc.l2 * l2_penalty(self.decayed) if tc.l2 > 0 and self.decayed else loss
    self.optimizer.zero_grad(set_to_none=True)
    total.backward()
    if tc.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
    self.optimizer.step()
    return loss.detach().reshape(1)


def test_no_interventions_train_bitwise_as_the_unmodified_step(tmp_path, monkeypatch):
    cfg = tiny_config(steps=12, n_checkpoints=4, l2=1e-3, grad_clip=1.0)
    ours = trainer.train(cfg, tmp_path / "ours", progress=False)
    monkeypatch.setattr(trainer.SingleModel, "step", _unmodified_step)
    plain = trainer.train(cfg, tmp_path / "plain", progress=False)
    for step in list_checkpoints(plain):
        a, b = weights(ours, step), weights(plain, step)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics(ours).equals(read_metrics(plain))


def test_steps_before_an_intervention_are_bitwise_the_plain_run(tmp_path):
    plain = trainer.train(tiny_config(steps=12, n_checkpoints=12), tmp_path / "plain", progress=False)
    cfg = tiny_config(steps=12, n_checkpoints=12)
    cfg = cfg.replace(
        train=cfg.train.replace(interventions=(InterventionConfig(kind="ablate", targets=("L1H1",), start=6),))
    )
    run = trainer.train(cfg, tmp_path / "iv", progress=False)
    for step in list_checkpoints(run):
        a, b = weights(run, step), weights(plain, step)
        same = all(torch.equal(a[k], b[k]) for k in a)
        assert same == (step <= 6), step


# ----------------------------------------------------------------------------- ground truth
def test_a_clamped_pattern_is_that_pattern_at_every_training_step(tmp_path, monkeypatch):
    """The pattern head L1H0 multiplies its values with is the previous-token pattern at every
    step in range (z = pattern @ v, checked at hook_z), and only there."""
    seen: list[int] = []
    hooks = Interventions.hooks

    def checked(self, step, batch):
        out = hooks(self, step, batch)
        state = {}

        def grab_v(v, hook):
            state["v"] = v  # [batch, pos, head, d_head]
            return v

        def check_z(z, hook):
            n_pos = z.shape[1]
            expect = previous_token_pattern(n_pos) @ state["v"][:, :, 0]
            torch.testing.assert_close(z[:, :, 0], expect, rtol=0, atol=1e-6)
            seen.append(step)
            return z

        return [*out, ("blocks.1.attn.hook_v", grab_v), ("blocks.1.attn.hook_z", check_z)] if out else out

    monkeypatch.setattr(Interventions, "hooks", checked)
    iv = InterventionConfig(kind="pattern", targets=("L1H0",), method="previous_token", start=2, end=9)
    trainer.train(with_interventions(iv), tmp_path / "run", progress=False)
    # Every training step 2..8, plus the evaluations at checkpoints whose last step is in range.
    assert set(range(2, 9)) <= set(seen) and set(seen) <= set(range(2, 9))


def test_the_induction_clamp_sets_the_query_row():
    cfg = tiny_config()
    model, batch = model_and_batch(cfg)
    iv = Interventions(model, [InterventionConfig(kind="pattern", targets=("L1H1",), method="induction")])
    got = {}

    def grab(pattern, hook):
        got["p"] = pattern
        return pattern

    with iv.bridge.hooks(fwd_hooks=[*iv.hooks(0, batch), ("blocks.1.attn.hook_pattern", grab)]):
        iv.bridge(batch.tokens())
    match = batch.query_in_context()
    assert match.any(1).all()
    row = got["p"][:, 1, -1]
    labels = batch.item_pos()[:-1] + 1
    expect = match.float() / match.float().sum(1, keepdim=True)
    torch.testing.assert_close(row[:, labels], expect)
    assert row.sum(1).allclose(torch.ones(len(batch)))


def test_a_frozen_module_and_head_stay_bitwise_unchanged(tmp_path):
    ivs = (
        InterventionConfig(kind="freeze", targets=("layers.0.attn", "L1H1"), start=3),
        InterventionConfig(kind="freeze", targets=("head",), start=3, end=8),
    )
    cfg = with_interventions(*ivs, n_checkpoints=12, optimizer="adamw", weight_decay=0.1, l2=1e-3, grad_clip=0.5)
    run = trainer.train(cfg, tmp_path / "run", progress=False)
    start = weights(run, 3)
    d_head = cfg.model.d_model // cfg.model.n_heads
    rows = slice(d_head, 2 * d_head)
    for step in [s for s in list_checkpoints(run) if s > 3]:
        w = weights(run, step)
        for name in start:
            if name.startswith("layers.0.attn."):
                assert torch.equal(w[name], start[name]), (step, name)
        for lin in ("q", "k", "v"):
            for kind in ("weight", "bias"):
                name = f"layers.1.attn.{lin}.{kind}"
                assert torch.equal(w[name][rows], start[name][rows]), (step, name)
                assert not torch.equal(w[name][:d_head], start[name][:d_head]), "head 0 trains"
        assert torch.equal(w["layers.1.attn.o.weight"][:, rows], start["layers.1.attn.o.weight"][:, rows])
        head_frozen = all(torch.equal(w[n], start[n]) for n in start if n.startswith("head."))
        assert head_frozen == (step <= 8), step
        assert not torch.equal(w["tok_embed.encoder.weight"], start["tok_embed.encoder.weight"])


def test_frozen_rows_of_one_parameter_stay_bitwise_unchanged_and_the_others_train(tmp_path):
    name = "layers.0.attn.q.weight"
    cfg = with_interventions(InterventionConfig(kind="freeze", targets=(f"{name}[1:3]",), start=2), n_checkpoints=12)
    run = trainer.train(cfg, tmp_path / "run", progress=False)
    start = weights(run, 2)[name]
    for step in [s for s in list_checkpoints(run) if s > 2]:
        w = weights(run, step)[name]
        assert torch.equal(w[1:3], start[1:3]), step
        assert not torch.equal(w[3:], start[3:]) and not torch.equal(w[:1], start[:1]), "the other rows train"


@pytest.mark.parametrize("method", ["zero", "mean"])
def test_an_ablated_head_gets_no_gradient_through_its_output(method):
    cfg = tiny_config()
    model, batch = model_and_batch(cfg)
    iv = Interventions(model, [InterventionConfig(kind="ablate", targets=("L0H1",), method=method)])
    F.cross_entropy(iv.logits(model, batch.tokens(), batch, 0), batch.target).backward()
    attn = model.layers[0].attn
    d = attn.d_head
    for lin in (attn.q, attn.k, attn.v):
        assert torch.equal(lin.weight.grad[d : 2 * d], torch.zeros_like(lin.weight.grad[d : 2 * d]))
        assert torch.equal(lin.bias.grad[d : 2 * d], torch.zeros_like(lin.bias.grad[d : 2 * d]))
        assert lin.weight.grad[:d].abs().sum() > 0, "the other head still learns"
    o_grad = attn.o.weight.grad[:, d : 2 * d]
    # Zero: the head writes nothing; mean: its constant mean output is still read through W_O.
    assert (o_grad.abs().sum() == 0) == (method == "zero")


def test_a_cut_path_removes_the_query_embedding_from_the_readout_only():
    """Ground truth: the readout of (final residual at the query minus the query's embedding)."""
    cfg = tiny_config()
    model, batch = model_and_batch(cfg)
    iv = Interventions(model, [InterventionConfig(kind="path", targets=("embed",))])
    tokens = batch.tokens()
    got = iv.logits(model, tokens, batch, 0)
    _, cache = iv.bridge.run_with_cache(tokens)
    resid = cache["blocks.1.hook_resid_post"][:, -1] - cache["blocks.0.hook_resid_pre"][:, -1]
    torch.testing.assert_close(got, model.head(model.ln_out(resid)))
    # A head's direct path: its z @ W_O slice at the query.
    iv = Interventions(model, [InterventionConfig(kind="path", targets=("L0H1",))])
    d = model.layers[0].attn.d_head
    out = cache["blocks.0.attn.hook_z"][:, -1, 1] @ model.layers[0].attn.o.weight[:, d : 2 * d].T
    expect = model.head(model.ln_out(cache["blocks.1.hook_resid_post"][:, -1] - out))
    torch.testing.assert_close(iv.logits(model, tokens, batch, 0), expect)


# ----------------------------------------------------------------------------- resume and fork
def test_a_run_with_interventions_resumes_exactly(tmp_path):
    ivs = (
        InterventionConfig(kind="ablate", targets=("L0H0",), method="mean", start=2, end=10),
        InterventionConfig(kind="pattern", targets=("L1H1",), method="induction", start=4),
        InterventionConfig(kind="freeze", targets=("L1H0",), start=5),
        InterventionConfig(kind="path", targets=("embed",), method="mean", start=6),
    )
    cfg = with_interventions(*ivs, n_checkpoints=6)
    whole = trainer.train(cfg, tmp_path / "whole", progress=False)
    split = tmp_path / "split"
    trainer.train(cfg, split, progress=False, stop_after=5)
    assert list_checkpoints(split)[-1] < cfg.train.steps
    trainer.train(cfg, split, progress=False)
    a, b = weights(whole, 12), weights(split, 12)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics(whole).equals(read_metrics(split))


def test_a_fork_from_a_checkpoint_equals_the_run_with_interventions_throughout(tmp_path):
    base = trainer.train(tiny_config(steps=12, n_checkpoints=12), tmp_path / "base", progress=False)
    iv = InterventionConfig(kind="ablate", targets=("L1H0",), start=5)
    cfg = tiny_config(steps=12, n_checkpoints=12)
    cfg = cfg.replace(train=cfg.train.replace(interventions=(iv,)))
    whole = trainer.train(cfg, tmp_path / "whole", progress=False)
    fork = trainer.train(cfg, fork_run(base, 5, cfg, tmp_path / "fork"), progress=False)
    a, b = weights(whole, 12), weights(fork, 12)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics(whole).equals(read_metrics(fork))
    early = cfg.replace(train=cfg.train.replace(interventions=(iv.replace(start=4),)))
    with pytest.raises(Exception, match="must be"):
        fork_run(base, 5, early, tmp_path / "early")
