"""RL fine-tuning of a CadCoder checkpoint from execution: sample programs, run them, reward what they build.

Launch:

    # CPU, 2 cores: from the quickstart model (python train.py configs/quickstart.json), at most 30 minutes
    python train_rl.py configs/rl-quickstart.json
    python train_rl.py configs/rl-quickstart.json --reward render --output_dir outputs/rl-quickstart-render
    python train_rl.py configs/rl-quickstart.json --max_steps 5 --output_dir outputs/rl-try     # overrides

    # one GPU, from a CodeGen-350M CadCoder
    python train_rl.py configs/rl-codegen-350m.json

    # resume after a kill: run the same command again (weights, optimizer, RNG and step are restored)

Options are the fields of cadcoder.rl.loop.RLArguments; a JSON config gives the values and the command line
overrides them; `python train_rl.py --help` lists them all.

The story, top to bottom: parse options -> load the starting checkpoint and its processor -> load the
training images (with reference programs for the `iou` reward) -> name the reward -> GRPO steps (per image K
sampled programs, each run in the sandbox and scored, group-normalised advantages, a clipped policy-gradient
step with a KL term to the frozen starting model; a resumable state every save_steps) -> save_pretrained +
processor + model card (RL-tuned, from which checkpoint, with which reward).
"""

from __future__ import annotations

import sys

import torch
from transformers import HfArgumentParser, set_seed

from cadcoder.rl.data import load_policy, load_rl_examples
from cadcoder.rl.loop import RLArguments, build_reward, config_dict, train_rl
from cadcoder.rl.state import save_rl_model
from cadcoder.training import parse_config


def main(argv: list[str]) -> dict:
    # ---------------------------------------------------------------------------------- options
    (args,) = parse_config(HfArgumentParser(RLArguments), argv)
    set_seed(args.seed)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"[train_rl] from {args.model_name_or_path} on {device}, reward {args.reward}, K={args.group_size}, "
          f"{args.prompts_per_step} images/step, output_dir={args.output_dir}", flush=True)

    # ---------------------------------------------------------------------------------- model
    model, processor = load_policy(args.model_name_or_path, device=device)

    # ---------------------------------------------------------------------------------- data
    examples = load_rl_examples(args.dataset, args.train_split, args.max_train_samples,
                                need_programs=args.reward == "iou")
    print(f"[train_rl] {len(examples)} training images from {args.dataset} [{args.train_split}]", flush=True)

    # ---------------------------------------------------------------------------------- reward
    reward = build_reward(args)
    print(f"[train_rl] reward {reward.describe()}", flush=True)

    # ---------------------------------------------------------------------------------- RL
    summary = train_rl(model, processor, examples, reward, args)

    # ---------------------------------------------------------------------------------- output
    save_rl_model(args.output_dir, model, processor, config_dict(args), reward.describe(), summary)
    print(f"[train_rl] {summary['steps']} steps in {summary['train_seconds']} s; "
          f"saved to {args.output_dir} (loads with AutoModel.from_pretrained(..., trust_remote_code=True))")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
