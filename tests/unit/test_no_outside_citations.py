"""Nothing in the repository cites a file outside it: what a newcomer needs is in docs/."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"DESIGN\.md|FIELD-NOTES\.md|\.\./shared/")


def test_no_file_cites_the_design_notes_outside_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    this = Path(__file__).relative_to(ROOT).as_posix()
    citing = [
        path
        for path in tracked
        if path != this
        and (ROOT / path).is_file()
        and OUTSIDE.search((ROOT / path).read_text(errors="replace"))
    ]
    assert citing == [], f"these files cite a file outside the repository: {citing}"
