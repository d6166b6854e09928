#!/usr/bin/env bash
# Installs the operator's CRD, admission policy and RBAC into the local cluster and writes a
# kubeconfig for the operator's ServiceAccount (not the admin credential), so that what runs
# locally has exactly the permissions config/rbac grants. Used by `make run` and the tests.
# Usage: scripts/install-dev.sh [CLUSTER_ENV]  -> prints the operator kubeconfig's path
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
env_file=${1:-${CLUSTER_ENV:-$root/target/cluster/env}}
# shellcheck disable=SC1090
source "$env_file"
state=$(dirname "$env_file")

kubectl apply -k "$root/config/crd" >&2
kubectl apply -k "$root/config/policy" >&2
kubectl apply -f "$root/config/default/namespace.yaml" >&2
kubectl apply -n kubeconfig-operator -k "$root/config/rbac" >&2
kubectl wait --for=condition=Established crd/kubeconfigrequests.kubeconfig.dev \
  crd/kubeconfigrevocations.kubeconfig.dev --timeout=60s >&2

out="$state/operator.kubeconfig"
token=$(kubectl create token kubeconfig-operator -n kubeconfig-operator --duration=24h)
kubectl config --kubeconfig="$out.tmp" set-cluster local --server="$KUBE_SERVER" \
  --certificate-authority="$KUBE_CA_FILE" --embed-certs=true >/dev/null
kubectl config --kubeconfig="$out.tmp" set-credentials operator --token="$token" >/dev/null
kubectl config --kubeconfig="$out.tmp" set-context local --cluster=local --user=operator >/dev/null
kubectl config --kubeconfig="$out.tmp" use-context local >/dev/null
chmod 600 "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
