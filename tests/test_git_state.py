"""A record names the commit it ran from and whether tracked files differed from it (`git_dirty`), so a shipped
study can show that its records came from a clean checkout of the named commit."""

from __future__ import annotations

import subprocess

import pytest

from ckd import run_record
from tests.conftest import REPO


@pytest.mark.parametrize("porcelain, dirty", [("", False), (" M ckd/train.py\n", True), ("A  new.py\n", True)])
def test_dirty_means_tracked_changes(monkeypatch, porcelain, dirty):
    calls = []
    monkeypatch.setattr(run_record, "_git", lambda *args: calls.append(args) or porcelain)
    assert run_record.git_dirty() is dirty
    assert calls == [("status", "--porcelain", "--untracked-files=no")]  # untracked results and caches do not count


def test_outside_a_git_checkout_both_are_unknown(monkeypatch):
    monkeypatch.setattr(run_record, "_git", lambda *args: None)
    assert run_record.git_state() == {"git_commit": None, "git_dirty": None}


def test_this_checkout_is_read_as_git_reads_it():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True)
    assert run_record.git_state() == {"git_commit": head.stdout.strip(), "git_dirty": bool(status.stdout.strip())}
