#!/bin/sh
# Entry point of both images: refuse, in one line and before Python starts, a workspace this user
# cannot write (a missing host folder that the engine created owned by root, a read-only mount),
# and give users run with --user "$(id -u):$(id -g)" a writable HOME. Then run the command.
set -eu
workspace="${SCAN_WORKSPACE:-/workspace}"
if ! [ -d "$workspace" ] || ! [ -w "$workspace" ]; then
    echo "scan-pipeline: cannot write the workspace $workspace as uid $(id -u):$(id -g); fix: create the host folder yourself and run as its owner, e.g. mkdir -p workspace && docker run --rm --user \"\$(id -u):\$(id -g)\" -v \"\$PWD/workspace:$workspace\" IMAGE" >&2
    exit 73
fi
if ! [ -d "${HOME:-/nonexistent}" ] || ! [ -w "${HOME:-/nonexistent}" ]; then
    HOME="$(mktemp -d)"
    export HOME
fi
exec "$@"
