"""envs/*.yaml (for --sdm conda) must pin the same versions as pyproject.toml."""

import re
import tomllib

import yaml

from conftest import REPO

RUNNER_ONLY = {"snakemake", "snakemake-executor-plugin-slurm"}  # installed beside snakemake, not in job envs


def _pins(requirements):
    pins = {}
    for req in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][A-Za-z0-9.]*)", req.strip())
        assert match, f"{req!r} is not an exact pin (name==version)"
        pins[match.group(1).lower()] = match.group(2)
    return pins


def _env_pins(path):
    env = yaml.safe_load(path.read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "python=3.11" in env["dependencies"], f"{path.name} must pin python=3.11"
    return _pins(pip)


def test_pyproject_pins_everything_exactly():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    _pins(project["dependencies"])
    _pins(project["optional-dependencies"]["test"])
    assert project["requires-python"] == "==3.11.*"


def test_envs_agree_with_pyproject():
    project = _pins(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert envs, "no envs/*.yaml"
    covered = set()
    for path in envs:
        for name, version in _env_pins(path).items():
            assert name in project, f"{path.name} pins {name}, which pyproject.toml does not list"
            assert version == project[name], f"{path.name} pins {name}=={version}, pyproject.toml {project[name]}"
            covered.add(name)
    assert set(project) - RUNNER_ONLY <= covered, f"not in any env: {set(project) - RUNNER_ONLY - covered}"


def test_every_rule_names_an_existing_env():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().is_file(), f"{smk.name} names missing env {env}"
