"""DDP attacks: a model given as a ``.py`` spec, a rank that raises, a worker that crashes or
hangs. The phase ends in a finding naming the rank that failed first, the earlier phases'
results stay in the JSON, and no worker process is left behind."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

from surgery.cli import main

pytestmark = pytest.mark.slow

SPEC_SOURCE = '''
import os
import time

import torch.distributed as dist
from torch import nn


class Net(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        if dist.is_initialized() and dist.get_rank() == 1:
            if self.mode == "raise":
                raise RuntimeError("rank one broke on purpose")
            if self.mode == "crash":
                os._exit(7)
            if self.mode == "hang":
                time.sleep(3600)
        return self.head(self.conv(x).mean((2, 3)))


def healthy():
    return Net("ok")


def raises():
    return Net("raise")


def crash():
    return Net("crash")


def hang():
    return Net("hang")
'''


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    file = tmp_path_factory.mktemp("ddp_specs") / "ddp_model.py"
    file.write_text(SPEC_SOURCE)
    return file


def _children() -> list[int]:
    """Process ids of this process's children still alive (multiprocessing's own resource tracker,
    shared by every spawn in the process and ending with it, does not count)."""
    me = str(os.getpid())
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z" and "resource_tracker" not in _cmdline(pid):
                found.append(int(pid))
    return found


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def smoke(spec: str, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict[str, Any]]:
    code = main(["smoke", spec, "--ddp", "2", "--device", "cpu", "--image-size", "32", "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_ddp_runs_a_model_given_as_a_py_spec(spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, body = smoke(f"{spec_file}:healthy", capsys)
    assert (code, body["ok"], [(p["name"], p["status"]) for p in body["phases"]]) == (
        0, True, [("check", "ok"), ("train", "ok"), ("eval", "ok"), ("ddp", "ok")])


def test_error_on_rank_1_is_blamed_on_rank_1_alone(spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, body = smoke(f"{spec_file}:raises", capsys)
    assert code == 1
    assert [f["message"] for f in body["findings"]] == [
        "DDP rank 1, step 1 raised RuntimeError in the model's own forward (Net): rank one broke on purpose"]
    assert [(p["name"], p["status"]) for p in body["phases"]] == [("check", "ok"), ("train", "ok"), ("eval", "ok"), ("ddp", "failed")]


def test_crashed_worker_keeps_the_earlier_phases(spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, body = smoke(f"{spec_file}:crash", capsys)
    assert code == 1
    assert [(p["name"], p["status"]) for p in body["phases"]] == [("check", "ok"), ("train", "ok"), ("eval", "ok"), ("ddp", "failed")]
    assert body["losses"]  # the train phase's losses survive
    (finding,) = body["findings"]
    assert finding["message"].startswith("the DDP phase did not finish: rank 1 exited with code 7 without a result (crashed or killed)")
    assert multiprocessing.active_children() == [] and _children() == []


def test_hanging_worker_is_killed_at_the_timeout(spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, body = smoke(f"{spec_file}:hang", capsys, "--ddp-timeout", "20")
    assert code == 1
    assert [(p["name"], p["status"]) for p in body["phases"]] == [("check", "ok"), ("train", "ok"), ("eval", "ok"), ("ddp", "failed")]
    (finding,) = body["findings"]
    assert finding["message"].startswith("the DDP phase did not finish: its 2 workers ran past 20 s and were killed")
    assert finding["fix"] == "raise ddp_timeout (--ddp-timeout) or lower image_size"
    assert multiprocessing.active_children() == [] and _children() == []
