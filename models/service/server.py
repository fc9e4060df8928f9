"""Running the app on uvicorn: loopback by default, a warning (and an explicit flag) for anything else."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import uvicorn

from models.search import SearchConfig
from models.service.app import create_app, remote_warning
from models.service.backend import SearchBackend, ServiceFiles


@dataclass(frozen=True)
class ServeConfig:
    """Where the service listens."""

    host: str = field(default="127.0.0.1", metadata={
        "help": "Address to bind; anything but loopback needs --allow-remote (no authentication, no TLS)."})
    port: int = field(default=8000, metadata={"help": "TCP port."})
    allow_remote: bool = field(default=False, metadata={
        "help": "Allow a non-loopback --host (prints a warning): anyone reaching it can query and read images."})


def serve(files: ServiceFiles, config: ServeConfig = ServeConfig(), search: SearchConfig = SearchConfig()) -> None:
    """Loads the model and the store once, then serves until interrupted; never writes into the store."""
    warning = remote_warning(config.host, config.allow_remote)
    if warning:
        print(warning, file=sys.stderr)
    backend = SearchBackend.open(files, search)
    print(backend.status, file=sys.stderr)
    print(f"serving on http://{config.host}:{config.port}/  (API docs: /docs)", file=sys.stderr)
    uvicorn.run(create_app(backend), host=config.host, port=config.port, log_level="warning")
