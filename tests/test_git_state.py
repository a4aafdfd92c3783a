"""A record names the commit it ran from and whether tracked files differed from it (`git_dirty`), so a shipped
study can show that its records came from a clean checkout of the named commit."""

from __future__ import annotations

import subprocess

import pytest

from ckd import run_record


@pytest.mark.parametrize("porcelain, dirty", [("", False), (" M ckd/train.py\n", True), ("A  new.py\n", True)])
def test_dirty_means_tracked_changes(monkeypatch, porcelain, dirty):
    calls = []
    monkeypatch.setattr(run_record, "_git", lambda *args: calls.append(args) or porcelain)
    assert run_record.git_dirty() is dirty
    assert calls == [("status", "--porcelain", "--untracked-files=no")]  # untracked results and caches do not count


def test_outside_a_git_checkout_both_are_unknown(monkeypatch):
    monkeypatch.setattr(run_record, "_git", lambda *args: None)
    assert run_record.git_state() == {"git_commit": None, "git_dirty": None}


def test_a_real_checkout_clean_then_edited_then_with_untracked_files(monkeypatch, tmp_path):
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "train.py").write_text("lr = 5e-5\n")
    git("add", "train.py")
    git("commit", "-q", "-m", "first")
    monkeypatch.setattr(run_record, "CHECKOUT", tmp_path)
    head = git("rev-parse", "HEAD")
    assert len(head) == 40
    assert run_record.git_state() == {"git_commit": head, "git_dirty": False}
    (tmp_path / "results.json").write_text("{}")  # untracked output: still the committed code
    assert run_record.git_state() == {"git_commit": head, "git_dirty": False}
    (tmp_path / "train.py").write_text("lr = 1e-4\n")  # an edit of tracked code: not the commit that ran
    assert run_record.git_state() == {"git_commit": head, "git_dirty": True}
    monkeypatch.setattr(run_record, "CHECKOUT", tmp_path / "results.json")  # not a folder: git cannot run there
    assert run_record.git_state() == {"git_commit": None, "git_dirty": None}
