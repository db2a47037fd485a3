"""What `--submit` sends: the job's command line and its runtime environment (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

import raycf
from raycf.cluster.submit import job_arguments, require_cluster_path, runtime_env
from raycf.errors import RaycfError

ROOT = Path(__file__).resolve().parents[1]


def test_the_job_runs_the_command_without_the_submitting_options() -> None:
    argv = ["tune", "studies/quickstart.yaml", "--submit", "http://h:8265", "--no-wait", "--runtime-env=env.yaml",
            "--storage", "/shared/runs", "--runtime-env", "other.yaml", "--submit=http://h:8265", "--name", "q"]
    assert job_arguments(argv) == ["tune", "studies/quickstart.yaml", "--storage", "/shared/runs", "--name", "q"]


def test_default_runtime_env_carries_the_current_directory_and_this_raycf(tmp_path: Path) -> None:
    env = runtime_env(None, tmp_path)
    assert env["working_dir"] == str(tmp_path)
    assert env["py_modules"] == [str(Path(raycf.__file__).parent)]
    assert {".git", ".venv", "runs"} <= set(env["excludes"])


@pytest.mark.parametrize("spec", ["jobs/runtime-env.yaml", "jobs/reference-study.yaml"])
def test_a_runtime_env_file_or_a_job_spec_adds_its_settings(spec: str) -> None:
    env = runtime_env(str(ROOT / spec), ROOT)
    assert env["pip"] == ["."] and "RAYCF_STORAGE" in env["env_vars"]
    assert env["working_dir"] == str(ROOT)  # "." in the file means the directory the job is sent from
    assert "entrypoint" not in env


def test_bad_runtime_env_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "env.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(RaycfError, match="env.yaml: a runtime environment is a mapping"):
        runtime_env(str(path), tmp_path)
    with pytest.raises(RaycfError, match="missing.yaml: cannot read"):
        runtime_env(str(tmp_path / "missing.yaml"), tmp_path)


@pytest.mark.parametrize("value", ["runs", "./runs", "../x"])
def test_outputs_of_a_job_must_outlive_it(value: str) -> None:
    with pytest.raises(RaycfError, match="absolute path on shared storage or a URI"):
        require_cluster_path("--storage", value)


@pytest.mark.parametrize("value", ["/shared/runs", "s3://bucket/raycf"])
def test_shared_paths_and_uris_are_accepted(value: str) -> None:
    require_cluster_path("--storage", value)
