#!/usr/bin/env bash
# Build, offline, the images the docker backend's tests use, unless the daemon has them:
#   gsr-test/debian:bookworm  debootstrap minbase + git, ca-certificates, python3-minimal
#                             (git for the job's sources; python3's socket module makes a
#                             small HTTP service for the services: tests).
# No image registry is reachable on our machines, so nothing is pulled: the root file
# system comes from the Debian mirror apt already uses, through debootstrap. Idempotent:
# an image that is already there is left alone. Prints what it did.
set -euo pipefail

IMAGE=${GSR_TEST_DEBIAN_IMAGE:-gsr-test/debian:bookworm}

docker info >/dev/null 2>&1 || { echo "test-images: docker does not answer (is dockerd running?)" >&2; exit 1; }

debian_mirror() {   # the URI apt uses for bookworm
  local m
  m=$(apt-get indextargets --format '$(REPO_URI)' 'Release: bookworm' 'Target-Of: deb' 2>/dev/null | head -n1)
  [ -n "$m" ] || m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
                         /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
    /^[[:space:]]*#/ { next }
    $1 == "deb" { for (i = 2; i < NF; i++) if ($i ~ /:\/\// && $(i+1) == "bookworm") { print $i; exit } }
    $1 == "URIs:"   { u = $2 }
    $1 == "Suites:" { for (i = 2; i <= NF; i++) if ($i == "bookworm") s = 1 }
    /^[[:space:]]*$/ { if (s && u) { print u; exit } u = ""; s = 0 }
    END { if (s && u) print u }' | head -n1)
  [ -n "$m" ] || { echo "no bookworm entry in apt sources" >&2; return 1; }
  echo "${m%/}"
}

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "test-images: $IMAGE already present"
  exit 0
fi

command -v debootstrap >/dev/null || { echo "test-images: debootstrap is not installed (apt-get install -y debootstrap)" >&2; exit 1; }
ROOTFS=$(mktemp -d /tmp/gsr-test-rootfs.XXXXXX)
trap 'rm -rf --one-file-system "$ROOTFS"' EXIT
MIRROR=$(debian_mirror)
echo "test-images: debootstrap minbase bookworm from $MIRROR into $ROOTFS"
debootstrap --variant=minbase --include=git,ca-certificates,python3-minimal bookworm "$ROOTFS" "$MIRROR" \
  >"$ROOTFS.log" 2>&1 || { tail -n 30 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb
tar -C "$ROOTFS" --numeric-owner -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["bash"]' \
  --message "debootstrap minbase bookworm + git, python3 (gsr-backend-docker/scripts/test-images.sh)" \
  - "$IMAGE" >/dev/null
echo "test-images: imported $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE") bytes)"
