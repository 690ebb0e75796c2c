"""The options of `train.py`: which model to train and how (`ModelArguments`), and the data and its evaluation
(`DataArguments`); transformers' `TrainingArguments` holds the rest. A JSON config gives the values, the command
line overrides them (`cadcoder.training.parse_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cadcoder.schema import DEFAULT_HUB_DATASET

__all__ = ["ModelArguments", "DataArguments"]


@dataclass
class ModelArguments:
    """Which model to train and how each of its parts learns."""

    model_init: str = field(
        default="tiny",
        metadata={
            "help": "tiny: small random CadCoder + tokenizer trained on the training programs (offline); "
            "components: pretrained vision encoder + language model from the Hub (needs network); "
            "pretrained: continue from a saved CadCoder (--model_name_or_path).",
            "choices": ["tiny", "components", "pretrained"],
        },
    )
    model_name_or_path: str | None = field(default=None, metadata={"help": "saved CadCoder folder or Hub id (model_init=pretrained)"})
    vision_model: str = field(default="timm/resnet18.a1_in1k", metadata={"help": "timm encoder (model_init=components)"})
    text_model: str = field(default="Salesforce/codegen-350M-mono", metadata={"help": "causal LM (model_init=components)"})
    visual_tokens: str = field(default="grid", metadata={"help": "grid: one token per feature-map cell; pooled: one token", "choices": ["grid", "pooled"]})
    image_size: int = field(default=448, metadata={"help": "input side in pixels (multiple of 32)"})
    text_model_type: str = field(default="codegen", metadata={"help": "tiny decoder family", "choices": ["codegen", "gpt2"]})
    n_layer: int = field(default=4, metadata={"help": "tiny decoder layers"})
    n_embd: int = field(default=256, metadata={"help": "tiny decoder width"})
    n_head: int = field(default=4, metadata={"help": "tiny decoder heads"})
    tokenizer_vocab_size: int = field(default=1024, metadata={"help": "vocabulary of the locally trained tokenizer (tiny)"})
    vision_learning_rate: float | None = field(default=None, metadata={"help": "encoder lr (default: --learning_rate)"})
    projector_learning_rate: float | None = field(default=None, metadata={"help": "projector lr (default: --learning_rate)"})
    language_learning_rate: float | None = field(default=None, metadata={"help": "language-model lr (default: --learning_rate)"})
    train_stages: str = field(
        default="all",
        metadata={"help": "staged freezing: 'PARTS:UNTIL_STEP,...,PARTS', PARTS joins vision/projector/language with + "
                  "or is all; e.g. 'projector:200,all' = projector-only warm-up for 200 steps, then everything"},
    )


@dataclass
class DataArguments:
    """Where the (image, program) pairs come from, how programs become tokens, and how we evaluate."""

    dataset: str = field(default=DEFAULT_HUB_DATASET, metadata={"help": "Hub dataset, save_to_disk folder, parquet or jsonl"})
    synth_num: int = field(default=0, metadata={"help": "if > 0 and --dataset is a missing folder: generate this many synthetic pairs there"})
    synth_seed: int = field(default=0, metadata={"help": "seed of the synthetic set"})
    synth_image_size: int = field(default=448, metadata={"help": "rendered image size of the synthetic set"})
    synth_workers: int = field(default=2, metadata={"help": "processes that build the synthetic set"})
    synth_complexity: list[int] = field(default_factory=lambda: [3], metadata={"help": "synthetic generator levels, spread evenly: 0 simple profiles, 1 any single extrude, 2 up to 3 bodies, 3 GenCAD-Code-like"})
    synth_render_style: str | None = field(default=None, metadata={"help": "'random': domain-randomised renders (grey level, line width, camera jitter); default: the dataset look"})
    train_split: str = "train"
    eval_split: str = "validation"
    test_split: str = "test"
    max_length: int = field(default=1024, metadata={"help": "tokens per example, image tokens included; longer programs are dropped, never truncated"})
    packing: bool = field(default=False, metadata={"help": "pack several examples into each row of max_length tokens: the same loss without padding compute (cadcoder/packing.py)"})
    canonical_numbers: bool = field(default=False, metadata={"help": "rewrite numbers in a short canonical form (fewer tokens)"})
    number_decimals: int = field(default=4, metadata={"help": "decimals kept by --canonical_numbers"})
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    curriculum: bool = field(default=False, metadata={"help": "start with short (simple) programs, grow to the full set"})
    curriculum_start: float = field(default=0.25, metadata={"help": "share of easiest examples available at step 0"})
    curriculum_ramp: float = field(default=0.5, metadata={"help": "share of training after which all examples are available"})
    generate_eval_samples: int = field(default=32, metadata={"help": "validation images generated + executed at each evaluation (0: loss only)"})
    generate_max_new_tokens: int | None = field(default=None, metadata={"help": "default: longest training program + 10%%"})
    generate_batch_size: int = 16
    eval_protocol: str = field(default="aligned", metadata={"choices": ["aligned", "bbox", "mecagent"]})
    eval_timeout: float = 10.0
    eval_num_workers: int | None = None
    test_samples: int = field(default=100, metadata={"help": "test images scored after training, with chance and constant baselines (0: skip)"})
    constant_candidates: int = field(default=8, metadata={"help": "training programs tried as the constant-program baseline"})
    eval_only: bool = field(default=False, metadata={"help": "skip training: score the model (e.g. --model_init pretrained --model_name_or_path CKPT) on the test set"})
