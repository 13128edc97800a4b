#!/usr/bin/env bash
# The Raspberry Pi path, checked under emulation: builds a Debian bookworm rootfs for each ARM architecture
# (mmdebstrap + qemu-user-static), copies this checkout in, and inside it runs the shell blocks of README.md's
# "Raspberry Pi" section exactly as written (extracted from README.md, never a copy), then the quickstart,
# `microblob serve` answering a real request, and a named subset of the tests. Prints a summary; exits
# non-zero when any step fails.
#
#   sudo ci/arm-smoke.sh [armhf] [arm64]        (default: both; or `tox -e arm-smoke`)
#
# Runs as root on a Debian bookworm x86_64 (or arm) host and installs what it needs there. Not part of every
# CI run: the first run takes tens of minutes (rootfs, compiling the armhf wheels under qemu); re-runs reuse
# the cached rootfs tarballs and pip's wheel cache under $ARM_SMOKE_CACHE.
#
# Environment:
#   ARM_SMOKE_CACHE    rootfs tarballs, apt's .debs and pip's cache (default /var/cache/microblob-arm-smoke)
#   ARM_SMOKE_MIRROR   Debian mirror (default http://deb.debian.org/debian; -security is derived from it)
#   ARM_SMOKE_REFRESH  1: build the rootfs tarballs anew
#   ARM_SMOKE_KEEP     1: keep the unpacked rootfs directories (their paths are printed)
#   ARM_SMOKE_TESTS    the tests to run (default below); ARM_SMOKE_PYTEST_ARGS: more pytest arguments
#
# README contract: each shell block of the Raspberry Pi section is a ```sh fence whose first line is exactly
# the marker below. A block whose second line names "(armhf)" or "(arm64)" runs on that architecture only;
# any other runs on both. Blocks run in README order, as root, in the project's directory, in one bash
# (`set -euxo pipefail`), so `. .venv/bin/activate` carries over; `sudo` is the rootfs's real sudo.
set -euo pipefail

MARKER='# on the Raspberry Pi'
SUITE=bookworm
# What every Raspberry Pi OS image has; everything else must come from the README's commands.
BASE_PACKAGES=ca-certificates,sudo,python3
# The tests that exercise what depends on the machine (word size, alignment, mmap, fork, sockets): the LMDB
# engine (map growth and its 32-bit cap, the other-word-size error, fork, multi-process), objects and files
# (chunked streaming, sha256, inline payloads), versions (compare-and-swap across threads) and the HTTP server
# with its store routes over real sockets. About 20 s natively, several minutes under qemu.
DEFAULT_TESTS="tests/test_lmdb_engine.py tests/test_objects.py tests/test_files.py tests/test_versions.py
tests/test_http_server.py tests/test_http_store_routes.py"
# The MongoDB backend needs a server that is not part of this check: -k deselects it (lmdb, memory and
# mongita still run).
DEFAULT_PYTEST_ARGS="-k 'not mongodb'"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${ARM_SMOKE_CACHE:-/var/cache/microblob-arm-smoke}
MIRROR=${ARM_SMOKE_MIRROR:-http://deb.debian.org/debian}
TESTS=${ARM_SMOKE_TESTS:-$DEFAULT_TESTS}
TESTS=${TESTS//$'\n'/ }
PYTEST_ARGS=${ARM_SMOKE_PYTEST_ARGS:-$DEFAULT_PYTEST_ARGS}
NICE=(nice -n 15)   # the heavy parts share the machine
WORK=""
SUMMARY=()
FAILED=0

say() { printf '\n=== %s\n' "$*"; }
die() { printf 'arm-smoke: %s\n' "$*" >&2; exit 2; }

record() {  # record ARCH STEP STATUS SECONDS [NOTE]
  SUMMARY+=("$(printf '%-6s %-38s %-5s %5ss  %s' "$1" "$2" "$3" "$4" "${5:-}")")
  if [[ $3 == FAIL ]]; then FAILED=1; fi
}

# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
  local rc=$?
  if [[ -n $WORK && -d $WORK ]]; then
    if [[ ${ARM_SMOKE_KEEP:-0} == 1 ]]; then
      echo "arm-smoke: kept $WORK"
    else
      # The bind mounts lived in each step's own mount namespace, gone with it; --one-file-system guards
      # against anything still mounted below.
      rm -rf --one-file-system "$WORK"
    fi
  fi
  exit "$rc"
}

# --- the host ------------------------------------------------------------------------------------------

qemu_name() { case $1 in armhf) echo arm ;; arm64) echo aarch64 ;; *) die "unknown architecture: $1" ;; esac; }

host_setup() {
  [[ $(id -u) == 0 ]] || die "run as root (mmdebstrap, chroot and binfmt_misc need it)"
  local missing=()
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  command -v arch-test >/dev/null || missing+=(arch-test)
  command -v qemu-arm-static >/dev/null || missing+=(qemu-user-static)
  command -v update-binfmts >/dev/null || missing+=(binfmt-support)
  command -v unshare >/dev/null || missing+=(util-linux)
  if ((${#missing[@]})); then
    say "host: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  local arch q
  for arch in "${ARCHES[@]}"; do
    q=$(qemu_name "$arch")
    [[ $(uname -m) == "$q" || ( $arch == armhf && $(uname -m) == aarch64 ) ]] && continue
    if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-$q ]]; then
      # binfmt-support registers on boot; in a container nothing booted. The F flag (in Debian's entry)
      # makes the kernel open the interpreter now, so it works inside the chroot without a copy there.
      update-binfmts --enable "qemu-$q" 2>/dev/null ||
        sed -n '/^:/p' "/usr/lib/binfmt.d/qemu-$q.conf" >/proc/sys/fs/binfmt_misc/register
    fi
    grep -q '^enabled' "/proc/sys/fs/binfmt_misc/qemu-$q" || die "binfmt_misc: qemu-$q is not enabled"
  done
}

# --- the rootfs ----------------------------------------------------------------------------------------

rootfs_tarball() {  # prints the cached tarball of ARCH, building it when missing
  local arch=$1 key tarball
  key=$(printf '%s\n' "$SUITE" "$BASE_PACKAGES" "$MIRROR" minbase | sha256sum | cut -c1-12)
  tarball=$CACHE/$SUITE-$arch-$key.tar
  if [[ ! -s $tarball || ${ARM_SMOKE_REFRESH:-0} == 1 ]]; then
    mkdir -p "$CACHE"
    "${NICE[@]}" mmdebstrap --variant=minbase --architectures="$arch" --include="$BASE_PACKAGES" "$SUITE" \
      "$CACHE/tmp-$arch.tar" "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
      "deb ${MIRROR%/debian}/debian-security $SUITE-security main" >&2
    mv "$CACHE/tmp-$arch.tar" "$tarball"
  fi
  echo "$tarball"
}

# Trust and routes to the registries as the host has them: a TLS-inspecting proxy's CA (pip and apt must
# trust it in the rootfs too), proxies and a PyPI mirror given by URL. The host's file:// indexes and
# find-links hold this machine's own wheels, not ARM ones: left out.
host_network_into() {
  local dir=$1 v
  cp -L /etc/resolv.conf "$dir/etc/resolv.conf"
  # sudo looks up this machine's name (the chroot shares the host's): a Pi has it in /etc/hosts too.
  printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$(hostname)" \
    >"$dir/etc/hosts"
  # Appended to the bundle here (update-ca-certificates under qemu takes a minute), and kept where the
  # bundle's rebuild looks, should an upgrade of ca-certificates rebuild it.
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
    cat /usr/local/share/ca-certificates/*.crt >>"$dir/etc/ssl/certs/ca-certificates.crt"
  fi
  PASS_ENV=()
  for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL PIP_EXTRA_INDEX_URL \
           PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT; do
    if [[ -n ${!v:-} && ${!v} != *file:* ]]; then PASS_ENV+=("$v=${!v}"); fi
  done
  local pip_index
  pip_index=$(pip3 config get global.index-url 2>/dev/null || true)
  if [[ $pip_index == http* && -z ${PIP_INDEX_URL:-} ]]; then PASS_ENV+=("PIP_INDEX_URL=$pip_index"); fi
}

# Runs a bash script inside the rootfs of ARCH, as root in a fresh mount and pid namespace (the mounts and
# any process left behind end with it), with apt's and pip's caches bound from $CACHE.
in_rootfs() {  # in_rootfs ARCH SCRIPT
  local arch=$1 dir=$WORK/$1 script=$2
  mkdir -p "$CACHE/apt-$arch" "$CACHE/pip-$arch"
  # shellcheck disable=SC2016  # the inner script expands its own arguments
  "${NICE[@]}" unshare --mount --propagation private --pid --fork --mount-proc -- /bin/bash -euo pipefail -c '
    dir=$1 cache=$2 arch=$3; shift 3
    mount --rbind /dev "$dir/dev"
    mount -t proc proc "$dir/proc"
    mount -t tmpfs -o mode=1777 shm "$dir/dev/shm"
    mkdir -p "$dir/root/.cache/pip"
    mount --bind "$cache/apt-$arch" "$dir/var/cache/apt/archives"
    mount --bind "$cache/pip-$arch" "$dir/root/.cache/pip"
    exec chroot "$dir" "$@"
  ' _ "$dir" "$CACHE" "$arch" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off PIP_NO_INPUT=1 \
      "${PASS_ENV[@]}" /bin/bash -euo pipefail -c "$script"
}

step() {  # step ARCH NAME SCRIPT: runs it in the rootfs, records ok/FAIL and its time
  local arch=$1 name=$2 script=$3 start rc
  say "$arch: $name"
  start=$SECONDS
  set +e
  in_rootfs "$arch" "$script"
  rc=$?
  set -e
  if ((rc == 0)); then record "$arch" "$name" ok $((SECONDS - start)); else
    record "$arch" "$name" FAIL $((SECONDS - start)) "exit $rc"; fi
  return "$rc"
}

# --- the README ----------------------------------------------------------------------------------------

readme_blocks() {  # prints the Raspberry Pi blocks of README.md that apply to ARCH, in order
  awk -v arch="$1" -v marker="$MARKER" '
    !inblock && /^```sh$/ { inblock = 1; n = 0; next }
    inblock && /^```$/ {
      if (keep) printf "%s\n", body
      inblock = 0; keep = 0; body = ""; next
    }
    inblock {
      n++
      if (n == 1) { keep = ($0 == marker) }
      if (n == 2 && keep && match($0, /\((armhf|arm64)\)/)) {
        keep = (substr($0, RSTART + 1, RLENGTH - 2) == arch)
      }
      body = body $0 "\n"
    }
  ' "$ROOT/README.md"
}

project_tar() {  # the checkout's files (tracked and new, not ignored), or the unpacked sdist's
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done |
      tar --null -T - -cf -)
  else
    tar -C "$ROOT" --exclude='./.venv*' --exclude=./.tox --exclude='*.egg-info' -cf - .
  fi
}

# --- the checks ----------------------------------------------------------------------------------------

run_arch() {
  local arch=$1 tarball blocks
  say "$arch: rootfs"
  local start=$SECONDS
  if ! tarball=$(rootfs_tarball "$arch"); then
    record "$arch" "rootfs ($SUITE, mmdebstrap)" FAIL $((SECONDS - start)); return 1
  fi
  mkdir -p "$WORK/$arch"
  tar -C "$WORK/$arch" -xf "$tarball"
  host_network_into "$WORK/$arch"
  mkdir -p "$WORK/$arch/root/microblob"
  project_tar | tar -C "$WORK/$arch/root/microblob" -xf -
  record "$arch" "rootfs ($SUITE, mmdebstrap)" ok $((SECONDS - start)) "$(basename "$tarball")"

  blocks=$(readme_blocks "$arch")
  [[ -n $blocks ]] || { record "$arch" "README Raspberry Pi commands" FAIL 0 "no '$MARKER' block"; return 1; }
  printf '%s\n' "$blocks" >"$WORK/$arch/root/readme-pi.sh"
  echo "--- the README's commands for $arch:"; cat "$WORK/$arch/root/readme-pi.sh"
  # uname -m says the emulated machine; the same machine a Pi reports (armv7l or aarch64).
  step "$arch" "README Raspberry Pi commands" \
    'cd /root/microblob && uname -m && bash -euxo pipefail /root/readme-pi.sh' || return 1

  local venv='cd /root/microblob && . .venv/bin/activate && '
  step "$arch" "python examples/quickstart.py" \
    "$venv"'python -c "import sys, lmdb, msgpack; print(sys.version, sys.maxsize > 2**32 and \"64-bit\" or \"32-bit\", \"lmdb\", lmdb.__version__, \"msgpack\", msgpack.version)"
     python examples/quickstart.py | tee /root/quickstart.out; grep -q "^verify: ok" /root/quickstart.out' || true
  step "$arch" "microblob serve + HTTP request" "$venv"'python ci/arm_smoke_serve.py' || true
  step "$arch" "make a store for the word-size check" "$venv"'python ci/arm_smoke_serve.py --make-store /root/word.db' || true
  step "$arch" "pytest (subset)" \
    "$venv"'pip install -q "pytest>=8" "jsonschema>=4.18" && python -m pytest -q -p no:cacheprovider '"$TESTS $PYTEST_ARGS" || true
}

cross_word_size() {  # each architecture's store opened on the other: main's StorageError, not "damage"
  local from=$1 to=$2
  [[ -f $WORK/$from/root/word.db && -d $WORK/$to/root/microblob ]] || return 0
  cp "$WORK/$from/root/word.db" "$WORK/$to/root/word-from-$from.db"
  step "$to" "open a store made on $from" \
    "cd /root/microblob && . .venv/bin/activate && python ci/arm_smoke_serve.py --open-foreign /root/word-from-$from.db" || true
}

main() {
  ARCHES=("$@")
  ((${#ARCHES[@]})) || ARCHES=(armhf arm64)
  local a
  for a in "${ARCHES[@]}"; do qemu_name "$a" >/dev/null; done
  host_setup
  WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/arm-smoke.XXXXXX")
  trap cleanup EXIT
  for a in "${ARCHES[@]}"; do run_arch "$a" || true; done
  if ((${#ARCHES[@]} == 2)); then
    cross_word_size "${ARCHES[0]}" "${ARCHES[1]}"
    cross_word_size "${ARCHES[1]}" "${ARCHES[0]}"
  fi
  say "summary (ci/arm-smoke.sh on $(uname -m), $SUITE, qemu-user $(qemu-arm-static --version | head -n1 | awk '{print $3}'))"
  printf '%s\n' "${SUMMARY[@]}"
  if ((FAILED)); then echo "arm-smoke: FAILED"; return 1; fi
  echo "arm-smoke: all steps passed"
}

main "$@"; exit  # read whole before it runs: an edit of this file during a run cannot be executed
