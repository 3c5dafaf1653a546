"""Running experiments: what launch.py calls (multi-host supervision so far; the modes move here with issue 22)."""
