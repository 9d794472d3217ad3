"""Give an exported version the training snapshots it was made without (training/snapshots.py).

python scripts/replay_snapshots.py scenes models/scenes/5 [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.recipes import RECIPES
from training.snapshots import replay


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=sorted(RECIPES))
    p.add_argument("version_dir", type=Path)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--epochs", type=int, default=5, help="epochs to replay (default 5)")
    args = p.parse_args()
    folder = replay(RECIPES[args.model], args.version_dir, args.data_dir, args.epochs)
    print(f"snapshots written to {folder}")


if __name__ == "__main__":
    main()
