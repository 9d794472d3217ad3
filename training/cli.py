"""`convnet-train mnist|scenes`: train, evaluate and export one model."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path

# Set before anything imports TensorFlow (training.recipes does, in parse_args), or it has no
# effect: keeps TensorFlow's C++ chatter out of the progress bar.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_DATA_DIR = Path("../shared/data")
DEFAULT_OUT = Path("models")


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
        return value

    return parse


def _rate(text: str) -> float:
    """An argparse type: a dropout rate, 0 <= rate < 1 (1 would drop every unit)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < 1:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {value}")
    return value


def _augment_setting(text: str) -> tuple[str, float]:
    """An argparse type: KEY=VALUE for one augmentation setting, a finite number >= 0."""
    from training.recipes import AUGMENT_KEYS

    key, sep, value = text.partition("=")
    if not sep or key not in AUGMENT_KEYS:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY one of {AUGMENT_KEYS}")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 <= number < float("inf"):  # also rejects nan
        raise argparse.ArgumentTypeError(f"{key} must be a finite number >= 0, got {value}")
    return key, number


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from training.recipes import AUGMENT_KEYS, RECIPES

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
        default=None,
        help=f"models folder; the export goes to OUT/<model>/<version> (default: {DEFAULT_OUT}; "
        "required with --max-batches or --tuning-split, whose models are not to be served)",
    )
    p.add_argument(
        "--version",
        type=_at_least(0),
        default=None,
        help="version number to export as (default: one above the highest present)",
    )
    p.add_argument(
        "--epochs", type=_at_least(1), default=None, help="epochs (default: the recipe's)"
    )
    p.add_argument("--seed", type=int, default=1, help="seed for the split, init and augmentation")
    p.add_argument(
        "--dropout", type=_rate, default=None, help="dropout rate (default: the recipe's)"
    )
    p.add_argument(
        "--outliers",
        type=_at_least(0),
        default=None,
        help="synthetic noise images trained toward equal probabilities (outlier exposure; "
        "default: the recipe's)",
    )
    p.add_argument(
        "--augment",
        type=_augment_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one of the recipe's augmentation settings ({', '.join(AUGMENT_KEYS)}); "
        "repeatable, 0 turns one off",
    )
    p.add_argument(
        "--tuning-split",
        action="store_true",
        help="for choosing hyperparameters: leave the validation split out entirely, and train "
        "and evaluate on a split of the rest (same fraction and seed)",
    )
    p.add_argument(
        "--max-batches",
        type=_at_least(1),
        default=None,
        help="smoke run: train on this many batches per epoch only",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="also save the trained model and its figures in this folder (model.keras, "
        "result.json), so that it can be exported again with --from-checkpoint",
    )
    p.add_argument(
        "--from-checkpoint",
        type=Path,
        default=None,
        help="skip training: export again the model a --checkpoint run saved in this folder, or "
        "an exported version (models/<name>/<version>), with the calibration of this code",
    )
    args = p.parse_args(argv)
    if args.out is None:
        if args.max_batches is not None or args.tuning_split:
            # Their exports would land beside the served models and be the newest version.
            p.error("--max-batches and --tuning-split need an explicit --out")
        args.out = DEFAULT_OUT
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from training import checkpoint, export, report
    from training.data import DataError
    from training.recipes import RECIPES
    from training.train import calibrate, evaluate_held_out, train

    recipe = RECIPES[args.model]
    if args.dropout is not None:
        recipe = dataclasses.replace(recipe, dropout=args.dropout)
    if args.outliers is not None:
        recipe = dataclasses.replace(recipe, outliers=args.outliers)
    if args.augment:
        recipe = dataclasses.replace(recipe, augment={**recipe.augment, **dict(args.augment)})
    # An explicit version is checked before training; without one, export picks the next free
    # version when it writes, so runs started side by side do not collide.
    if args.version is not None and (args.out / recipe.name / str(args.version)).exists():
        print(
            f"error: {args.out / recipe.name / str(args.version)} already exists", file=sys.stderr
        )
        return 2
    try:
        if args.from_checkpoint is not None:
            result = checkpoint.load(args.from_checkpoint, recipe)
        else:
            result = train(
                recipe, args.data_dir, args.seed, args.epochs, args.max_batches, args.tuning_split
            )
    except (DataError, checkpoint.CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.checkpoint is not None:
        checkpoint.save(result, args.checkpoint)
        print(f"checkpoint saved to {args.checkpoint}", flush=True)
    if recipe.test_time_views:
        # Weights read from a version with views: its figures already hold both (scenes v5 and
        # before named the one-view figure accuracy_without_flip_average).
        ev = result.evaluation
        plain = ev.get("accuracy_one_view", ev.get("accuracy_without_flip_average", ev["accuracy"]))
        views = recipe.test_time_views
        result = dataclasses.replace(result, model=export.view_averaged(result.model, views))
        evaluation = evaluate_held_out(
            result.model, recipe, args.data_dir, args.seed, args.max_batches, args.tuning_split
        )
        evaluation["test_time_augmentation"] = (
            f"the mean of the logits of the image and its views: {', '.join(views)}"
        )
        evaluation["accuracy_one_view"] = plain
        result = dataclasses.replace(result, evaluation=evaluation)
        print(f"test-time views: {plain:.4%} -> {evaluation['accuracy']:.4%}", flush=True)
    print("calibrating on the held-out split", flush=True)
    calibrated = calibrate(
        result.model, recipe, args.data_dir, args.seed, args.max_batches, args.tuning_split
    )
    try:
        target = export.export(
            result.model,
            recipe,
            args.out,
            args.version,
            result.training,
            result.evaluation,
            calibrated,
            result.snapshots,
            result.history,
            result.snapshot_dir,
        )
    except FileExistsError as exc:  # an explicit version taken while this run trained
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report.write_report(
        target,
        recipe.name,
        recipe.classes,
        result.history,
        result.evaluation,
        result.training,
        calibrated.calibration,
    )
    ev = result.evaluation
    print(
        f"\n{recipe.name} v{target.name}: {ev['split']} accuracy {ev['accuracy']:.4%} "
        f"on {ev['samples']} images, trained in {result.training['wall_time_seconds']} s"
    )
    for name, acc in ev["per_class_accuracy"].items():
        print(f"  {name:>6}: {acc:.2%}")
    c, u = calibrated.calibration, calibrated.uncertainty
    print(
        f"temperature {c['temperature']:.3f}: ECE {c['ece_before']:.2%} -> {c['ece_after']:.2%}; "
        f"uncertain below confidence {u['min_confidence']:.3f} or beyond distance "
        f"{u['max_distance']:.1f}: coverage {u['validation']['coverage']:.2%}, accuracy "
        f"unflagged {u['validation']['accuracy_unflagged']:.2%}"
    )
    print(f"exported to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
