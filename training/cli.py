"""`convnet-train mnist|scenes`: train, evaluate and export one model."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

DEFAULT_DATA_DIR = Path("../shared/data")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from training.recipes import RECIPES

    p = argparse.ArgumentParser(
        prog="convnet-train", description="Train, evaluate and export a ConvNet as a SavedModel."
    )
    p.add_argument("model", choices=sorted(RECIPES), help="which recipe to train")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder holding mnist-train.npz / cifar4-train.npz (default: %(default)s); "
        "when the file is absent, keras.datasets downloads it",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("models"),
        help="models folder; the export goes to OUT/<model>/<version> (default: %(default)s)",
    )
    p.add_argument(
        "--version",
        type=int,
        default=None,
        help="version number to export as (default: one above the highest present)",
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the recipe's)")
    p.add_argument("--seed", type=int, default=1, help="seed for the split, init and augmentation")
    p.add_argument(
        "--dropout", type=float, default=None, help="dropout rate (default: the recipe's)"
    )
    p.add_argument(
        "--tuning-split",
        action="store_true",
        help="for choosing hyperparameters: leave the validation split out entirely, and train "
        "and evaluate on a split of the rest (same fraction and seed)",
    )
    p.add_argument(
        "--max-batches",
        type=int,
        default=None,
        help="smoke run: train on this many batches per epoch only",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault(
        "TF_CPP_MIN_LOG_LEVEL", "2"
    )  # keep TensorFlow's C++ chatter out of the bar

    from training import export, report
    from training.data import DataError
    from training.recipes import RECIPES
    from training.train import train

    recipe = RECIPES[args.model]
    if args.dropout is not None:
        recipe = dataclasses.replace(recipe, dropout=args.dropout)
    version = args.version or export.next_version(args.out / recipe.name)
    if (args.out / recipe.name / str(version)).exists():
        print(f"error: {args.out / recipe.name / str(version)} already exists", file=sys.stderr)
        return 2
    try:
        result = train(
            recipe, args.data_dir, args.seed, args.epochs, args.max_batches, args.tuning_split
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    target = export.export(
        result.model, recipe, args.out, version, result.training, result.evaluation
    )
    report.write_report(
        target, recipe.name, recipe.classes, result.history, result.evaluation, result.training
    )
    ev = result.evaluation
    print(
        f"\n{recipe.name} v{version}: {ev['split']} accuracy {ev['accuracy']:.4%} "
        f"on {ev['samples']} images, trained in {result.training['wall_time_seconds']} s"
    )
    for name, acc in ev["per_class_accuracy"].items():
        print(f"  {name:>6}: {acc:.2%}")
    print(f"exported to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
