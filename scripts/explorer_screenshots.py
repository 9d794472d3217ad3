"""Regenerate the explorer's screenshots in docs/ (the README's and docs/explorer.md's).

python scripts/explorer_screenshots.py

Runs the browser tests that take them (headless Chromium against the real server, tests/
test_explorer.py and tests/test_snapshots.py), then copies the ones the documents show from
artifacts/screenshots/ into docs/.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "screenshots"
# artifacts/screenshots/<name>.png -> docs/<file>
WANTED = {
    "explorer": "explorer.png",
    "mnist-arithmetic": "explorer-arithmetic.png",
    "scenes-wiring": "explorer-wiring.png",
    "mnist-try-kernel": "explorer-kernels.png",
    "mnist-learning": "explorer-learning.png",
}
TESTS = [
    "tests/test_explorer.py::test_drawing_a_digit_makes_the_right_class_win",
    "tests/test_explorer.py::test_the_arithmetic_at_a_unit_gives_the_served_activation",
    "tests/test_explorer.py::test_wiring_shows_a_classes_strongest_connections",
    "tests/test_explorer.py::test_trying_the_seeds_kernels_on_the_input",
    "tests/test_snapshots.py::test_the_page_shows_it_learning_and_says_when_it_cannot",
]


def main() -> int:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", *TESTS], cwd=ROOT)
    if done.returncode != 0:
        print("the browser tests failed: docs/ left as it was", file=sys.stderr)
        return done.returncode
    for name, target in WANTED.items():
        shutil.copyfile(SHOTS / f"{name}.png", ROOT / "docs" / target)
        print(f"docs/{target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
