"""Where the repository is, for tests at any depth of the tree."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
