"""Generation throughput and peak memory of CadCoder on CPU.

Measures, with random weights (nothing is downloaded):
  * tokens/s of ``model.generate`` (greedy, fixed number of new tokens) for
      - the tiny test config (ResNet18 at 128 px + CodeGen 2x64), and
      - the full shape: ResNet18 (1 channel, 224 px, 49 grid tokens) + codegen-350M-mono architecture,
    with and without the KV cache, at batch 1 and 8. Each row also splits time into prefill (image encoding +
    prompt) and per-token decoding;
  * prefill cost of the full model at 224 px vs 448 px (49 vs 196 image tokens), the measurement behind the
    default ``image_size``;
  * peak resident memory (ru_maxrss) of the full model in fp32 and bf16, each in a fresh subprocess that builds the
    model and generates a few tokens (the import baseline is reported separately).

Usage:
    python benchmarks/generation_throughput.py                 # default: a few minutes on 2 cores
    python benchmarks/generation_throughput.py --quick         # tiny config only (seconds)
    python benchmarks/generation_throughput.py --full-new-tokens 32 --threads 8
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from cadcoder.provenance import machine_summary

REPO_ROOT = Path(__file__).resolve().parents[1]


def _corpus(n: int = 200) -> list[str]:
    rng = random.Random(0)
    programs = []
    for _ in range(n):
        a, b, c = (round(rng.uniform(0.05, 0.75), 4) for _ in range(3))
        programs.append(
            "import cadquery as cq\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), "
            "cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
            f"loop0=wp_sketch0.moveTo({a}, 0.0).lineTo({a}, {b}).lineTo(0.0, {b}).close()\n"
            f"solid0=wp_sketch0.add(loop0).extrude({c})\nsolid=solid0\n"
        )
    return programs


def build_tiny():
    """The tiny config used by the tests: (model, prompt_ids, image_token_id)."""
    from cadcoder.factory import build_tiny_cadcoder
    from cadcoder.tokenizer import train_code_tokenizer

    model, processor = build_tiny_cadcoder(train_code_tokenizer(_corpus(), vocab_size=512))
    return model.eval(), processor.prompt_ids(), model.config


def build_full(image_size: int = 224):
    """ResNet18 (1 ch) + codegen-350M-mono architecture, random weights, built from config only."""
    from configuration_cadcoder import CadCoderConfig
    from modeling_cadcoder import CadCoderForConditionalGeneration

    config = CadCoderConfig(image_size=image_size)
    # codegen-350M's embedding has 51200 rows for 50295 real tokens: the last unused row serves as <image>.
    config.image_token_id = config.text_config.vocab_size - 1
    model = CadCoderForConditionalGeneration(config).eval()
    eos = config.text_config.eos_token_id
    model.generation_config.update(eos_token_id=eos, pad_token_id=eos, bos_token_id=eos, do_sample=False)
    prompt = [config.image_token_id] * config.num_image_tokens + [config.text_config.bos_token_id]
    return model, prompt, config


def _inputs(prompt: list[int], config, batch: int):
    import torch

    size = config.image_size
    return {
        "input_ids": torch.tensor([prompt] * batch),
        "attention_mask": torch.ones(batch, len(prompt), dtype=torch.long),
        "pixel_values": torch.randn(batch, config.num_channels, size, size),
    }


def time_generate(model, inputs, new_tokens: int, use_cache: bool, repeats: int = 1) -> float:
    """Best-of-``repeats`` wall time of a greedy generate producing exactly ``new_tokens`` tokens per row."""
    import torch

    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=use_cache,
                           do_sample=False)  # fmt: skip
        best = min(best, time.perf_counter() - start)
    return best


def throughput_rows(name: str, model, prompt, config, batch_sizes, new_tokens: int, repeats: int) -> list[dict]:
    rows = []
    time_generate(model, _inputs(prompt, config, 1), 2, True)  # warm-up (allocator, kernels)
    for batch in batch_sizes:
        inputs = _inputs(prompt, config, batch)
        prefill = time_generate(model, inputs, 1, True, repeats)
        for use_cache in (True, False):
            total = time_generate(model, inputs, new_tokens, use_cache, repeats)
            decode = max(total - prefill, 1e-9) / max(new_tokens - 1, 1)
            rows.append({
                "model": name, "batch": batch, "kv_cache": use_cache, "prompt_tokens": len(prompt),
                "new_tokens": new_tokens, "seconds": total, "tokens_per_s": batch * new_tokens / total,
                "prefill_s": prefill, "decode_ms_per_step": 1000 * decode,
                "decode_tokens_per_s": batch / decode,
            })  # fmt: skip
            print(_fmt_row(rows[-1]), flush=True)
    return rows


def _fmt_row(r: dict) -> str:
    return (f"| {r['model']:<6} | {r['batch']:>5} | {'on' if r['kv_cache'] else 'off':<8} | {r['prompt_tokens']:>6} | "
            f"{r['new_tokens']:>3} | {r['seconds']:>8.2f} | {r['tokens_per_s']:>9.1f} | {r['prefill_s']:>9.3f} | "
            f"{r['decode_ms_per_step']:>9.1f} | {r['decode_tokens_per_s']:>9.1f} |")  # fmt: skip


TABLE_HEADER = (
    "| model  | batch | kv cache | prompt | new |  total s | tokens/s  | prefill s | ms/step   | decode t/s |\n"
    "|--------|-------|----------|--------|-----|----------|-----------|-----------|-----------|------------|"
)


# ------------------------------------------------------------------------------------------------- memory
_MEMORY_CHILD = r"""
import json, sys


def rss_mb(field):
    # VmHWM (peak) / VmRSS of this process. Not ru_maxrss: Linux carries that over from the parent across exec.
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024


import torch
torch.set_num_threads({threads})
baseline = rss_mb("VmHWM")
import benchmarks.generation_throughput as bench
dtype = getattr(torch, {dtype!r})
torch.set_default_dtype(dtype)  # build the weights directly in the target dtype (no fp32 copy)
model, prompt, config = bench.build_full()
built = rss_mb("VmRSS")
n_params = sum(p.numel() for p in model.parameters())
inputs = bench._inputs(prompt, config, {batch})
inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
with torch.inference_mode():
    model.generate(**inputs, max_new_tokens={new_tokens}, min_new_tokens={new_tokens}, do_sample=False)
peak = rss_mb("VmHWM")
weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
print("RESULT" + json.dumps(dict(baseline_mb=baseline, after_build_mb=built, peak_mb=peak, params=n_params,
                                 dtype={dtype!r}, weights_mb=weights_mb)))
"""


def measure_memory(dtype: str, threads: int, batch: int = 1, new_tokens: int = 4) -> dict:
    """Peak RSS of building the full model in ``dtype`` and generating, in a fresh subprocess."""
    code = _MEMORY_CHILD.format(threads=threads, dtype=dtype, batch=batch, new_tokens=new_tokens)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {dtype} failed:\n{proc.stderr[-3000:]}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT") :]) | {"batch": batch, "new_tokens": new_tokens}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tiny-new-tokens", type=int, default=16)
    parser.add_argument("--full-new-tokens", type=int, default=4, help="kept small: no-cache cost grows quadratically")
    parser.add_argument("--repeats", type=int, default=1, help="best-of-N timing")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="tiny config only")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-image-size", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write all rows to this JSON file")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    print(machine_summary())
    print(f"settings: greedy, fixed new tokens (min_new_tokens = max_new_tokens), random weights, fp32, "
          f"batch sizes {args.batch_sizes}, best of {args.repeats}\n")  # fmt: skip
    results: dict = {"machine": machine_summary(), "throughput": [], "image_size": [], "memory": []}

    if not args.skip_throughput:
        print(TABLE_HEADER)
        tiny = build_tiny()
        results["throughput"] += throughput_rows("tiny", *tiny, args.batch_sizes, args.tiny_new_tokens, args.repeats)
        del tiny
    if not args.quick and not args.skip_throughput:
        full = build_full()
        n_params = sum(p.numel() for p in full[0].parameters())
        results["throughput"] += throughput_rows("full", *full, args.batch_sizes, args.full_new_tokens, args.repeats)
        print(f"\nfull model: {n_params / 1e6:.1f} M parameters (ResNet18 1-ch + projector + codegen-350M shape)")
        del full
    if not args.quick:
        if not args.skip_image_size:
            print("\nprefill (image encoding + prompt forward) of the full model, batch 1, by image size:")
            print("| image px | image tokens | prefill s |\n|----------|--------------|-----------|")
            for size in (224, 448):
                model, prompt, config = build_full(size)
                inputs = _inputs(prompt, config, 1)
                time_generate(model, inputs, 1, True)
                seconds = time_generate(model, inputs, 1, True, max(args.repeats, 2))
                results["image_size"].append({"image_size": size, "image_tokens": config.num_image_tokens,
                                              "prefill_s": seconds})  # fmt: skip
                print(f"| {size:>8} | {config.num_image_tokens:>12} | {seconds:>9.3f} |", flush=True)
                del model

        if not args.skip_memory:
            print("\npeak resident memory of the full model (fresh process each; build + generate 4 tokens, batch 1):")
            print("| dtype    | params M | weights MB | peak RSS after import MB | RSS after build MB | peak RSS MB |")
            print("|----------|----------|------------|--------------------------|--------------------|-------------|")
            for dtype in ("float32", "bfloat16"):
                m = measure_memory(dtype, threads)
                results["memory"].append(m)
                print(f"| {dtype:<8} | {m['params'] / 1e6:>8.1f} | {m['weights_mb']:>10.0f} | {m['baseline_mb']:>24.0f} "
                      f"| {m['after_build_mb']:>18.0f} | {m['peak_mb']:>11.0f} |", flush=True)  # fmt: skip
    print(f"\nload avg at end: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
