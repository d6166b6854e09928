#!/usr/bin/env bash
# `make deploy`: installs the operator on the local cluster's node the way README "Deployment"
# tells users to: the image (target/image/kubeconfig-operator.tar, from `make image`) loaded into
# the node's containerd, then `kubectl apply -k` of an overlay of config/default and
# config/proxy that sets only what a user edits: the image, the issuer (URL and CA), the server,
# and the proxy's address and certificate. The overlay is written to $CLUSTER_DIR/deploy/ (the
# cluster's ports are random). Waits until both rollouts are complete.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER_DIR="${CLUSTER_DIR:-target/cluster}"
case "$CLUSTER_DIR" in /*) ;; *) CLUSTER_DIR="$PWD/$CLUSTER_DIR" ;; esac
CLUSTER_DIR="${CLUSTER_DIR%/}"
# The proxy's address: its Service's cluster IP, fixed so that its certificate can name it (the
# cluster has no DNS). In the lower part of the Service range, which automatic allocation leaves
# to addresses chosen like this one.
PROXY_IP="${PROXY_IP:-10.0.0.10}"
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

# 2. The overlay: config/default and config/proxy, with the image, the issuer, its CA, the server
# and the proxy's address and CA replaced, and the proxy's TLS Secret.
overlay="$CLUSTER_DIR/deploy"
mkdir -p "$overlay"
cp "$OIDC_CA_FILE" "$overlay/issuer-ca.crt"
# The operator.yaml users edit, with the six values set (every other line as shipped).
sed -e "s|^server: .*|server: $KUBE_SERVER|" \
	-e "s|^  issuerUrl: .*|  issuerUrl: $OIDC_ISSUER_URL|" \
	-e "s|^  clientId: .*|  clientId: $OIDC_CLIENT_ID|" \
	-e "s|^  # caFile: /etc/kubeconfig-operator/issuer-ca.crt|  caFile: /etc/kubeconfig-operator/issuer-ca.crt|" \
	-e "s|^# proxy:|proxy:|" \
	-e "s|^#   url: https://kube.example.com|  url: https://$PROXY_IP|" \
	-e "s|^#   caFile: /var/run/secrets/proxy/ca.crt|  caFile: /var/run/secrets/proxy/ca.crt|" \
	config/manager/operator.yaml >"$overlay/operator.yaml"
for want in "server: $KUBE_SERVER" "issuerUrl: $OIDC_ISSUER_URL" "caFile: /etc/kubeconfig-operator/issuer-ca.crt" "url: https://$PROXY_IP" "  caFile: /var/run/secrets/proxy/ca.crt"; do
	grep -qF "$want" "$overlay/operator.yaml" || { echo "[deploy] config/manager/operator.yaml changed: could not set '$want'" >&2; exit 1; }
done
# The proxy's certificate for its address, from a CA of its own; kept across deploys, so that
# kubeconfigs issued before stay valid.
if [[ ! -f "$overlay/tls.crt" ]]; then
	log "making the proxy's CA and certificate for $PROXY_IP"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
		-subj "/CN=kubeconfig-operator-proxy CA" -keyout "$overlay/ca.key" -out "$overlay/ca.crt" 2>/dev/null
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
		-subj "/CN=kubeconfig-operator-proxy" -addext "subjectAltName=IP:$PROXY_IP" \
		-addext "extendedKeyUsage=serverAuth" -addext "basicConstraints=critical,CA:FALSE" \
		-CA "$overlay/ca.crt" -CAkey "$overlay/ca.key" -keyout "$overlay/tls.key" -out "$overlay/tls.crt" 2>/dev/null
fi
rel() { realpath --relative-to="$overlay" "$1"; }
cat >"$overlay/kustomization.yaml" <<EOF
# Written by scripts/deploy.sh: config/default and config/proxy as a user installs them, with
# what a user edits.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(rel config/default)
  - $(rel config/proxy)
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
secretGenerator:
  - name: kubeconfig-operator-proxy-tls
    namespace: kubeconfig-operator
    type: kubernetes.io/tls
    files:
      - tls.crt
      - tls.key
      - ca.crt
patches:
  # The address the certificate and proxy.url name.
  - target: {kind: Service, name: kubeconfig-operator-proxy}
    patch: |-
      - {op: add, path: /spec/clusterIP, value: $PROXY_IP}
EOF

# 3. Apply, and wait for the rollout.
log "kubectl apply -k $overlay"
kubectl apply -k "$overlay" >/dev/null
for deployment in kubeconfig-operator kubeconfig-operator-proxy; do
	kubectl -n kubeconfig-operator rollout status "deployment/$deployment" --timeout=180s >&2
done
log "deployed in $((SECONDS - t0))s"
