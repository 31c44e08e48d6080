"""LangGraph Academy's double-texting lesson, run unchanged against `threadbus dev` serving the examples."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT, ThreadbusProcess

EXAMPLES = ROOT / "examples" / "langgraph.json"


def test_the_double_texting_lesson_meets_every_expectation(tmp_path):
    # A broker of its own: the session's executors do not serve the example graphs.
    proc = ThreadbusProcess(
        ["dev", "--data-dir", str(tmp_path / "data"), "--config", str(EXAMPLES)], log_path=tmp_path / "threadbus.log"
    ).start()
    try:
        lesson = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "double_texting.py"), proc.url],
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        proc.stop()
    assert lesson.returncode == 0, lesson.stdout[-3000:] + lesson.stderr[-3000:]
    assert lesson.stdout.count("  ok: ") == 7
    assert "Original run was correctly deleted" in lesson.stdout
