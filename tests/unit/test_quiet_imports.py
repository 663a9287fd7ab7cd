"""Importing the operator, the CLI and the admission child writes no warning: the CLI's
errors are one line on stderr (tests/unit/test_settings.py), and a library's deprecation
warning at import would be a second (cryptography 51 warns on any use of its DSA classes)."""

from __future__ import annotations

import subprocess
import sys


def test_the_operator_cli_and_admission_child_import_without_a_warning() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-c",
            "import meshless.operator, meshless.cli, meshless.admission.child",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
