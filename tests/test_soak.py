"""A short kill-and-restart soak (benchmarks/soak.py): every frame stored intact once, the run finalized."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SOAK = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"


@pytest.fixture(scope="module")
def soak_module():
    spec = importlib.util.spec_from_file_location("lowdose_soak", _SOAK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_sigkilled_daemon_loses_no_frame_and_finalizes_the_run(soak_module, tmp_path):
    # 3 SIGKILLs: one while a fresh daemon resumes the run (so two processes die), one while frames
    # stream, one right after the hook heard finished; short pauses keep the test short.
    result = soak_module.soak(400, 3, rate=100.0, seed=7, pauses=(0.1, 0.6), finish_timeout=60.0,
                              finalize_timeout=20.0, work=tmp_path)
    print(result.line())
    assert result.kills == 3 and result.kills_during_resume == 1 and result.kill_after_end_ack, result
    assert (result.lost, result.duplicated, result.corrupted) == (0, 0, 0), result
    assert result.intact == result.sent == 400, result
    assert result.report_ok, result.notes
    assert result.finalized and result.restored == 400, result
    assert result.spooled == 0, result
