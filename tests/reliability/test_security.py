"""Security defaults: services bind to localhost, pickles only through allow-lists (test_untrusted_files),
paths confined to their dataset root, and no absolute machine path in what a run leaves behind."""
from __future__ import annotations

import configparser
from pathlib import Path

import pytest
import yaml

from extractors.distributed import DaskConfig
from pipeline.errors import InputError
from pipeline.paths import confine

REPO_ROOT = Path(__file__).resolve().parents[2]


def _published_ports(compose_file: Path) -> list[str]:
    document = yaml.safe_load(compose_file.read_text())
    return [str(port) for service in (document.get("services") or {}).values() for port in service.get("ports", [])]


@pytest.mark.parametrize("name", ["compose.yaml", "compose.cuda.yaml"])
def test_compose_publishes_every_port_on_localhost_only(name) -> None:
    path = REPO_ROOT / "docker" / name
    ports = _published_ports(path)
    assert all(port.startswith("127.0.0.1:") for port in ports), ports
    if name == "compose.yaml":
        assert len(ports) >= 3  # luigid web UI, Dask scheduler, Dask dashboard


def test_default_services_are_local() -> None:
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "luigi.cfg")
    assert config["core"]["scheduler_host"] in ("localhost", "127.0.0.1")
    assert DaskConfig().host == "127.0.0.1" and DaskConfig().scheduler_address == ""


@pytest.mark.parametrize("relative", ["../x.jpg", "a/../../x.jpg", "/etc/passwd", "C:/x.jpg", "..", "", "a\x00b"])
def test_paths_from_data_files_cannot_leave_the_dataset_root(tmp_path, relative) -> None:
    with pytest.raises(InputError) as raised:
        confine(tmp_path, relative, source=tmp_path / "captions.json", location="images[3]")
    assert raised.value.location == "images[3]" and raised.value.path.endswith("captions.json")


@pytest.mark.parametrize("relative", ["a.jpg", "sub/../a.jpg", "./x/y z.png", "ünï/写真.jpg", "..a.jpg"])
def test_ordinary_relative_paths_stay_inside(tmp_path, relative) -> None:
    path = confine(tmp_path, relative, source=tmp_path / "captions.json")
    assert tmp_path.resolve() in path.parents

