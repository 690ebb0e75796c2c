"""RL from execution: group advantages, the clipped loss, rewards through the sandbox that monkeypatching cannot
raise, bad input that names the fix, resume after a kill, and a tiny model that learns what a toy reward favours."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from cadcoder.rl.loop import RLArguments, train_rl
from cadcoder.rl.policy import completion_mask, group_advantages, grpo_loss, token_log_probs
from cadcoder.rl.rewards import ExecutionReward, RLExample

FAVOURED = "solid = cq.Workplane('XY').box(1.0, 1.0, 1.0)"
OTHER = "solid = cq.Workplane('XY').sphere(0.5)"


# ---------------------------------------------------------------------------------------------- the maths
def test_group_advantages_normalise_within_each_group_and_zero_a_constant_group():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, -10.0, -10.0, -10.0, -10.0])
    adv = group_advantages(rewards, group_size=4)
    assert torch.allclose(adv[:4].mean(), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(adv[:4].std(), torch.tensor(1.0), atol=1e-3)
    assert torch.equal(adv[4:], torch.zeros(4))
    assert torch.allclose(group_advantages(rewards, 4, scale=False)[:4], torch.tensor([-1.5, -0.5, 0.5, 1.5]))
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        group_advantages(rewards, group_size=1)


def test_completion_mask_keeps_tokens_through_the_first_eos():
    tokens = torch.tensor([[5, 6, 0, 0, 0], [5, 0, 7, 0, 0], [5, 6, 7, 8, 9]])
    assert completion_mask(tokens, eos_token_id=0).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_clipped_loss_stops_the_gradient_outside_the_trust_region_and_kl_is_zero_at_the_reference():
    logp = torch.zeros(1, 3, requires_grad=True)
    old = torch.tensor([[0.0, -1.0, 0.0]])  # token 1: ratio e > 1 + eps with a positive advantage -> clipped
    mask = torch.ones(1, 3)
    loss, stats = grpo_loss(logp, old, logp.detach(), torch.tensor([1.0]), mask, 0.2, 0.1, num_tokens=3)
    loss.backward()
    assert logp.grad[0, 1] == 0 and logp.grad[0, 0] < 0 and logp.grad[0, 2] < 0
    assert stats["clipped"] == 1 and stats["kl"] == 0


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_errors_name_the_fix(tmp_path, sample_images, make_tiny_cadcoder):
    from cadcoder.rl.data import load_policy, load_rl_examples

    with pytest.raises(ValueError, match="group_size .*K >= 2"):
        RLArguments(group_size=1)
    images = tmp_path / "images"
    images.mkdir()
    sample_images[0].save(images / "part.png")
    with pytest.raises(ValueError, match="'iou' reward needs a reference program.*--reward render"):
        load_rl_examples(images, need_programs=True)
    assert load_rl_examples(images, need_programs=False)[0].program is None
    with pytest.raises(ValueError, match="no training images.*cadcoder synth"):
        load_rl_examples(images, max_samples=0, need_programs=False)
    model, processor = make_tiny_cadcoder()
    with pytest.raises(ValueError, match="no training examples"):
        train_rl(model, processor, [], lambda p, e, s: [0.0] * len(p), RLArguments(output_dir=str(tmp_path / "o")))
    with pytest.raises(ValueError, match="'iou' reward needs a reference program"):
        train_rl(model, processor, [RLExample(sample_images[0])], ExecutionReward("iou"),
                 RLArguments(output_dir=str(tmp_path / "o")))
    model.save_pretrained(tmp_path / "no_processor")  # weights and config, no processor
    with pytest.raises((FileNotFoundError, ValueError), match="processor"):
        load_policy(tmp_path / "no_processor", device="cpu")


# ---------------------------------------------------------------------------------------------- rewards
REFERENCE_PROGRAM = "solid = cq.Workplane('XY').box(1.0, 2.0, 1.0)"
HONEST = "solid = cq.Workplane('XY').box(1.0, 2.0, 0.5).faces('>Z').workplane().hole(0.4)"
A = "a = cq.Workplane('XY').box(1.0, 2.0, 0.5)\n"
B = "b = cq.Workplane('XY').box(0.4, 0.4, 1.5)\n"
# name -> (program, the honest program that builds the same solid)
HACKS = {
    "patched Volume": ("cq.Shape.Volume = lambda self: 1.0\n" + HONEST, HONEST),
    "patched intersect/fuse": ("cq.Shape.intersect = lambda self, *a, **k: self\ncq.Shape.fuse = lambda self, *a, **k: self\n"
                               "cq.Workplane.intersect = lambda self, *a, **k: self\n" + HONEST, HONEST),
    "patched isValid": ("cq.Shape.isValid = lambda self: True\n" + HONEST, HONEST),
    "patched reference loader": ("mine = cq.Workplane('XY').box(1.0, 2.0, 0.5).faces('>Z').workplane().hole(0.4).val()\n"
                                 "cq.Shape.importBrep = lambda f: mine\n" + HONEST, HONEST),
    "patched numpy": ("import numpy as np\nnp.argmax = lambda *a, **k: 0\nnp.minimum = lambda a, b, *x, **k: a\n" + HONEST, HONEST),
    "patched BREP writer": ("cq.occ_impl.shapes.BRepTools.Write_s = lambda *a, **k: True\n" + HONEST, HONEST),
    "patched exporter": ("cq.exporters.export = lambda *a, **k: None\n" + HONEST, HONEST),
    "printed fake score": ("print('{\"iou\": 1.0, \"reward\": 10.0}')\n" + HONEST, HONEST),
    "same solid twice": (A + "solid = [a, a]", A + "solid = a"),
    "two overlapping solids": (A + B + "solid = [a, b]", A + B + "solid = a.union(b)"),
}


@pytest.fixture(scope="module")
def sandbox():
    from cadcoder.sandbox import Sandbox

    with Sandbox(num_workers=2, timeout=5) as sb:
        yield sb


@pytest.fixture(scope="module")
def reference_image(sandbox):
    from cadcoder.render import render_program

    return render_program(REFERENCE_PROGRAM, size=224, sandbox=sandbox)


@pytest.mark.parametrize("kind", ["iou", "render"])
def test_reward_hacks_score_exactly_the_honest_solid_or_fail(kind, sandbox, reference_image):
    reward = ExecutionReward(kind, fast=True)
    names = list(HACKS)
    programs = [HACKS[n][0] for n in names] + [HACKS[n][1] for n in names]
    results = reward(programs, [RLExample(reference_image, REFERENCE_PROGRAM)] * len(programs), sandbox)
    hacked, honest = results[: len(names)], results[len(names):]
    assert all(h.ok and 0 < h.reward < 10 for h in honest), [(h.status, h.error) for h in honest]
    failed = set()
    for name, got, want in zip(names, hacked, honest):
        if got.ok:
            assert got.reward == pytest.approx(want.reward, abs=1e-9), name
        else:
            assert got.reward == -reward.failure_penalty, name
            failed.add(name)
    assert failed <= {"patched BREP writer", "patched exporter"}, failed
    assert {"patched reference loader", "patched Volume", "two overlapping solids"}.isdisjoint(failed)


def test_failures_earn_the_penalty_with_their_reason_and_weights_are_config(sandbox, reference_image):
    reward = ExecutionReward("iou", failure_penalty=3.0, iou_weight=2.0)
    programs = ["solid = cq.Workplane(.box(", "while True:\n    pass", "x = 1", REFERENCE_PROGRAM]
    results = reward(programs, [RLExample(reference_image, REFERENCE_PROGRAM)] * 4, sandbox)
    assert [r.status for r in results[:3]] == ["syntax_error", "timeout", "no_result"]
    assert all(r.reward == -3.0 and r.error for r in results[:3])
    assert results[3].ok and results[3].iou == pytest.approx(1.0, abs=1e-6) and results[3].reward == pytest.approx(2.0, abs=2e-6)
    with pytest.raises(ValueError, match="failure_penalty"):
        ExecutionReward("iou", failure_penalty=-10.0)


def test_no_penalty_reads_zero_in_the_card_not_minus_zero():
    reward = ExecutionReward("render", failure_penalty=0.0)
    assert reward.describe().endswith(", 0 for a failure")
    assert "-0" not in reward.describe()


# ---------------------------------------------------------------------------------------------- learning
def _favoured_reward(programs, examples, sandbox):
    """The toy reward: 1 for the favoured program, 0 for anything else (no sandbox needed)."""
    return [1.0 if p.strip() == FAVOURED else 0.0 for p in programs]


@pytest.fixture(scope="module")
def warm_start(tiny_tokenizer, sample_images, tmp_path_factory):
    """A tiny CadCoder taught to write FAVOURED or OTHER about equally often, saved as a checkpoint folder."""
    from cadcoder.factory import build_tiny_cadcoder

    torch.manual_seed(0)
    model, processor = build_tiny_cadcoder(copy.deepcopy(tiny_tokenizer), image_size=64, n_layer=1, n_embd=64)
    images = sample_images[:2] * 2
    batch = processor(images=images, text=[FAVOURED, FAVOURED, OTHER, OTHER], return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(100):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("start")
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _log_prob(model, processor, image, program) -> float:
    """log p(program + EOS | image) under the model, teacher-forced."""
    inputs = processor(images=[image], return_tensors="pt")
    ids = processor.tokenizer(program, add_special_tokens=False)["input_ids"] + [processor.tokenizer.eos_token_id]
    completion = torch.tensor([ids])
    with torch.no_grad():
        return float(token_log_probs(model, inputs["pixel_values"], inputs["input_ids"], completion,
                                     torch.ones_like(completion, dtype=torch.float32)).sum())


def _args(output_dir, **overrides) -> RLArguments:
    settings = dict(model_name_or_path="tiny-start", output_dir=str(output_dir), group_size=8, prompts_per_step=2,
                    max_steps=4, learning_rate=3e-4, kl_coef=0.04, max_new_tokens=40, micro_batch_size=16, save_steps=1)
    return RLArguments(**{**settings, **overrides})


def test_toy_reward_raises_the_favoured_programs_log_prob_and_the_result_reloads(warm_start, sample_images, tmp_path):
    from transformers import AutoModel

    from cadcoder.rl.data import load_policy
    from cadcoder.rl.state import save_rl_model

    model, processor = load_policy(warm_start, device="cpu")
    image = sample_images[0]
    before = {p: _log_prob(model, processor, image, p) for p in (FAVOURED, OTHER)}
    examples = [RLExample(im, None, f"img{i}") for i, im in enumerate(sample_images[:2])]
    args = _args(tmp_path / "rl", model_name_or_path=str(warm_start), max_steps=5)
    summary = train_rl(model, processor, examples, _favoured_reward, args, progress=False)
    after = {p: _log_prob(model, processor, image, p) for p in (FAVOURED, OTHER)}
    assert after[FAVOURED] > before[FAVOURED] + 0.1, (before, after)
    assert after[OTHER] < before[OTHER], (before, after)
    records = [json.loads(line) for line in (tmp_path / "rl" / "rl_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5] and summary["steps"] == 5
    assert {"reward_mean", "reward_std", "vsr", "iou_mean", "kl", "clip_fraction", "generate_seconds"} <= set(records[0])

    out = save_rl_model(tmp_path / "rl", model, processor, args.__dict__, "toy: 1 for the favoured program", summary)
    reloaded = AutoModel.from_pretrained(out, trust_remote_code=True)
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in reloaded.state_dict().items())
    card = (out / "README.md").read_text()
    assert "RL-tuned" in card and str(warm_start) in card and "`iou` reward" in card and "reinforcement-learning" in card


def test_a_killed_run_resumes_to_the_same_weights(warm_start, sample_images, tmp_path):
    from cadcoder.rl.data import load_policy

    examples = [RLExample(im, None, f"img{i}") for i, im in enumerate(sample_images[:2])]
    straight, processor = load_policy(warm_start, device="cpu")
    train_rl(straight, processor, examples, _favoured_reward, _args(tmp_path / "straight"), progress=False)

    calls = []

    def killed_at_step_3(programs, examples, sandbox):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return _favoured_reward(programs, examples, sandbox)

    model, processor = load_policy(warm_start, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train_rl(model, processor, examples, killed_at_step_3, _args(tmp_path / "killed"), progress=False)
    model, processor = load_policy(warm_start, device="cpu")  # a new process starts from the checkpoint again
    summary = train_rl(model, processor, examples, _favoured_reward, _args(tmp_path / "killed"), progress=False)
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4
    expected = straight.state_dict()
    assert all(torch.allclose(v, expected[k], atol=1e-6) for k, v in model.state_dict().items())
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "rl_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
