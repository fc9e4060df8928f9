#!/usr/bin/env bash
# Build an image and run it the way README.md says, for real: not part of `make test` (it needs an
# engine, ~20 GB of disk and, on two quiet cores, about 21 minutes for the CPU image).
# See `docker/smoke.sh --help`.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYPI_INDEX=https://pypi.org/simple
DEBIAN_MIRROR=http://deb.debian.org/debian
MIN_RSUM=300          # the demo reaches ~530; chance is 32
SMOKE_UID="$(id -u)"
SMOKE_GID="$(id -g)"
# Seconds between two engine timestamps ("2025-01-02T03:04:05.678Z" or podman's "2025-01-02 03:04:05.678 +0000 UTC").
SECONDS_BETWEEN='
import datetime, re, sys
def when(text):
    day, clock, frac = re.match(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:\.(\d+))?", text.strip()).groups()
    return datetime.datetime.fromisoformat(f"{day}T{clock}") + datetime.timedelta(seconds=float("0." + (frac or "0")))
start, end = sys.stdin.read().split("|")
print(f"{(when(end) - when(start)).total_seconds():.2f}")'

usage() {
    cat <<'EOF'
usage: docker/smoke.sh [--image cpu|cuda] [--engine auto|docker|podman] [--install-engine]
                       [--torch-index URL] [--work DIR] [--keep-images] [--no-compose]
       docker/smoke.sh --print-readme-commands

Builds docker/Dockerfile.<image> with docker or podman and runs it as README.md says:
  cpu:  the README's `docker run` line (the demo) in a fresh folder: recall table, artifacts owned
        by you, `scan-pipeline doctor` clean, the fused kernel's cache reused by the next --rm run,
        an unwritable workspace refused in one line within a second; then the README's
        `docker compose ... up` line in a fresh copy of the repository (docker only).
  cuda: the build, then torch's CUDA version and `scan-pipeline doctor --help` inside the image.
Where no registry answers, the base image is made from Debian's mirror with mmdebstrap; where the
CPU wheel index does not answer, torch comes from PyPI (CUDA wheels, ~3 GB more image).
Without a running engine it starts its own dockerd (own data root and socket, no iptables, no
bridge) or uses podman (runc, cgroupfs, host network); containers run in a private network
namespace. It stops what it started and removes its images, folders and data root at the end
(--keep-images keeps scan-pipeline:<image>). Packages it installed stay installed.

  --image cpu|cuda        which Dockerfile (default cpu)
  --engine E              auto (default: a running docker, else dockerd, else podman), docker, podman
  --install-engine        as root, apt-get install what is missing (docker.io, podman, mmdebstrap)
                          and docker compose v2 from Debian's mirror (into the work folder only)
  --torch-index URL       index for torch and torchvision (default: the Dockerfile's, if it answers)
  --work DIR              where engine data, logs and fresh folders go (default: a new /var/tmp folder)
  --keep-images           keep scan-pipeline:<image> (and leave an own engine's data root in --work)
  --no-compose            skip the compose run
  --print-readme-commands print the README lines this script runs, and exit
EOF
}

die() { echo "smoke: $*" >&2; exit 1; }
bad_usage() { echo "smoke: $*" >&2; exit 2; }
say() { echo "smoke: $*" >&2; }
report() { echo "SMOKE $*" | tee -a "$WORK/report.txt"; }

# The README lines run verbatim: each must occur exactly once.
readme_line() {
    local found count
    found="$(grep -E -- "$1" "$REPO/README.md" || true)"
    count="$(printf '%s' "$found" | grep -c . || true)"
    [ "$count" = 1 ] || die "README.md: expected one line matching '$1', found $count"
    printf '%s\n' "$found"
}
readme_run_line() { readme_line '^mkdir -p workspace && docker run --rm .*-v "\$PWD/workspace:/workspace" scan-pipeline:cpu$'; }
readme_compose_line() { readme_line '^mkdir -p workspace && .*docker compose -f docker/compose.yaml up .*runner$'; }

parse_args() {
    IMAGE=cpu ENGINE=auto INSTALL=0 TORCH_INDEX="" WORK="" KEEP=0 COMPOSE=1
    while [ $# -gt 0 ]; do
        case "$1" in
            --image) [ $# -ge 2 ] || bad_usage "--image needs cpu or cuda"; IMAGE="$2"; shift 2 ;;
            --engine) [ $# -ge 2 ] || bad_usage "--engine needs auto, docker or podman"; ENGINE="$2"; shift 2 ;;
            --install-engine) INSTALL=1; shift ;;
            --torch-index) [ $# -ge 2 ] || bad_usage "--torch-index needs a URL"; TORCH_INDEX="$2"; shift 2 ;;
            --work) [ $# -ge 2 ] || bad_usage "--work needs a folder"; WORK="$2"; shift 2 ;;
            --keep-images) KEEP=1; shift ;;
            --no-compose) COMPOSE=0; shift ;;
            --print-readme-commands) readme_run_line; readme_compose_line; exit 0 ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; bad_usage "unknown argument: $1" ;;
        esac
    done
    case "$IMAGE" in cpu|cuda) ;; *) bad_usage "--image must be cpu or cuda, not '$IMAGE'" ;; esac
    case "$ENGINE" in auto|docker|podman) ;; *) bad_usage "--engine must be auto, docker or podman, not '$ENGINE'" ;; esac
    [ "$INSTALL" = 0 ] || [ "$SMOKE_UID" = 0 ] || bad_usage "--install-engine needs root"
    DOCKERFILE="$REPO/docker/Dockerfile.$IMAGE"
    TAG="scan-pipeline:$IMAGE"
}

# ---------------------------------------------------------------- packages (--install-engine only)
apt_install() {
    [ "$INSTALL" = 1 ] || die "missing $*: install it, or run as root with --install-engine"
    local guard=/usr/sbin/policy-rc.d made=0
    # Installing docker.io must not start the distribution's daemon (it would set up docker0 and iptables).
    if [ ! -e "$guard" ]; then printf '#!/bin/sh\nexit 101\n' >"$guard"; chmod +x "$guard"; made=1; fi
    say "apt-get install $*"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >"$WORK/apt.log" 2>&1 \
        || { [ "$made" = 0 ] || rm -f "$guard"; tail -20 "$WORK/apt.log" >&2; die "apt-get install $* failed"; }
    [ "$made" = 0 ] || rm -f "$guard"
}

# docker compose v2 is not in Debian 12; Debian 13's package is unpacked into the work folder only.
compose_plugin() {
    docker compose version >/dev/null 2>&1 && return 0
    [ "$INSTALL" = 1 ] || return 1
    local apt="$WORK/apt-trixie" deb
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$WORK/docker-config/cli-plugins"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_MIRROR trixie main" >"$apt/sources.list"
    local opts=(-o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$apt/lists"
                -o "Dir::Cache=$apt/cache" -o APT::Get::List-Cleanup=0)
    apt-get "${opts[@]}" update -qq >"$WORK/apt-trixie.log" 2>&1 || return 1
    (cd "$apt" && apt-get "${opts[@]}" download docker-compose >>"$WORK/apt-trixie.log" 2>&1) || return 1
    deb="$(ls "$apt"/docker-compose_*.deb)"
    dpkg-deb -x "$deb" "$apt/root"
    cp "$apt/root/usr/libexec/docker/cli-plugins/docker-compose" "$WORK/docker-config/cli-plugins/"
    [ -f "${HOME:-/nonexistent}/.docker/config.json" ] && cp "$HOME/.docker/config.json" "$WORK/docker-config/"
    export DOCKER_CONFIG="$WORK/docker-config"
    docker compose version >/dev/null 2>&1
}

# ---------------------------------------------------------------- engines
OWN_DOCKERD=0 DOCKERD_PID="" PODMAN_DIR="" CONTAINERS=() MADE_IMAGES=() COMPOSE_DIR="" OLD_IMAGE_ID=""

start_dockerd() {  # $1: "host" (builds reach PyPI) or "private" (runs: a network namespace of its own)
    local engine="$WORK/engine" wrap=()
    mkdir -p "$engine"
    # The private namespace has no way out; forwarding inside it only keeps the engine from warning
    # "IPv4 forwarding is disabled" on every run (the host's setting is not touched).
    [ "$1" = private ] && wrap=(unshare --net --fork -- sh -c 'ip link set lo up && sysctl -qw net.ipv4.ip_forward=1 && exec "$0" "$@"')
    "${wrap[@]}" dockerd --data-root "$engine/data" --exec-root "$engine/exec" -H "unix://$engine/docker.sock" \
        --pidfile "$engine/dockerd.pid" --iptables=false --ip6tables=false --bridge=none --ip-forward=false \
        --ip-masq=false >>"$engine/dockerd.log" 2>&1 &
    export DOCKER_HOST="unix://$engine/docker.sock"
    OWN_DOCKERD=1
    local i
    for i in $(seq 1 120); do
        docker info >/dev/null 2>&1 && { DOCKERD_PID="$(cat "$engine/dockerd.pid")"; return 0; }
        sleep 1
    done
    tail -20 "$engine/dockerd.log" >&2
    die "dockerd did not start (log: $engine/dockerd.log)"
}

stop_dockerd() {
    [ -n "$DOCKERD_PID" ] || return 0
    kill -TERM "$DOCKERD_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    kill -0 "$DOCKERD_PID" 2>/dev/null && kill -KILL "$DOCKERD_PID"
    DOCKERD_PID=""
    wait 2>/dev/null || true
}

setup_podman() {
    PODMAN_DIR="$WORK/podman"
    mkdir -p "$PODMAN_DIR/bin"
    cat >"$PODMAN_DIR/containers.conf" <<EOF
[containers]
netns = "host"
default_ulimits = ["nofile=65536:65536", "nproc=65536:65536"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
    cat >"$PODMAN_DIR/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$PODMAN_DIR/storage"
runroot = "$PODMAN_DIR/run"
EOF
    export CONTAINERS_CONF="$PODMAN_DIR/containers.conf" CONTAINERS_STORAGE_CONF="$PODMAN_DIR/storage.conf"
    # The README says `docker`; the same words run podman here.
    printf '#!/bin/sh\nexec podman "$@"\n' >"$PODMAN_DIR/bin/docker"
    chmod +x "$PODMAN_DIR/bin/docker"
    export PATH="$PODMAN_DIR/bin:$PATH"
}

choose_engine() {
    if [ "$ENGINE" != podman ] && command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        ENGINE=docker; say "using the running docker engine"; return
    fi
    if [ "$ENGINE" = auto ]; then
        if command -v dockerd >/dev/null; then ENGINE=docker
        elif command -v podman >/dev/null; then ENGINE=podman
        else ENGINE=docker; fi
    fi
    if [ "$ENGINE" = docker ]; then
        command -v dockerd >/dev/null || apt_install docker.io
        start_dockerd host
    else
        command -v podman >/dev/null || apt_install podman runc
        setup_podman
    fi
}

engine_version() {
    if [ "$ENGINE" = podman ]; then echo "podman $(podman version --format '{{.Version}}')"
    else echo "docker engine $(docker version --format '{{.Server.Version}}') (client $(docker version --format '{{.Client.Version}}'))"; fi
}

# ---------------------------------------------------------------- images
dockerfile_arg() { sed -n "s/^ARG $1=//p" "$DOCKERFILE" | head -1 | tr -d '"'; }

base_image() {
    local wanted base tarball certs=()
    wanted="$(dockerfile_arg BASE_IMAGE)"
    if docker image inspect "$wanted" >/dev/null 2>&1 || timeout 60 docker pull "$wanted" >/dev/null 2>&1; then
        report "base_image=$wanted (registry)"; BASE_ARGS=(); return
    fi
    base="scan-smoke-base:bookworm-python3.11"
    BASE_ARGS=(--build-arg "BASE_IMAGE=$base")
    if docker image inspect "$base" >/dev/null 2>&1; then  # kept from an earlier --keep-images run
        MADE_IMAGES+=("$base"); report "base_image=$base (kept from an earlier run; stands in for $wanted)"; return
    fi
    say "no registry answers for $wanted: making $base from Debian's mirror with mmdebstrap"
    command -v mmdebstrap >/dev/null || apt_install mmdebstrap
    tarball="$WORK/base.tar"
    # pip inside the build verifies PyPI against the system store: trust what this host trusts.
    shopt -s nullglob
    local extra=(/usr/local/share/ca-certificates/*.crt)
    shopt -u nullglob
    [ ${#extra[@]} = 0 ] || certs=(--customize-hook="copy-in ${extra[*]} /usr/local/share/ca-certificates/"
                                   --customize-hook='chroot "$1" update-ca-certificates')
    mmdebstrap --variant=apt --include=python3.11,python3.11-venv,ca-certificates,passwd \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        "${certs[@]}" bookworm "$tarball" "deb $DEBIAN_MIRROR bookworm main" \
        "deb $DEBIAN_MIRROR bookworm-updates main" "deb $DEBIAN_MIRROR-security bookworm-security main" \
        >"$WORK/mmdebstrap.log" 2>&1 || { tail -20 "$WORK/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
    docker import "$tarball" "$base" >/dev/null
    rm -f "$tarball"
    MADE_IMAGES+=("$base")
    report "base_image=$base (mmdebstrap bookworm: python3.11, python3.11-venv; stands in for $wanted)"
}

torch_index_args() {
    local default
    default="$(dockerfile_arg TORCH_INDEX_URL)"
    if [ -z "$TORCH_INDEX" ]; then
        if curl -sf -o /dev/null --max-time 20 "${default%/}/torch/"; then TORCH_INDEX="$default"
        else TORCH_INDEX="$PYPI_INDEX"; say "$default does not answer: torch from $PYPI_INDEX"; fi
    fi
    report "torch_index=$TORCH_INDEX"
    INDEX_ARGS=()
    [ "$TORCH_INDEX" = "$default" ] || INDEX_ARGS=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX")
}

build_image() {
    local start log="$WORK/build-$IMAGE.log" buildkit=()
    OLD_IMAGE_ID="$(docker image inspect -f '{{.Id}}' "$TAG" 2>/dev/null || true)"
    if [ "$ENGINE" = docker ] && ! docker buildx version >/dev/null 2>&1; then buildkit=(env DOCKER_BUILDKIT=0); fi
    say "building $TAG (log: $log)"
    start="$(date +%s)"
    "${buildkit[@]}" docker build --network host -f "$DOCKERFILE" -t "$TAG" "${BASE_ARGS[@]}" "${INDEX_ARGS[@]}" "$REPO" \
        >"$log" 2>&1 || { tail -30 "$log" >&2; die "build of $TAG failed"; }
    MADE_IMAGES+=("$TAG")
    report "build_seconds=$(( $(date +%s) - start ))"
    report "image_size_bytes=$(docker image inspect -f '{{.Size}}' "$TAG")"
}

# ---------------------------------------------------------------- runs
fresh_folder() { local dir="$WORK/$1"; rm -rf "$dir"; mkdir -p "$dir"; echo "$dir"; }

check_owned() {  # $1: folder; everything in it belongs to the user who ran the smoke
    local strangers
    strangers="$(find "$1" \( ! -uid "$SMOKE_UID" -o ! -gid "$SMOKE_GID" \) -print | head -5)"
    [ -z "$strangers" ] || die "not owned by $SMOKE_UID:$SMOKE_GID: $strangers"
}

check_demo_output() {  # $1: log, $2: workspace
    local rsum
    grep -Eq '^i2t +[0-9.]+' "$1" && grep -Eq '^t2i +[0-9.]+' "$1" || die "no recall table in $1"
    rsum="$(sed -nE 's/^rsum +([0-9.]+).*/\1/p' "$1" | tail -1)"
    awk -v r="$rsum" -v m="$MIN_RSUM" 'BEGIN { exit !(r >= m) }' || die "rsum $rsum below $MIN_RSUM"
    report "demo_rsum=$rsum"
    local wanted
    for wanted in 'TrainModel/demo-*/model_best.pth' 'Report/demo-*/report.md' 'FeatureStore/demo-*/store/store.json'; do
        compgen -G "$2/$wanted" >/dev/null || die "missing artifact $2/$wanted"
    done
    check_owned "$2"
}

run_readme_demo() {
    local dir line start
    dir="$(fresh_folder demo)"
    line="$(readme_run_line)"
    say "in a fresh folder: $line"
    start="$(date +%s)"
    (cd "$dir" && sh -c "$line") >"$WORK/demo.log" 2>&1 || { tail -30 "$WORK/demo.log" >&2; die "the README's docker run failed"; }
    report "demo_seconds=$(( $(date +%s) - start ))"
    check_demo_output "$WORK/demo.log" "$dir/workspace"
    DEMO_DIR="$dir"
}

run_in_workspace() {  # the README's user and volume, another command
    (cd "$DEMO_DIR" && docker run --rm --user "$SMOKE_UID:$SMOKE_GID" -v "$DEMO_DIR/workspace:/workspace" "$TAG" "$@")
}

check_doctor_and_kernel_cache() {
    run_in_workspace scan-pipeline doctor /workspace >"$WORK/doctor.log" 2>&1 \
        || { cat "$WORK/doctor.log" >&2; die "scan-pipeline doctor found problems in the demo workspace"; }
    report "doctor=clean"
    # The demo is below the size at which scoring uses the fused kernel, so build it here, in one
    # --rm container, and check that the next --rm container loads it from the workspace as it is.
    local probe='from models import fused; assert fused.available()' so before start
    start="$(date +%s)"
    run_in_workspace python -c "$probe" || die "the fused kernel could not be built in the container"
    report "kernel_build_seconds=$(( $(date +%s) - start ))"
    so="$(find "$DEMO_DIR/workspace/.cache/torch_extensions" -name 'scan_fused_*.so' | head -1)"
    [ -n "$so" ] || die "the fused kernel was not cached on the workspace volume"
    before="$(stat -c %Y "$so")"
    start="$(date +%s)"
    run_in_workspace python -c "$probe" || die "the fused kernel did not load in a second --rm run"
    [ "$(stat -c %Y "$so")" = "$before" ] || die "the second --rm run rebuilt the fused kernel"
    report "kernel_reuse=yes (second --rm run loaded it in $(( $(date +%s) - start )) s, no rebuild)"
    check_owned "$DEMO_DIR/workspace"
}

check_refused() {  # $1: label; rest: docker run arguments. One line, naming /workspace, within a second.
    local label="$1" name="scan-smoke-$1" out rc seconds
    shift
    CONTAINERS+=("$name")
    docker run --name "$name" "$@" "$TAG" >/dev/null 2>&1 && die "$label: an unwritable workspace was accepted"
    out="$(docker logs "$name" 2>&1)"  # what the container said, without the engine's own warnings
    rc="$(docker inspect -f '{{.State.ExitCode}}' "$name")"
    seconds="$(docker inspect -f '{{.State.StartedAt}}|{{.State.FinishedAt}}' "$name" | python3 -c "$SECONDS_BETWEEN")"
    docker rm "$name" >/dev/null
    [ "$(printf '%s\n' "$out" | grep -c .)" = 1 ] || die "$label: expected one line, got: $out"
    case "$out" in *"/workspace"*fix:*) ;; *) die "$label: the message does not name /workspace and the fix: $out" ;; esac
    awk -v s="$seconds" 'BEGIN { exit !(s < 1) }' || die "$label: took $seconds s"
    report "refused_$label=exit $rc in $seconds s: $out"
}

check_unwritable_workspaces() {
    local dir
    dir="$(fresh_folder refused)"
    mkdir -p "$dir/ro"
    check_refused read_only -v "$dir/ro:/workspace:ro"
    # What the README's old command met: docker creates a missing folder owned by root (podman refuses it).
    [ "$ENGINE" = podman ] || check_refused engine_created_folder -v "$dir/missing:/workspace"
}

# The runner's own output from `compose up`'s log: compose prefixes each line with the container's name
# and, even into a file, with terminal escapes (erase line) that must go before the prefix can match.
runner_lines() { sed -E 's/\x1b\[[0-9;?]*[A-Za-z]//g' "$1" | sed -nE 's/^runner[^|]*\| ?//p'; }

run_readme_compose() {
    [ "$COMPOSE" = 1 ] || { report "compose=skipped (--no-compose)"; return; }
    [ "$ENGINE" = docker ] || die "the compose run needs docker (podman: pass --no-compose)"
    compose_plugin || die "docker compose v2 is missing (install it, or run as root with --install-engine)"
    report "compose_version=$(docker compose version --short)"
    local dir line start
    dir="$(fresh_folder compose)"
    (cd "$REPO" && git ls-files -co --exclude-standard -z | grep -zv '^workspace/' | tar --null -T - -cf -) | tar -xf - -C "$dir"
    line="$(readme_compose_line)"
    COMPOSE_DIR="$dir"
    say "in a fresh copy of the repository: $line"
    start="$(date +%s)"
    (cd "$dir" && sh -c "$line") >"$WORK/compose.log" 2>&1 || { tail -40 "$WORK/compose.log" >&2; die "the README's docker compose up failed"; }
    report "compose_seconds=$(( $(date +%s) - start ))"
    runner_lines "$WORK/compose.log" >"$WORK/compose-runner.log"
    check_demo_output "$WORK/compose-runner.log" "$dir/workspace"
}

run_cuda_checks() {
    local out
    out="$(docker run --rm "$TAG" python -c 'import torch; print(torch.__version__, torch.version.cuda)')" \
        || die "torch does not import in $TAG"
    report "cuda_torch=$out"
    docker run --rm "$TAG" scan-pipeline doctor --help >"$WORK/doctor-help.log" 2>&1 \
        || { cat "$WORK/doctor-help.log" >&2; die "scan-pipeline doctor --help failed in $TAG"; }
    grep -q '^usage:' "$WORK/doctor-help.log" || die "no usage line from scan-pipeline doctor --help"
    report "cuda_doctor_help=ok"
}

# ---------------------------------------------------------------- cleanup
cleanup() {
    local rc=$?
    set +e
    [ -z "$COMPOSE_DIR" ] || (cd "$COMPOSE_DIR" && docker compose -f docker/compose.yaml down --volumes --remove-orphans >/dev/null 2>&1)
    local name
    for name in "${CONTAINERS[@]}"; do docker rm -f "$name" >/dev/null 2>&1; done
    if [ "$KEEP" = 0 ]; then
        for name in "${MADE_IMAGES[@]}"; do docker rmi -f "$name" >/dev/null 2>&1; done
        [ -z "$OLD_IMAGE_ID" ] || docker tag "$OLD_IMAGE_ID" "$TAG" >/dev/null 2>&1
    fi
    stop_dockerd
    if [ -n "$PODMAN_DIR" ]; then podman rm -af >/dev/null 2>&1; [ "$KEEP" = 1 ] || podman system reset -f >/dev/null 2>&1; fi
    # dockerd leaves its network namespace file mounted under the exec root
    [ -z "${WORK:-}" ] || findmnt -rn -o TARGET | grep "^$WORK/" | sort -r | xargs -r -n1 umount -l 2>/dev/null
    if [ "$KEEP" = 0 ] && [ -n "${WORK:-}" ]; then
        if [ "$WORK_MADE" = 1 ]; then rm -rf "$WORK"
        else  # a folder the user named: keep its logs and report, remove what the runs made
            rm -rf "$WORK/engine" "$WORK/podman" "$WORK/base.tar" "$WORK/demo" "$WORK/refused" "$WORK/compose" \
                   "$WORK/apt-trixie" "$WORK/docker-config"
        fi
    fi
    [ "$rc" = 0 ] && echo "smoke: passed" >&2 || echo "smoke: FAILED (exit $rc)" >&2
    exit "$rc"
}

main() {
    parse_args "$@"
    WORK_MADE=0
    if [ -z "$WORK" ]; then WORK="$(mktemp -d /var/tmp/scan-smoke.XXXXXX)"; WORK_MADE=1; fi
    mkdir -p "$WORK"
    WORK="$(cd "$WORK" && pwd)"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    choose_engine
    report "engine=$(engine_version)"
    report "image=$TAG"
    base_image
    torch_index_args
    build_image
    if [ "$OWN_DOCKERD" = 1 ]; then stop_dockerd; start_dockerd private; fi  # runs need no network
    if [ "$IMAGE" = cuda ]; then run_cuda_checks; return; fi
    run_readme_demo
    check_doctor_and_kernel_cache
    check_unwritable_workspaces
    run_readme_compose
}

# Sourced (the tests call its functions), it only defines them.
[ "${BASH_SOURCE[0]}" != "$0" ] || main "$@"
