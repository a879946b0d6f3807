#!/usr/bin/env bash
# Builds, once per machine, a local stand-in for the base image docker/Dockerfile
# starts FROM (python:3.11-slim), so that `podman build -f docker/Dockerfile .`
# works unchanged on machines with no image registry. tests/test_deploy_image.py
# runs it; docs/operations.md ("The image in CI") says what differs from the
# official image.
#
#   1. debootstrap a minimal Debian bookworm (its python3 is 3.11, with pip) from the
#      mirror in the host's apt sources; `podman import` it as $ROOTFS_TAG;
#   2. `podman build` Containerfile on it, in a temporary context holding the host's
#      extra CA certificates, and tag the result with the Dockerfile's FROM name.
#
# Each step is skipped when an image with its cache key (a label: the hash of this
# recipe, and for step 2 of the host's certificates) already exists, so later runs
# cost a second. FORCE=1 rebuilds both. Needs root, podman, runc and debootstrap;
# CONTAINERS_CONF should point at containers.conf beside this file.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

# The name docker/Dockerfile's FROM uses, fully qualified as podman stores it.
from=$(awk 'toupper($1) == "FROM" { print $2; exit }' "$repo/docker/Dockerfile")
case "$from" in
  */*/*) base_tag=$from ;;
  */*) base_tag=docker.io/$from ;;
  *) base_tag=docker.io/library/$from ;;
esac
ROOTFS_TAG=${ROOTFS_TAG:-localhost/regularization-test-rootfs:bookworm}
SUITE=bookworm
PACKAGES=python3,python3-pip,ca-certificates

# The first Debian mirror of the host's apt sources (deb822 or one-line format).
mirror=${DEBIAN_MIRROR:-$(awk '/^URIs:/ && $2 ~ /debian\/?$/ { print $2; exit }
  /^deb / && $2 ~ /debian\/?$/ && $3 == "bookworm" { print $2; exit }' \
  /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}

label_of() {  # image, label -> value or nothing
  podman image inspect --format "{{ index .Labels \"$2\" }}" "$1" 2>/dev/null || true
}

# A real base image (pulled where a registry is reachable, so without our label) is
# better than any stand-in: never overwrite it.
if podman image exists "$base_tag" && [ -z "$(label_of "$base_tag" regularization.test-base)" ]; then
  echo "test-base: $base_tag is present and is not a stand-in: using it"
  exit 0
fi

rootfs_key=$(printf '%s\n' "$SUITE" "$PACKAGES" "$mirror" | sha256sum | cut -c1-16)
if [ "${FORCE:-0}" != 1 ] && [ "$(label_of "$ROOTFS_TAG" regularization.test-base.key)" = "$rootfs_key" ]; then
  echo "test-base: $ROOTFS_TAG is cached"
else
  echo "test-base: debootstrap $SUITE from $mirror"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar --numeric-owner -C "$work/rootfs" -c . \
    | podman import --change "LABEL regularization.test-base.key=$rootfs_key" --change 'CMD ["bash"]' - "$ROOTFS_TAG" >/dev/null
  rm -rf "$work"
  trap - EXIT
fi

# The host's CA certificates beyond Debian's own (e.g. a TLS-inspecting proxy's).
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir "$context/certs"
if [ -d /usr/local/share/ca-certificates ]; then
  find /usr/local/share/ca-certificates -name '*.crt' -exec cp {} "$context/certs/" \;
fi
cp "$here/Containerfile" "$context/"
base_key=$( (cat "$here/Containerfile"; echo "$rootfs_key"; cat "$context/certs/"* 2>/dev/null) | sha256sum | cut -c1-16)
if [ "${FORCE:-0}" != 1 ] && [ "$(label_of "$base_tag" regularization.test-base.key)" = "$base_key" ]; then
  echo "test-base: $base_tag (stand-in) is cached"
  exit 0
fi
echo "test-base: building the stand-in $base_tag"
podman build --network host --pull=never --build-arg ROOTFS="$ROOTFS_TAG" \
  --label regularization.test-base.key="$base_key" \
  --label regularization.test-base="stand-in for $from, built by docker/test-base/build.sh" \
  -t "$base_tag" "$context"
