#!/usr/bin/env bash
# `make run`: the local cluster and Dex (started or reused), the operator's CRD, policy and RBAC,
# a sample request for alice, and the operator in the foreground with its kubeconfig page.
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

# The kubeconfig page logs in as the operator's Dex client; Dex knows the redirect URLs of
# 127.0.0.1:8000 and localhost:8000 (tests/cluster/up.sh), so another LISTEN cannot log in.
page_dir=target/run-local
mkdir -p "$page_dir"
(umask 077 && printf '%s' "$OIDC_CLIENT_SECRET" >"$page_dir/client-secret")
cat >"$page_dir/operator.yaml" <<EOF
console:
  clientSecretFile: $root/$page_dir/client-secret
  redirectUrl: http://$listen/callback
EOF
case "$listen" in
127.0.0.1:8000 | localhost:8000) ;;
*) echo "note: Dex accepts the page's redirect only on 127.0.0.1:8000; log in there or add http://$listen/callback to tests/cluster/up.sh" >&2 ;;
esac

cat <<MSG

kubeconfig-operator on http://$listen (Ctrl-C stops it; 'make cluster-down' stops the cluster).

Download page: http://$listen/  (log in as $ALICE_USERNAME, password: grep ALICE_PASSWORD target/cluster/env)

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
  --config "$page_dir/operator.yaml" \
  --exec-client-id "$OIDC_PUBLIC_CLIENT_ID" \
  --exec-extra-scopes "email,groups,offline_access,audience:server:client_id:$OIDC_CLIENT_ID" \
  --listen "$listen"
