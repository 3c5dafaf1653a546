"""Where the repository and the test fixtures are, for tests at any depth of tests/."""

from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
FIXTURES = str(Path(ROOT) / "tests" / "fixtures")
