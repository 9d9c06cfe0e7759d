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
    buildah skopeo umoci busybox-static docker-registry apache2-utils zstd squashfuse git; do
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
uprefix=$(mktemp -d /opt/husk-test-u.XXXXXX)
work=$(mktemp -d /opt/husk-work.XXXXXX)
chmod 755 "$prefix" "$uprefix" "$work"
cleanup() {
    umount "$work/toolchain" 2>/dev/null || true
    # The registries started by tests/images/setup.sh.
    if [ -f "$work/oci/registry.pids" ]; then
        xargs -r kill <"$work/oci/registry.pids" 2>/dev/null || true
    fi
    rm -rf "$prefix" "$uprefix" "$work"
}
trap cleanup EXIT

echo "== installing husk into $prefix"
packaging/install.sh "$prefix"
echo "== installing husk without setuid into $uprefix"
packaging/install.sh --unprivileged "$uprefix"
# As on a normal Debian install (these machines make it 0600): FUSE for
# squashfuse in user-namespace mode.
chmod 666 /dev/fuse

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

export HUSK_TEST_PREFIX=$prefix HUSK_TEST_UNPRIV_PREFIX=$uprefix HUSK_TEST_WORK=$work \
    HUSK_TEST_USER=$user HUSK_TEST_REQUIRED=1
if [ -d "$repo/../shared/fixtures" ]; then
    export HUSK_FIXTURES=$repo/../shared/fixtures
fi
echo "== tests (setuid starter)"
status=0
cargo test --locked --workspace --no-fail-fast || status=1
# The same container tests again, through the starter installed without the
# setuid bit: every container in a user namespace (squashfuse for images).
echo "== tests (user-namespace mode: no setuid)"
HUSK_TEST_MODE=userns HUSK_TEST_PREFIX=$uprefix cargo test --locked -p husk-integration \
    --no-fail-fast --test spine --test images --test isolation --test layers_edge --test leaks \
    || status=1
exit $status
