#!/bin/bash
# The test command (README): sets up a fresh Debian 12 machine and runs every
# test. Run as root from the repository:  sudo bash tests/run.sh
#  - installs the Debian packages the tests use (apt-get)
#  - creates the unprivileged test user (husktest)
#  - installs husk with packaging/install.sh into a temporary prefix, the
#    starter setuid root
#  - builds test images with buildah and serves them from two local
#    registries (tests/images/setup.sh)
#  - runs format and lint checks, unit tests and the integration tests,
#    whose containers all run as the test user
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "tests/run.sh: run as root (it installs packages and a setuid starter)" >&2; exit 1; }
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
user=${HUSK_TEST_USER:-husktest}

need=()
for pkg in squashfs-tools util-linux procps bsdutils gcc libc6-dev attr \
    buildah skopeo umoci busybox-static docker-registry apache2-utils zstd; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi

if ! id "$user" >/dev/null 2>&1; then
    echo "== creating test user $user"
    useradd --create-home --shell /bin/bash "$user"
fi

# The prefix and work directories must not be under /tmp: the starter refuses
# a config whose parent directories are writable by others.
prefix=$(mktemp -d /opt/husk-test.XXXXXX)
work=$(mktemp -d /opt/husk-work.XXXXXX)
chmod 755 "$prefix" "$work"
cleanup() {
    # The registries started by tests/images/setup.sh.
    if [ -f "$work/oci/registry.pids" ]; then
        xargs -r kill <"$work/oci/registry.pids" 2>/dev/null || true
    fi
    rm -rf "$prefix" "$work"
}
trap cleanup EXIT

echo "== installing husk into $prefix"
packaging/install.sh "$prefix"

echo "== test images"
start=$SECONDS
tests/images/setup.sh "$work/oci"
set -a
# shellcheck source=/dev/null
. "$work/oci/env"
set +a
echo "== test images ready in $((SECONDS - start))s"

echo "== format and lint"
cargo fmt --all --check
cargo clippy --locked --all-targets -q -- -D warnings

export HUSK_TEST_PREFIX=$prefix HUSK_TEST_WORK=$work HUSK_TEST_USER=$user HUSK_TEST_REQUIRED=1
if [ -d "$repo/../shared/fixtures" ]; then
    export HUSK_FIXTURES=$repo/../shared/fixtures
fi
echo "== tests"
cargo test --locked --workspace --no-fail-fast
