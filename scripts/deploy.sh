#!/usr/bin/env bash
# `make deploy`: installs the operator on the local cluster's node the way README "Deployment"
# tells users to: the image (target/image/kubeconfig-operator.tar, from `make image`) loaded into
# the node's containerd, then `kubectl apply -k` of an overlay of config/default that sets only
# what a user edits: the image, the issuer (URL and CA), the server. The overlay is written to
# $CLUSTER_DIR/deploy/ (the cluster's ports are random). Waits until the rollout is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER_DIR="${CLUSTER_DIR:-target/cluster}"
case "$CLUSTER_DIR" in /*) ;; *) CLUSTER_DIR="$PWD/$CLUSTER_DIR" ;; esac
CLUSTER_DIR="${CLUSTER_DIR%/}"
archive="${IMAGE_ARCHIVE:-target/image/kubeconfig-operator.tar}"
image="${IMAGE:-kubeconfig-operator:dev}"
log() { echo "[deploy $(date +%H:%M:%S)] $*" >&2; }

[[ -f "$archive" ]] || { echo "[deploy] no $archive: run make image" >&2; exit 1; }
[[ -f "$CLUSTER_DIR/env" ]] || { echo "[deploy] no cluster in $CLUSTER_DIR: run make node-up" >&2; exit 1; }
# shellcheck disable=SC1091
source "$CLUSTER_DIR/env"
[[ -n "${CONTAINERD_ADDRESS:-}" ]] || { echo "[deploy] the cluster in $CLUSTER_DIR has no node: run make node-up" >&2; exit 1; }

# 1. The image, into the node's containerd (there is no registry to push to).
t0=$SECONDS
log "importing $archive into the node's containerd"
ctr --address "$CONTAINERD_ADDRESS" --namespace k8s.io images import "$archive" >/dev/null

# 2. The overlay: config/default, with the image, the issuer, its CA and the server replaced.
overlay="$CLUSTER_DIR/deploy"
mkdir -p "$overlay"
cp "$OIDC_CA_FILE" "$overlay/issuer-ca.crt"
# The operator.yaml users edit, with the four values set (every other line as shipped).
sed -e "s|^server: .*|server: $KUBE_SERVER|" \
	-e "s|^  issuerUrl: .*|  issuerUrl: $OIDC_ISSUER_URL|" \
	-e "s|^  clientId: .*|  clientId: $OIDC_CLIENT_ID|" \
	-e "s|^  # caFile: /etc/kubeconfig-operator/issuer-ca.crt|  caFile: /etc/kubeconfig-operator/issuer-ca.crt|" \
	config/manager/operator.yaml >"$overlay/operator.yaml"
for want in "server: $KUBE_SERVER" "issuerUrl: $OIDC_ISSUER_URL" "caFile: /etc/kubeconfig-operator/issuer-ca.crt"; do
	grep -qF "$want" "$overlay/operator.yaml" || { echo "[deploy] config/manager/operator.yaml changed: could not set '$want'" >&2; exit 1; }
done
config_rel="$(realpath --relative-to="$overlay" config/default)"
cat >"$overlay/kustomization.yaml" <<EOF
# Written by scripts/deploy.sh: config/default as a user installs it, with what a user edits.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $config_rel
images:
  - name: kubeconfig-operator
    newName: ${image%:*}
    newTag: ${image##*:}
configMapGenerator:
  - name: kubeconfig-operator
    namespace: kubeconfig-operator
    behavior: replace
    files:
      - operator.yaml
      - issuer-ca.crt
EOF

# 3. Apply, and wait for the rollout.
log "kubectl apply -k $overlay"
kubectl apply -k "$overlay" >/dev/null
kubectl -n kubeconfig-operator rollout status deployment/kubeconfig-operator --timeout=180s >&2
log "deployed in $((SECONDS - t0))s"
