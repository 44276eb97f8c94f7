"""Every benchmark JSON says which code made it: the commit and any uncommitted change to the code."""

import subprocess

from latentlm.core import bench


def test_machine_records_the_commit_and_uncommitted_code(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "src" / "a.py").write_text("x = 1\n")
    (repo / "benchmarks" / "results" / "r.json").write_text("{}\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    monkeypatch.setattr(bench, "REPO", repo)
    head = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert bench.machine()["git_commit"] == head and bench.machine()["git_uncommitted"] == []
    (repo / "src" / "a.py").write_text("x = 2\n")
    (repo / "benchmarks" / "results" / "r.json").write_text('{"new": 1}\n')  # results are not code
    assert bench.machine()["git_uncommitted"] == ["src/a.py"]
