#!/usr/bin/env bash
# `make run`: the local cluster and Dex (started or reused), the operator's CRD, policy and RBAC,
# a sample request for alice, and the operator in the foreground.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
listen=${LISTEN:-127.0.0.1:8000}

make --no-print-directory cluster-up
# shellcheck disable=SC1091
source target/cluster/env
cargo build --bin kubeconfig-operator
operator_kubeconfig=$(scripts/install-dev.sh target/cluster/env)

demo=kubeconfig-demo
kubectl create namespace "$demo" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl create rolebinding alice-view -n "$demo" --clusterrole=view --user="$ALICE_USERNAME" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
token_file=$(mktemp)
trap 'rm -f "$token_file"' EXIT
tests/cluster/id-token alice > "$token_file"
kubectl create secret generic alice-token -n "$demo" --from-file=token="$token_file" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
rm -f "$token_file"
kubectl apply -n "$demo" -k config/samples >/dev/null

cat <<MSG

kubeconfig-operator on http://$listen (Ctrl-C stops it; 'make cluster-down' stops the cluster).
In another terminal:

  source target/cluster/env
  curl -s -H "Authorization: Bearer \$(tests/cluster/id-token alice)" http://$listen/kube-config > alice.kubeconfig
  KUBECONFIG=\$PWD/alice.kubeconfig kubectl cluster-info
  KUBECONFIG=\$PWD/alice.kubeconfig kubectl auth whoami

  kubectl wait --for=condition=Ready kcr/alice -n $demo
  kubectl get kcr -n $demo

MSG
exec env KUBECONFIG="$operator_kubeconfig" target/debug/kubeconfig-operator run \
  --cluster-name local \
  --server "$KUBE_SERVER" --ca-file "$KUBE_CA_FILE" \
  --oidc-issuer-url "$OIDC_ISSUER_URL" --oidc-client-id "$OIDC_CLIENT_ID" \
  --oidc-ca-file "$OIDC_CA_FILE" \
  --listen "$listen"
