"""Reward throughput of RL from execution against the naive in-process metric, and where an RL step's time goes.

Measured in one run, on the same programs:

* **reward**: programs/s of the RL ``iou`` reward (:class:`cadcoder.rl.rewards.ExecutionReward`, the
  settings of the RL config: fast mesh-boolean IoU, aligned protocol) on warm sandbox workers: each program
  runs to BREP in its own sandbox child and a clean child scores it (:mod:`cadcoder.clean_scoring`). The
  workers are warmed by one batch first; the timed reward is a fresh one (no cached reference solids), called
  in batches of one RL step's size (``prompts_per_step * group_size`` programs), as the loop calls it;
* **naive**: programs/s of the challenge's naive metric (:func:`common.naive_metric`): ``exec`` each program
  in one process, surface-voxel IoU at pitch 0.05, one pair after another. Like the reward it runs each
  distinct reference once. It ``exec``\\ s untrusted programs, so it runs in a child process of its own
  (:func:`common.naive_metric_isolated`) and times its loop there, imports excluded;
* **RL step**: mean seconds per :func:`cadcoder.rl.loop.rl_step` of generation, execution + reward, and
  the update (policy and reference forwards, backward, optimizer step), as the loop records them
  (``generate_seconds``, ``reward_seconds``, ``update_seconds``), with the RL config's settings (default
  ``configs/rl-quickstart.json``: K=8 programs for each of 4 images per step), after warm-up steps.

Programs: ``--references`` reference programs of the RL training data (default the config's
``data/synth-quickstart``, train split), each with ``--per-reference`` model-like outputs (default K):
every number scaled by its own factor in [1 - spread, 1 + spread] (:func:`common.perturb_numbers`; some
of these no longer build a valid solid), and ``--invalid-fraction`` of them, drawn at random, broken the
way sampled programs break: cut off mid-program (syntax error, missing attribute, no result) or a
``cq.Vector`` with four coordinates (``TypeError``). The same pairs go through both metrics.

The report states the reward's speed-up over the naive metric against the goal of at least
:data:`GOAL_SPEEDUP` times.

Usage:
    python benchmarks/reward_throughput.py                    # default sizes: about 5 min on 2 cores
    python benchmarks/reward_throughput.py --quick --tiny     # smoke: tiny random policy, a few programs
    python benchmarks/reward_throughput.py --workers 4 --references 24 --rl-steps 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import common  # benchmarks/common.py, beside this script

from cadcoder.provenance import git_commit, machine_info, machine_summary, short_commit

PHASES = (("generate_seconds", "generation"), ("reward_seconds", "execution + reward"),
          ("update_seconds", "backward (update: forwards, backward, optimizer step)"))  # fmt: skip
BREAKS = ("truncated", "four_coordinates")
#: What the sandboxed reward is held to: programs/s at least this many times the naive in-process metric's.
GOAL_SPEEDUP = 20.0


def rl_arguments(config: Path, overrides: Sequence[str]) -> Any:
    """The :class:`cadcoder.rl.loop.RLArguments` of ``config`` with ``--key value`` overrides, parsed as train_rl.py does."""
    from transformers import HfArgumentParser

    from cadcoder.rl.loop import RLArguments
    from cadcoder.training import parse_config

    (args,) = parse_config(HfArgumentParser(RLArguments), [str(config), *overrides])
    return args


def load_examples(data: str, count: int, tiny: bool) -> tuple[list[Any], str]:
    """``count`` training examples (image + reference program) of ``data``, and where they came from.

    With ``tiny`` and no ``data`` folder: programs of :func:`cadcoder.synth.generate_program` with blank images.

    Raises:
        FileNotFoundError: ``data`` does not exist (and not ``tiny``); the message names the command that builds it.
    """
    from cadcoder.rl.data import load_rl_examples

    if Path(data).exists():
        return load_rl_examples(data, "train", count, need_programs=True), f"{data} [train]"
    if not tiny:
        raise FileNotFoundError(f"no training data at {data}: build it with `python train.py configs/quickstart.json` "
                                "(it generates data/synth-quickstart first), pass --data, or use --tiny for a smoke run")  # fmt: skip
    from PIL import Image

    from cadcoder.rl.rewards import RLExample
    from cadcoder.synth import generate_program

    blank = Image.new("RGB", (128, 128), "white")
    return [RLExample(blank, generate_program(i, complexity=1), key=f"synth-{i}") for i in range(count)], "generate_program (blank images)"


def _broken(code: str, kind: str, rng: np.random.Generator) -> str:
    """``code`` broken the way a sampled program breaks: cut off mid-way, or a ``cq.Vector`` with four coordinates."""
    if kind == "truncated":
        return code[: int(len(code) * rng.uniform(0.4, 0.95))]
    return code.replace("cq.Vector(", "cq.Vector(0.0, ", 1)


def model_like_pairs(references: Sequence[str], per_reference: int, invalid_fraction: float, spread: float,
                     seed: int) -> tuple[list[str], list[str], list[str]]:
    """Per reference, ``per_reference`` model-like outputs (module docstring): ``(predictions, references, kinds)``.

    ``round(invalid_fraction * total)`` outputs, drawn at random, are broken, the two ways in turn.
    """
    rng = np.random.default_rng(seed)
    refs = [ref for ref in references for _ in range(per_reference)]
    preds = [common.perturb_numbers(ref, rng, spread) for ref in refs]
    kinds = ["perturbed"] * len(preds)
    broken = rng.choice(len(preds), size=round(invalid_fraction * len(preds)), replace=False)
    for n, i in enumerate(sorted(broken.tolist())):
        kinds[i] = BREAKS[n % len(BREAKS)]
        preds[i] = _broken(preds[i], kinds[i], rng)
    return preds, refs, kinds


def reward_throughput(sandbox: Any, rl_args: Any, preds: list[str], examples: list[Any], batch: int) -> dict[str, Any]:
    """The RL reward over ``preds`` (``examples[i]`` holds pred i's reference) in batches of ``batch``, after a warm-up batch."""
    from cadcoder.rl.loop import build_reward

    build_reward(rl_args)(preds[:batch], examples[:batch], sandbox)  # warm-up: start the workers, import cadquery
    reward = build_reward(rl_args)  # fresh: no cached reference solids
    results = []
    t0 = time.perf_counter()
    for i in range(0, len(preds), batch):
        results += reward(preds[i : i + batch], examples[i : i + batch], sandbox)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "programs_per_s": len(preds) / seconds, "valid": sum(r.ok for r in results),
            "failures": dict(Counter(r.status for r in results if not r.ok)), "reward": reward.describe(),
            "ious": [r.iou for r in results]}  # fmt: skip


def naive_throughput(preds: list[str], refs: list[str], timeout: float) -> dict[str, Any]:
    """The naive in-process metric over the same pairs, in its own child process."""
    out = common.naive_metric_isolated(preds, refs, cache_references=True, timeout=timeout)
    valid = sum(v is not None for v in out["ious"])
    return {**out, "programs_per_s": len(preds) / out["seconds"], "valid": valid}


def build_tiny_policy(programs: Sequence[str], max_new_tokens: int) -> tuple[Any, Any]:
    """A tiny random CadCoder (:func:`cadcoder.factory.build_tiny_cadcoder`), tokenizer trained on ``programs``."""
    from cadcoder.factory import build_tiny_cadcoder
    from cadcoder.tokenizer import train_code_tokenizer

    model, processor = build_tiny_cadcoder(train_code_tokenizer(list(programs) * 4, vocab_size=512),
                                           max_new_tokens=max_new_tokens)  # fmt: skip
    return model.eval(), processor


def load_rl_policy(model: str, tiny: bool, programs: Sequence[str], device: str, tiny_new_tokens: int) -> tuple[Any, Any, str]:
    """The policy to step: the checkpoint ``model``, or a tiny random one with ``tiny``; and its description."""
    if tiny:
        model_, processor = build_tiny_policy(programs, tiny_new_tokens)
        return model_.to(device), processor, f"tiny random CadCoder (factory.build_tiny_cadcoder, {tiny_new_tokens} new tokens)"
    from cadcoder.rl.data import load_policy

    model_, processor = load_policy(model, device=device)
    return model_, processor, model


def rl_step_times(policy: Any, processor: Any, examples: list[Any], rl_args: Any, sandbox: Any, steps: int,
                  warmup: int) -> dict[str, Any]:
    """``warmup + steps`` RL steps on ``policy`` (in place); mean / min / max of each recorded phase over the timed steps."""
    import torch

    from cadcoder.rl.data import decoded
    from cadcoder.rl.loop import batch_indices, build_reward, frozen_copy, rl_step

    reward = build_reward(rl_args)
    ref_model = frozen_copy(policy) if rl_args.kl_coef > 0 else None
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=rl_args.learning_rate,
                                  weight_decay=rl_args.weight_decay)  # fmt: skip
    records, warmup_seconds = [], []
    for step in range(warmup + steps):
        batch = [decoded(examples[i]) for i in batch_indices(len(examples), rl_args.prompts_per_step, step, rl_args.seed)]
        record = rl_step(policy, processor, optimizer, batch, reward, sandbox, rl_args, step, ref_model)
        if step >= warmup:
            records.append(record)
        else:
            warmup_seconds.append({key: record[key] for key, _ in PHASES})
    phases = {}
    for key, _ in PHASES:
        values = [r[key] for r in records]
        phases[key] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
    programs = rl_args.prompts_per_step * rl_args.group_size
    return {"steps": steps, "warmup_steps": warmup, "warmup_step_seconds": warmup_seconds, "programs_per_step": programs,
            "phases": phases,
            "step_seconds_mean": sum(p["mean"] for p in phases.values()),
            "reward_programs_per_s": programs / phases["reward_seconds"]["mean"],
            "completion_tokens_mean": statistics.fmean(r["completion_tokens"] for r in records),
            "vsr_mean": statistics.fmean(r["vsr"] for r in records),
            "failures": dict(sum((Counter(r["failures"]) for r in records), Counter()))}  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    """The report's two tables (metric throughput, RL step phases) as markdown."""
    s, rw, nv = report["settings"], report["reward"], report["naive"]
    n = s["programs"]
    lines = [(f"Reward throughput on {report['machine']['cores']} cores ({report['machine']['cpu']}), commit "
              f"{report['commit']}: {n} programs ({s['references']} references x {s['per_reference']}; {s['kinds']})"), "",
             "| metric | programs | seconds | programs/s | x naive | valid | failures |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in ((f"reward: sandboxed execution + fast IoU, {s['workers']} warm workers, clean scoring child", rw),
                      ("naive in-process challenge metric (exec + surface-voxel IoU), 1 process", nv)):
        fails = ", ".join(f"{k} {v}" for k, v in sorted(row["failures"].items())) or "-"
        lines.append(f"| {name} | {n} | {row['seconds']:.2f} | {row['programs_per_s']:.2f} | "
                     f"{row['programs_per_s'] / nv['programs_per_s']:.1f} | {row['valid']} | {fails} |")  # fmt: skip
    speedup = report["speedup"]
    verdict = "met" if speedup >= GOAL_SPEEDUP else "not met"
    lines += ["", f"Sandboxed reward / naive metric: {speedup:.1f}x (goal >= {GOAL_SPEEDUP:g}x: {verdict})."]
    rl = report.get("rl_step")
    if rl:
        lines += ["", (f"RL step ({rl['policy']}; K={s['group_size']} x {s['prompts_per_step']} images = "
                       f"{rl['programs_per_step']} programs; mean of {rl['steps']} steps after {rl['warmup_steps']} "
                       f"warm-up; {rl['completion_tokens_mean']:.0f} completion tokens, VSR {rl['vsr_mean']:.2f})"), "",
                  "| phase | mean s | min s | max s | share |", "|---|---|---|---|---|"]  # fmt: skip
        total = rl["step_seconds_mean"]
        for key, name in PHASES:
            p = rl["phases"][key]
            lines.append(f"| {name} | {p['mean']:.2f} | {p['min']:.2f} | {p['max']:.2f} | {p['mean'] / total:.0%} |")
        lines.append(f"| step | {total:.2f} | | | 100% |")
        warm = ", ".join(f"{sum(w.values()):.1f}" for w in rl["warmup_step_seconds"]) or "none"
        lines += ["", (f"Reward phase inside the RL step: {rl['reward_programs_per_s']:.2f} programs/s. "
                       f"Warm-up steps (not in the table), seconds each: {warm}.")]  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rl-config", type=Path, default=common.REPO / "configs" / "rl-quickstart.json",
                   help="RL settings (reward, K, images per step, workers, timeout, device)")
    p.add_argument("--model", default=None, help="checkpoint to step (default: the config's, outputs/quickstart)")
    p.add_argument("--tiny", action="store_true", help="step a tiny random model instead (smoke runs)")
    p.add_argument("--tiny-new-tokens", type=int, default=48, help="generation length of the --tiny model")
    p.add_argument("--data", default=None, help="training data with reference programs (default: the config's)")
    p.add_argument("--references", type=int, default=12, help="distinct reference programs")
    p.add_argument("--per-reference", type=int, default=None, help="model-like outputs per reference (default: K)")
    p.add_argument("--invalid-fraction", type=float, default=0.25, help="share of outputs broken on purpose")
    p.add_argument("--spread", type=float, default=0.2, help="numbers scaled by factors in [1 - spread, 1 + spread]")
    p.add_argument("--workers", type=int, default=None, help="sandbox workers (default: the config's sandbox_workers)")
    p.add_argument("--group-size", type=int, default=None, help="K, programs per image in an RL step (default: the config's)")
    p.add_argument("--prompts-per-step", type=int, default=None, help="images per RL step (default: the config's)")
    p.add_argument("--rl-steps", type=int, default=3, help="timed RL steps (0: skip the RL step timing)")
    p.add_argument("--rl-warmup-steps", type=int, default=2,
                   help="RL steps run first and not timed (on CPU the first steps' generation can be many times slower)")
    p.add_argument("--naive-timeout", type=float, default=1800.0, help="seconds before the naive metric's child is killed")
    p.add_argument("--seed", type=int, default=0, help="RNG seed of the model-like outputs")
    p.add_argument("--quick", action="store_true", help="smoke sizes: 2 references x 4, K=4 x 2 images, 1 step, no warm-up step")
    p.add_argument("--out", type=Path, default=common.REPO / "outputs" / "benchmarks", help="folder of reward_throughput.json / .md")
    args = p.parse_args(argv)
    if args.quick:
        args.references, args.per_reference, args.rl_steps, args.rl_warmup_steps = 2, 4, min(args.rl_steps, 1), 0
        args.group_size, args.prompts_per_step = args.group_size or 4, args.prompts_per_step or 2
    if args.references < 1 or (args.per_reference is not None and args.per_reference < 1):
        p.error("--references and --per-reference must be >= 1")
    if not 0 <= args.invalid_fraction <= 1 or not 0 <= args.spread < 1:
        p.error("--invalid-fraction must be in [0, 1] and --spread in [0, 1)")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the three measurements, print the tables, write ``<out>/reward_throughput.json`` and ``.md``."""
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from cadcoder.sandbox import Sandbox

    overrides = []
    for flag, value in (("--sandbox_workers", args.workers), ("--group_size", args.group_size),
                        ("--prompts_per_step", args.prompts_per_step)):
        if value is not None:
            overrides += [flag, str(value)]
    rl_args = rl_arguments(args.rl_config, overrides)
    model = args.model or rl_args.model_name_or_path
    device = rl_args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    data = args.data or rl_args.dataset
    per_reference = args.per_reference or rl_args.group_size
    workers = rl_args.sandbox_workers or min(os.cpu_count() or 1, 8)
    examples, source = load_examples(data, args.references, args.tiny)
    references = [ex.program for ex in examples]
    # Loaded before any measurement, so a missing checkpoint fails in seconds, not after the metrics have run.
    policy = load_rl_policy(model, args.tiny, references, device, args.tiny_new_tokens) if args.rl_steps > 0 else None
    preds, refs, kinds = model_like_pairs(references, per_reference, args.invalid_fraction, args.spread, args.seed)
    pair_examples = [ex for ex in examples for _ in range(per_reference)]
    batch = rl_args.prompts_per_step * rl_args.group_size
    kind_counts = dict(Counter(kinds))
    print(machine_summary())
    print(f"commit {short_commit()}; {len(preds)} programs from {len(references)} references of {source} "
          f"({kind_counts}); reward batches of {batch}; {workers} sandbox workers, timeout {rl_args.sandbox_timeout} s", flush=True)  # fmt: skip

    settings = {"rl_config": str(args.rl_config), "model": "tiny" if args.tiny else model, "data": source,
                "references": len(references), "per_reference": per_reference, "programs": len(preds), "kinds": kind_counts,
                "invalid_fraction": args.invalid_fraction, "spread": args.spread, "seed": args.seed, "workers": workers,
                "timeout": rl_args.sandbox_timeout, "reward_batch": batch, "group_size": rl_args.group_size,
                "prompts_per_step": rl_args.prompts_per_step, "device": device, "bf16": rl_args.bf16,
                "micro_batch_size": rl_args.micro_batch_size, "kl_coef": rl_args.kl_coef, "quick": args.quick}  # fmt: skip
    report: dict[str, Any] = {"machine": machine_info(), "commit": short_commit(), "git": git_commit(), "settings": settings}
    with Sandbox(num_workers=workers, timeout=rl_args.sandbox_timeout) as sandbox:
        report["reward"] = reward_throughput(sandbox, rl_args, preds, pair_examples, batch)
        print(f"reward: {report['reward']['programs_per_s']:.2f} programs/s", flush=True)
        report["naive"] = naive_throughput(preds, refs, args.naive_timeout)
        print(f"naive:  {report['naive']['programs_per_s']:.2f} programs/s", flush=True)
        report["speedup"] = report["reward"]["programs_per_s"] / report["naive"]["programs_per_s"]
        report["goal_speedup"] = GOAL_SPEEDUP
        if policy is not None:
            policy_model, processor, name = policy
            report["rl_step"] = {"policy": name, **rl_step_times(policy_model, processor, examples, rl_args, sandbox,
                                                                 args.rl_steps, args.rl_warmup_steps)}  # fmt: skip
    table = markdown(report)
    path = common.write_report(args.out, "reward_throughput", report, markdown=table)
    print("\n" + table + f"\nwrote {path}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
