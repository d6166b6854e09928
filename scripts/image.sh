#!/usr/bin/env bash
# `make image`: the operator's image from the project's Dockerfile, built with buildah and without
# a registry: scripts/base-images.sh puts local stand-ins for the Dockerfile's base images into
# buildah's storage under the names its FROM lines use, then `buildah bud --pull=never` builds the
# Dockerfile as it is. The result is the image $IMAGE (default kubeconfig-operator:dev) in
# buildah's storage and, for `ctr -n k8s.io images import`, the docker archive
# target/image/kubeconfig-operator.tar.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:$HOME/.cargo/bin"
image=${IMAGE:-kubeconfig-operator:dev}
archive=target/image/kubeconfig-operator.tar

bash scripts/base-images.sh

# The build downloads nothing: this machine's cargo fetches the locked crates into its own
# registry (under its lock, so a concurrent `cargo test` is safe), which the build reads
# read-only. A user's `docker build` downloads them itself.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
cargo fetch --locked --quiet
echo "[image] buildah bud -t $image" >&2
buildah bud --pull=never --layers --quiet --runtime runc \
	--volume "$cargo_home/registry:/usr/local/cargo/registry:ro" \
	--tag "$image" .

mkdir -p "${archive%/*}"
rm -f "$archive"
buildah push --quiet "$image" "docker-archive:$archive:$image"
echo "[image] $image, $(du -h "$archive" | cut -f1) in $archive" >&2
