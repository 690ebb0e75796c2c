"""Execution-guided inference: greedy vs first_valid@N vs render_compare@N vs the oracle best-of-N.

On a held-out synthetic test set (default: the test split of the quickstart dataset, which ``train.py``
never trains on) and a trained model folder (default: the quickstart output), one run measures:

* ``greedy``: one greedy program per image;
* ``first_valid@N``: greedy first, then samples, the first that executes to a valid solid;
* ``render_compare@N``: greedy + N-1 samples, all executed and rendered, the render most like the input wins;
* ``oracle best-of-N``: the same N candidates as render_compare, the one with the highest true IoU against
  the reference (how CAD-Recode / cadrille report best-of-N; no user has this oracle);
* ``random valid@N``: the expected IoU of picking a valid candidate of that pool at random (what selection
  must beat).

Reported per row: VSR (share of images whose chosen program executes to a valid solid), ``iou_mean_all``
(failures count 0; ``cadcoder.evaluation``) and wall-clock seconds per image for generation + execution +
selection (export of STEP/STL is switched off; it adds one sandbox run per image). The figure to close is the
gap between render_compare and the oracle.

Usage::

    python train.py configs/quickstart.json                # makes outputs/quickstart and data/synth-quickstart
    python benchmarks/inference_strategies.py              # 50 test images, N = 8
    python benchmarks/inference_strategies.py --model outputs/quickstart --data data/synth-quickstart \\
        --num-images 100 --num-candidates 8 --temperature 0.8 --json results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import common  # benchmarks/common.py, beside this script

from cadcoder.evaluation import distinct_share
from cadcoder.provenance import machine_summary

REPO = common.REPO


def _quickstart_paths() -> tuple[str, str]:
    cfg = REPO / "configs" / "quickstart.json"
    model, data = "outputs/quickstart", "data/synth-quickstart"
    if cfg.exists():
        conf = json.loads(cfg.read_text())
        model, data = conf.get("output_dir", model), conf.get("dataset", data)
    return str(REPO / model), str(REPO / data)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _scorer_check(images: list, references: list[str], pool: int, seed: int, sb, eval_kw: dict, near_miss: bool) -> dict:
    """How well the render-and-compare score alone finds the true program in a pool.

    The pool holds the true program and ``pool - 1`` distractors: other parts' references, or (``near_miss``)
    copies of the true program with every number scaled by its own random factor in [0.7, 1.3].
    """
    import numpy as np

    from cadcoder.evaluation import evaluate_programs
    from cadcoder.selection import select_programs

    rng = np.random.default_rng(seed)
    n, k = len(images), pool if near_miss else min(pool, len(images))
    cands = []
    for i in range(n):
        if near_miss:
            pool_i = [references[i]] + [common.perturb_numbers(references[i], rng, 0.3) for _ in range(k - 1)]
        else:
            others = rng.choice([j for j in range(n) if j != i], size=k - 1, replace=False).tolist()
            pool_i = [references[j] for j in [i] + others]
        cands.append([pool_i[j] for j in rng.permutation(k)])
    t0 = time.perf_counter()
    preds = select_programs(images, cands, strategy="render_compare", sandbox=sb, export=False)
    seconds = (time.perf_counter() - t0) / n
    picked_true = sum(p.program == references[i] for i, p in enumerate(preds))
    rep = evaluate_programs([c for cs in cands for c in cs], [references[i] for i, cs in enumerate(cands) for _ in cs],
                            sandbox=sb, **eval_kw)  # fmt: skip
    ious = np.nan_to_num(np.asarray([np.nan if v is None else v for v in rep["ious"]], dtype=float)).reshape(n, k)
    pick = [next((j for j, c in enumerate(p.candidates) if c.selected), None) for p in preds]
    iou_pick = [ious[i, j] if j is not None else 0.0 for i, j in enumerate(pick)]
    return {"pool": k, "images": n, "near_miss": near_miss, "picked_true": picked_true, "iou_mean_all": float(np.mean(iou_pick)),
            "iou_random": float(ious.mean()), "seconds_per_image": seconds}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    default_model, default_data = _quickstart_paths()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=default_model, help=f"model folder or Hub id (default {default_model})")
    ap.add_argument("--data", default=default_data, help="dataset with a held-out split (default: the quickstart's)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--num-images", type=int, default=50)
    ap.add_argument("--num-candidates", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the model's generation_config")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--protocol", default="aligned", choices=["aligned", "bbox", "mecagent"])
    ap.add_argument("--fast", action="store_true", help="fast mesh IoU instead of exact OpenCascade booleans")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-scorer-check", dest="scorer_check", action="store_false",
                    help="skip the model-free check of the render-and-compare score on the references")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    if args.model == default_model and not Path(args.model).exists():
        print(f"no model at {args.model}. Train the quickstart model first:\n    python train.py configs/quickstart.json\n"
              "or pass --model FOLDER (any folder written by train.py).", file=sys.stderr)  # fmt: skip
        return 2
    if not Path(args.data).exists():
        print(f"no dataset at {args.data}. `python train.py configs/quickstart.json` builds data/synth-quickstart; "
              "or make a held-out set with `cadcoder synth --num 200 --out DIR --seed 123` and pass --data DIR.",
              file=sys.stderr)  # fmt: skip
        return 2

    import torch

    from cadcoder.data import decode_image, load_cad_dataset
    from cadcoder.evaluation import evaluate_programs
    from cadcoder.inference import GenerationOptions, generate_cad, load_model
    from cadcoder.sandbox import Sandbox

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, processor = load_model(args.model, device=args.device)
    except OSError as exc:  # FileNotFoundError included
        print(f"cannot use --model {args.model}: {exc}", file=sys.stderr)
        return 2
    ds = load_cad_dataset(args.data, split=args.split)
    n = min(args.num_images, len(ds))
    rows = ds.select(range(n))
    images = [decode_image(r["image"], row=str(i)) for i, r in enumerate(rows)]
    references = [r["cadquery"] for r in rows]
    N = args.num_candidates
    gen = GenerationOptions(seed=args.seed, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p, export=False)  # fmt: skip
    eval_kw = dict(protocol=args.protocol, fast=args.fast, progress=False, chamfer_points=0)

    results: dict[str, dict] = {}
    with Sandbox(num_workers=args.num_workers, timeout=args.timeout) as sb:
        sb.run("import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)")  # start the workers outside the timings
        preds: dict[str, list] = {}
        for name, strategy, k in (("greedy", "greedy", 1), (f"first_valid@{N}", "first_valid", N),
                                  (f"render_compare@{N}", "render_compare", N)):  # fmt: skip
            t0 = time.perf_counter()
            options = gen.with_overrides(num_candidates=k, strategy=strategy)
            preds[name] = generate_cad(model, processor, images, options, sandbox=sb)
            seconds = (time.perf_counter() - t0) / n
            results[name] = {"seconds_per_image": seconds,
                             "candidates_per_image": _mean([len(p.candidates) for p in preds[name]])}  # fmt: skip
            print(f"[{name}] {seconds:.2f} s/image", flush=True)

        # Greedy and first_valid: score the chosen programs (chance level reported with greedy).
        for name in ("greedy", f"first_valid@{N}"):
            rep = evaluate_programs([p.program for p in preds[name]], references, sandbox=sb, with_chance=name == "greedy", **eval_kw)
            results[name].update(vsr=rep["valid_syntax_rate"], iou_mean_all=rep["iou_mean_all"], iou_mean=rep["iou_mean"],
                                 distinct=rep["distinct_predictions"], failures=rep.get("failures"))  # fmt: skip
            if name == "greedy":
                results["_chance"] = {"iou_chance": rep.get("iou_chance")}

        # The render_compare pool: score every valid candidate against its reference once.
        rc = preds[f"render_compare@{N}"]
        flat = [(i, c) for i, p in enumerate(rc) for c in p.candidates if c.ok and not c.reason.startswith("duplicate")]
        rep = evaluate_programs([c.program for _, c in flat], [references[i] for i, _ in flat], sandbox=sb, **eval_kw)
        iou_of = {id(c): (v or 0.0) for (_, c), v in zip(flat, rep["ious"])}
        for p in rc:  # duplicates share their original's IoU
            by_prog = {c.program: iou_of[id(c)] for c in p.candidates if id(c) in iou_of}
            for c in p.candidates:
                if c.ok and id(c) not in iou_of:
                    iou_of[id(c)] = by_prog.get(c.program, 0.0)
        chosen, oracle, random_valid, any_valid = [], [], [], []
        for p in rc:
            valid = [iou_of[id(c)] for c in p.candidates if c.ok]
            sel = [iou_of[id(c)] for c in p.candidates if c.selected]
            chosen.append(sel[0] if sel else 0.0)
            oracle.append(max(valid) if valid else 0.0)
            random_valid.append(statistics.fmean(valid) if valid else 0.0)
            any_valid.append(bool(valid))
        vsr = statistics.fmean(any_valid)
        results[f"render_compare@{N}"].update(vsr=statistics.fmean(p.ok for p in rc), iou_mean_all=statistics.fmean(chosen),
                                              distinct=distinct_share([p.program for p in rc]))  # fmt: skip
        results[f"oracle best-of-{N}"] = {"vsr": vsr, "iou_mean_all": statistics.fmean(oracle),
                                          "seconds_per_image": None, "note": "same pool as render_compare"}  # fmt: skip
        results[f"random valid@{N}"] = {"vsr": vsr, "iou_mean_all": statistics.fmean(random_valid),
                                        "seconds_per_image": None, "note": "expected IoU of a random valid pick"}  # fmt: skip
        results[f"render_compare@{N}"]["iou_mean"] = _mean([c for c, p in zip(chosen, rc) if p.ok])
        results[f"oracle best-of-{N}"]["iou_mean"] = _mean([o for o, v in zip(oracle, any_valid) if v])
        results[f"random valid@{N}"]["iou_mean"] = _mean([r for r, v in zip(random_valid, any_valid) if v])
        picked_best = sum(abs(c - o) < 1e-9 for c, o, v in zip(chosen, oracle, any_valid) if v)
        results["_selection"] = {"render_compare_picked_oracle_best": picked_best, "images_with_a_valid_candidate": sum(any_valid),
                                 "valid_candidates_per_image": _mean([sum(c.ok for c in p.candidates) for p in rc]),
                                 "distinct_candidates_per_image": _mean([len({c.program for c in p.candidates}) for p in rc])}  # fmt: skip

        if args.scorer_check and n >= 2:
            for key, near in (("_scorer_check", False), ("_scorer_check_near_miss", True)):
                results[key] = _scorer_check(images, references, N, args.seed, sb, eval_kw, near)

    device = next(model.parameters()).device
    print()
    print(f"model {args.model} | data {args.data} [{args.split}] first {n} images | N={N} | sampling T={args.temperature} "
          f"top_p={args.top_p} seed={args.seed} (greedy program is candidate 0) | max_new_tokens="
          f"{args.max_new_tokens or model.generation_config.max_new_tokens} | IoU protocol {args.protocol}"
          f"{' (fast)' if args.fast else ' (exact)'} | sandbox {args.num_workers} workers, timeout {args.timeout}s")  # fmt: skip
    print(f"{machine_summary()} | device {device} | export off")
    print()
    print(f"| {'strategy':<22} | {'VSR':>5} | {'IoU mean_all':>12} | {'IoU (valid)':>11} | {'cands/img':>9} | {'s/image':>7} |")
    print(f"|{'-' * 24}|{'-' * 7}|{'-' * 14}|{'-' * 13}|{'-' * 11}|{'-' * 9}|")
    for name, r in results.items():
        if name.startswith("_"):
            continue
        print(f"| {name:<22} | {_fmt(r.get('vsr'), 2):>5} | {_fmt(r.get('iou_mean_all')):>12} | {_fmt(r.get('iou_mean')):>11} | "
              f"{_fmt(r.get('candidates_per_image'), 1):>9} | {_fmt(r.get('seconds_per_image'), 2):>7} |")  # fmt: skip
    sel = results["_selection"]
    gap = results[f"oracle best-of-{N}"]["iou_mean_all"] - results[f"render_compare@{N}"]["iou_mean_all"]
    print()
    print(f"chance IoU (reference vs another reference): {_fmt(results['_chance']['iou_chance'])}")
    for name in ("greedy", f"first_valid@{N}"):
        fails = {k: v for k, v in (results[name].get("failures") or {}).items() if v}
        if fails:
            print(f"{name} failures: " + ", ".join(f"{k} {v}" for k, v in sorted(fails.items(), key=lambda kv: -kv[1])))
    rc_fail = Counter(c.status for p in rc for c in p.candidates if not c.ok)
    print("render_compare pool failures: " + (", ".join(f"{k} {v}" for k, v in rc_fail.most_common()) or "none"))
    print(f"render_compare picked the oracle's best candidate on {sel['render_compare_picked_oracle_best']}/"
          f"{sel['images_with_a_valid_candidate']} images; gap to oracle: {gap:.3f} IoU; pool: "
          f"{_fmt(sel['valid_candidates_per_image'], 1)} valid, {_fmt(sel['distinct_candidates_per_image'], 1)} distinct "
          "candidates per image")  # fmt: skip
    for key in ("_scorer_check", "_scorer_check_near_miss"):
        if key not in results:
            continue
        sc = results[key]
        what = "copies of it with each number scaled by U(0.7, 1.3)" if sc["near_miss"] else "other test references"
        print(f"scorer check (no model): true program hidden among {sc['pool'] - 1} {what}; render_compare picked it on "
              f"{sc['picked_true']}/{sc['images']} images, IoU of the pick {_fmt(sc['iou_mean_all'])} (mean of the pool "
              f"{_fmt(sc['iou_random'])}), {_fmt(sc['seconds_per_image'], 2)} s/image")  # fmt: skip
    if args.json:
        settings = {k: v for k, v in vars(args).items()}
        Path(args.json).write_text(json.dumps({"settings": settings, "num_images": n, "results": results}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
