"""Training-env command line: `python -m onesearch_tasks.training.main <command>`.

The Airflow env's `onesearch train ...` forwards here through the launcher, so torch is
imported only in this process.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from onesearch_tasks.config import load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onesearch train", description="Training commands (run in the training env).")
    parser.add_argument("--config", help="YAML config file; default $ONESEARCH_CONFIG or configs/default.yaml")
    commands = parser.add_subparsers(dest="command", required=True)

    tiny = commands.add_parser("make-tiny-model", help="Train a small BPE tokenizer and save a random Qwen2 model.")
    tiny.add_argument("--out", required=True, type=Path, help="output folder")
    tiny.add_argument("--text", action="append", type=Path, required=True, help="training-data folder or .json/.jsonl file (repeatable)")
    tiny.add_argument("--vocab-size", type=int, default=2000, help="BPE vocabulary size before SID tokens")

    extend = commands.add_parser("extend-vocab", help="Add every SID token as a special token and resize embeddings.")
    extend.add_argument("--base", required=True, type=Path, help="local model folder")
    extend.add_argument("--sid-vocab", required=True, type=Path, help="sid_vocab.json of a version's training data")
    extend.add_argument("--out", required=True, type=Path, help="output folder")

    sft = commands.add_parser("sft", help="Run progressive SFT stages with llamafactory-cli.")
    sft.add_argument("--model", required=True, type=Path, help="model to start stage 1 from (after extend-vocab)")
    sft.add_argument("--data", required=True, type=Path, help="training_data folder of a SID version")
    sft.add_argument("--out", required=True, type=Path, help="output root; stage<N>/ folders are created in it")
    sft.add_argument("--stages", default="1,2,3", help="comma-separated stages to run in order, e.g. 1,2,3")

    sdft = commands.add_parser("sdft", help="Run joint self-distillation from a model on the SDFT pairs.")
    sdft.add_argument("--model", required=True, type=Path, help="model to start from (usually stage 3's output)")
    sdft.add_argument("--data", required=True, type=Path, help="training_data folder of a SID version")
    sdft.add_argument("--out", required=True, type=Path, help="output folder")
    sdft.add_argument("--yaml", type=Path, help="run this YAML as is instead of generating one")
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = _parser().parse_args(argv)
    config = load_config(args.config)

    if args.command == "make-tiny-model":
        from onesearch_tasks.training.tiny_model import TinyModelSpec, make_tiny_model

        result = make_tiny_model(args.out, args.text, TinyModelSpec(vocab_size=args.vocab_size))
    elif args.command == "extend-vocab":
        from onesearch_tasks.training.vocab import extend_vocab

        result = extend_vocab(args.base, args.sid_vocab, args.out)
    elif args.command == "sft":
        from onesearch_tasks.training.stages import run_progressive

        stages = tuple(int(stage) for stage in args.stages.split(","))
        result = run_progressive(config.training, args.model, args.data, args.out, stages)
    else:
        from onesearch_tasks.training.sdft import run_sdft
        from onesearch_tasks.training.stages import stage_arguments, write_stage_yaml

        yaml_path = args.yaml or write_stage_yaml(stage_arguments(config.training, "sdft", args.model, args.data, args.out), args.out, "sdft")
        result = run_sdft(yaml_path)
    print(json.dumps(result, ensure_ascii=False, indent=2, default=str))


if __name__ == "__main__":
    main()
