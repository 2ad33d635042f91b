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
    sdft.add_argument("--model", type=Path, help="model to start from (usually stage 3's output)")
    sdft.add_argument("--data", type=Path, help="training_data folder of a SID version")
    sdft.add_argument("--out", type=Path, help="output folder")
    sdft.add_argument("--yaml", type=Path, help="rerun a saved SDFT YAML (e.g. OUT/onesearch_stagesdft.yaml) instead of --model/--data/--out")
    return parser


def _check_model_folder(path: Path, option: str) -> None:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{option} {path} is not a local Hugging Face model folder (no config.json)")


def main(argv: list[str] | None = None) -> None:
    """Run one command; known failures print one line and exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _run(args, parser)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        logging.getLogger("onesearch.train").error("%s: %s", type(error).__name__, error)
        sys.exit(2)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    config = load_config(args.config)

    if args.command == "make-tiny-model":
        from onesearch_tasks.training.tiny_model import TinyModelSpec, make_tiny_model

        result = make_tiny_model(args.out, args.text, TinyModelSpec(vocab_size=args.vocab_size))
    elif args.command == "extend-vocab":
        from onesearch_tasks.training.vocab import extend_vocab

        _check_model_folder(args.base, "--base")
        result = extend_vocab(args.base, args.sid_vocab, args.out)
    elif args.command == "sft":
        from onesearch_tasks.training.stages import STAGES, run_progressive

        stages = tuple(part.strip() for part in args.stages.split(","))
        if not stages or any(stage not in {str(known) for known in STAGES} for stage in stages):
            parser.error(f"--stages {args.stages!r} is invalid; use stages from 1, 2, 3 separated by commas, e.g. 1,2,3")
        result = run_progressive(config.training, args.model, args.data, args.out, tuple(int(stage) for stage in stages))
    else:
        from onesearch_tasks.training.sdft import run_sdft
        from onesearch_tasks.training.stages import stage_arguments, write_stage_yaml

        if args.yaml:
            if not args.yaml.is_file():
                raise FileNotFoundError(f"--yaml {args.yaml} not found")
            yaml_path = args.yaml
        else:
            if not (args.model and args.data and args.out):
                parser.error("sdft needs --model, --data and --out, or --yaml")
            _check_model_folder(args.model, "--model")
            yaml_path = write_stage_yaml(stage_arguments(config.training, "sdft", args.model, args.data, args.out), args.out, "sdft")
        result = run_sdft(yaml_path)
    print(json.dumps(result, ensure_ascii=False, indent=2, default=str))


if __name__ == "__main__":
    main()
