"""Training throughput (samples/s) of CadCoder models: the quickstart model on CPU, the full model on a GPU.

    python benchmarks/train_throughput.py                         # quickstart model, 2 threads, bf16 vs fp32
    python benchmarks/train_throughput.py --image-sizes 128 224   # the image-size lever
    python benchmarks/train_throughput.py --dtypes bf16 --no-grouping / --packing   # random batches, padded / packed
    python benchmarks/train_throughput.py --full --batch-size 8   # ResNet18 + codegen-350M shape at 448 px (GPU)

Each configuration runs `--warmup` optimizer steps, then times `--steps` steps of forward + backward +
AdamW on synthetic programs (cadcoder.synth, the quickstart's complexity mix) with their real token
lengths and random images already preprocessed; the collator's cost (PNG decode + resize +
tokenisation) is timed separately. It prints one line per configuration and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cadcoder.data import CadCoderCollator
from cadcoder.provenance import cpu_model


def _programs(n: int, seed: int, complexities: list[int], canonical: bool) -> list[str]:
    """``n`` synthetic programs at the given complexity levels, in canonical-number form when asked."""
    from cadcoder.synth import generate_program

    rng = np.random.default_rng(seed)
    programs = [generate_program(rng, complexity=int(rng.choice(complexities))) for _ in range(n)]
    if canonical:
        from cadcoder.data import canonicalize_numbers

        programs = [canonicalize_numbers(p, decimals=3) for p in programs]  # as configs/quickstart.json
    return programs


def _build(args: argparse.Namespace, programs: list[str], image_size: int):
    """A randomly initialised model and its processor, with a tokenizer trained on ``programs``."""
    from cadcoder.factory import build_tiny_cadcoder, full_size_text_config, build_cadcoder
    from cadcoder.tokenizer import train_code_tokenizer

    tokenizer = train_code_tokenizer(programs, vocab_size=args.vocab_size)
    if args.full:
        from processing_cadcoder import CadCoderImageProcessor, CadCoderProcessor

        CadCoderProcessor(CadCoderImageProcessor(size=image_size), tokenizer, 1)  # adds <image> to the tokenizer
        return build_cadcoder(tokenizer, full_size_text_config(tokenizer), image_size=image_size)
    return build_tiny_cadcoder(tokenizer, image_size=image_size, n_layer=args.n_layer, n_embd=args.n_embd,
                               n_head=args.n_head)


def _time_collator(processor, programs: list[str], batch_size: int, repeats: int = 3) -> float:
    """Seconds per batch to turn 448-px PNG-decoded PIL images + programs into model inputs."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    pngs = []
    for _ in range(batch_size):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (448, 448, 3), dtype=np.uint8)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    start = time.perf_counter()
    for _ in range(repeats):
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in pngs]
        processor(images=images, text=programs[:batch_size], return_tensors="pt", max_length=1024)
    return (time.perf_counter() - start) / repeats


def run_one(args: argparse.Namespace, programs: list[str], image_size: int, dtype: str, device: str) -> dict:
    """Time ``args.steps`` optimizer steps of one configuration; return its row of results."""
    torch.manual_seed(0)
    model, processor = _build(args, programs, image_size)
    model.to(device).train()
    if args.activation_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (image_size, image_size), dtype=np.uint8) for _ in range(args.batch_size)]
    if not (args.no_grouping or args.packing or args.seq_len):  # as train.py's curriculum sampler: batches of similar length, in random order
        order = sorted(range(len(programs)), key=lambda k: len(processor.tokenizer(programs[k])["input_ids"]))
        batched = [order[b : b + args.batch_size] for b in range(0, len(order), args.batch_size)]
        rng.shuffle(batched)
        programs = [programs[k] for b in batched for k in b]
    max_length, texts = args.max_length, programs
    if args.seq_len:  # every example exactly seq_len tokens: programs joined end to end, then cut
        max_length = args.seq_len
        joined = "\n".join(programs)
        texts = [joined[k * 997 % len(joined):] + joined for k in range(len(programs))]
    collator = CadCoderCollator(processor, max_length=max_length, packing=args.packing)  # the training batches' last step
    batches, batch_tokens = [], []
    for i in range(args.warmup + args.steps):
        chunk = [texts[(i * args.batch_size + j) % len(texts)] for j in range(args.batch_size)]
        batch = processor(images=images, text=chunk, return_tensors="pt", max_length=max_length)
        batch_tokens.append(int(batch["attention_mask"].sum()))
        batch = collator.finalize(batch)
        batches.append({k: v.to(device) for k, v in batch.items()})
    autocast = torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                              enabled=dtype == "bf16")
    tokens = 0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for i, batch in enumerate(batches):
        if i == args.warmup:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= args.warmup:
            tokens += batch_tokens[i]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {
        "model": "full(resnet18+codegen-350M)" if args.full else f"tiny(resnet18+codegen {args.n_layer}x{args.n_embd})",
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "image_size": image_size,
        "image_tokens": model.config.num_image_tokens,
        "dtype": dtype,
        "batch": args.batch_size,
        "batching": "packed" if args.packing else "random" if args.no_grouping or args.seq_len else "length-grouped",
        "mean_seq_len": round(tokens / (args.steps * args.batch_size), 1),
        "samples_per_s": round(args.steps * args.batch_size / seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "collate_s_per_batch": round(_time_collator(processor, programs, args.batch_size), 3),
    }
    if device.startswith("cuda"):
        result["peak_memory_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def main() -> None:
    """Run every image size x dtype configuration and print one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--max-length", type=int, default=640, help="tokens per example (longer programs are cut)")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="make every example exactly this many tokens, image tokens included (e.g. the real "
                             "data's mean or p95 length); default: the synthetic programs' own lengths")
    parser.add_argument("--complexities", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--no-canonical", action="store_true", help="full float reprs instead of canonical numbers")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--no-grouping", action="store_true", help="random batches instead of length-grouped ones")
    parser.add_argument("--packing", action="store_true", help="random batches packed into rows of --max-length")
    parser.add_argument("--full", action="store_true", help="ResNet18 + codegen-350M architecture (random weights)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.full and args.image_sizes == [128]:
        args.image_sizes = [448]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    programs = _programs(256, seed=0, complexities=args.complexities, canonical=not args.no_canonical)
    machine = (torch.cuda.get_device_name(0) if device.startswith("cuda") else
               f"{cpu_model()} CPU, {args.threads} threads")
    print(f"# train throughput on {machine}; torch {torch.__version__}; programs: synth complexities "
          f"{args.complexities}, {'full floats' if args.no_canonical else 'canonical numbers'}; "
          f"steps {args.steps} after {args.warmup} warm-up; AdamW; "
          f"activation checkpointing {'on' if args.activation_checkpointing else 'off'}; "
          f"{'packed random' if args.packing else 'random' if args.no_grouping else 'length-grouped'} batches", flush=True)
    results = []
    for size in args.image_sizes:
        for dtype in args.dtypes:
            r = run_one(args, programs, size, dtype, device)
            results.append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
