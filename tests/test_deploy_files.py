"""cluster.yaml validates against the schema the installed Ray ships; the job specs are usable as written."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.runtime_env import RuntimeEnv

from raycf.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_validates_against_rays_schema() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    assert {"cpu_worker", "gpu_worker"} <= set(config["available_node_types"])
    storage = [line for line in config["setup_commands"] if "RAYCF_STORAGE" in line]
    assert len(storage) == 1  # the shared storage is named once


@pytest.mark.parametrize("name", ["runtime-env.yaml", "reference-study.yaml", "reference-score.yaml"])
def test_job_specs_hold_a_valid_runtime_env_and_a_raycf_entrypoint(name: str) -> None:
    spec = yaml.safe_load((ROOT / "jobs" / name).read_text())
    runtime_env = spec.get("runtime_env", spec)
    RuntimeEnv(**runtime_env)  # raises on unknown fields or wrong types
    if "entrypoint" in spec:
        program, command, *args = shlex.split(spec["entrypoint"])
        assert program == "raycf"
        context = cli.commands[command].make_context(command, list(args))  # the options parse
        assert context.params
