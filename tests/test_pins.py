"""pyproject.toml declares ranges; requirements/lock.txt and envs/*.yaml lock exact versions.

The locks must satisfy the ranges, agree with each other, and be what CI and the README install.
"""

import re
import sys
import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO

LOCK = REPO / "requirements" / "lock.txt"
INSTALL_FROM_LOCK = "pip install -c requirements/lock.txt -e"
# installed beside snakemake, not in job envs
RUNNER_ONLY = {"snakemake", "snakemake-executor-plugin-slurm", "pygments"}


def _project():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _ranges(requirements):
    return {canonicalize_name(r.name): r for r in map(Requirement, requirements)}


def _exact(lines, where):
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][A-Za-z0-9.+!]*)", line)
        assert match, f"{where}: {line!r} is not an exact pin (name==version)"
        pins[canonicalize_name(match.group(1))] = Version(match.group(2))
    return pins


def _lock():
    return _exact(LOCK.read_text().splitlines(), LOCK.name)


def _env(path):
    env = yaml.safe_load(path.read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python=")]
    assert len(python) == 1, f"{path.name} must pin python exactly once (python=X.Y)"
    return Version(python[0].split("=", 1)[1]), _exact(pip, path.name)


def _envs():
    paths = sorted((REPO / "envs").glob("*.yaml"))
    assert paths, "no envs/*.yaml"
    return {path.name: _env(path) for path in paths}


def test_pyproject_declares_ranges_not_pins():
    project = _project()
    for req in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        spec = Requirement(req).specifier
        assert spec and not any(s.operator in ("==", "===") for s in spec), f"{req!r}: give a range, not a pin"
    python = SpecifierSet(project["requires-python"])
    assert Version("3.11") in python and Version("3.10") not in python
    assert Version(f"{sys.version_info.major}.{sys.version_info.minor}") in python


def test_lock_satisfies_the_ranges():
    project, lock = _project(), _lock()
    for name, req in _ranges([*project["dependencies"], *project["optional-dependencies"]["test"]]).items():
        assert name in lock, f"{LOCK.name} lacks {name}, which pyproject.toml requires"
        assert req.specifier.contains(lock[name], prereleases=True), \
            f"{LOCK.name} has {name}=={lock[name]}, outside pyproject.toml's {req}"
    assert "cwnnk" not in lock, f"{LOCK.name} must not pin cwnnk itself (it is installed editable)"


def test_envs_agree_with_the_lock_and_the_ranges():
    project, lock = _ranges(_project()["dependencies"]), _lock()
    python = SpecifierSet(_project()["requires-python"])
    covered = set()
    for name, (env_python, pins) in _envs().items():
        assert env_python in python, f"{name} pins python={env_python}, outside requires-python {python}"
        for package, version in pins.items():
            assert package in lock, f"{name} pins {package}, which {LOCK.name} does not"
            assert version == lock[package], f"{name} pins {package}=={version}, {LOCK.name} {lock[package]}"
            if package in project:
                covered.add(package)
    assert set(project) - RUNNER_ONLY <= covered, f"not in any env: {set(project) - RUNNER_ONLY - covered}"


def test_ci_and_readme_install_from_the_lock():
    ci = (REPO / ".ci" / "run").read_text()
    assert f"{INSTALL_FROM_LOCK} '.[test]'" in ci
    readme = (REPO / "README.md").read_text()
    quick = readme[readme.index("## Quick start"):]
    commands = re.findall(r"```bash\n(.*?)\n```", quick, flags=re.S)[:2]
    assert len(commands) == 2 and all(INSTALL_FROM_LOCK in c for c in commands), commands
    assert commands[1] in ci, "CI must run the README's test command verbatim"


def test_every_rule_names_an_existing_env():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().is_file(), f"{smk.name} names missing env {env}"
