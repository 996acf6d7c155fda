"""Where the project keeps its cached corpus and backbones, and where its shipped YAML lives."""

import os
from pathlib import Path

#: Repository root when running from a checkout (profiles/ and scenarios/ live there).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Cache for the synthesised corpus and pretrained backbones: $TESTBED_CACHE or ~/.cache/testbed."""
    root = os.environ.get("TESTBED_CACHE") or Path.home() / ".cache" / "testbed"
    return Path(root)


def profiles_dir() -> Path:
    """Directory holding device profiles (`*.yaml`) and link presets (`links/*.yaml`)."""
    return Path(os.environ.get("TESTBED_PROFILES") or PROJECT_ROOT / "profiles")
