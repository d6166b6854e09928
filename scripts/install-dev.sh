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
# Kubernetes 1.35 serves MutatingAdmissionPolicy only as a beta, off by default (README "Known
# limits"): there the validating policy installs alone and a ServiceAccount request's creator
# fills in spec.creator by hand.
if kubectl get --raw /apis/admissionregistration.k8s.io/v1 | grep -q '"mutatingadmissionpolicies"'; then
  kubectl apply -k "$root/config/policy" >&2
else
  echo "install-dev: no MutatingAdmissionPolicy in admissionregistration.k8s.io/v1 here; installing the validating policy only" >&2
  kubectl apply -f "$root/config/policy/token_access_policy.yaml" >&2
fi
kubectl apply -f "$root/config/default/namespace.yaml" >&2
kubectl apply -n kubeconfig-operator -k "$root/config/rbac" >&2
kubectl wait --for=condition=Established crd/kubeconfigrequests.kubeconfig.dev \
  crd/kubeconfigrevocations.kubeconfig.dev --timeout=60s >&2
# Established is not yet usable: the admission policies learn a new kind from discovery moments
# later, and until then a create answers 503 "Resource kind ... not found". A server-side dry run
# goes through admission; wait until it answers anything else.
request='{"apiVersion":"kubeconfig.dev/v1alpha1","kind":"KubeconfigRequest","metadata":{"name":"install-check","namespace":"kubeconfig-operator"},"spec":{"tokenSecretRef":{"name":"install-check"}}}'
for _ in $(seq 120); do
  answer=$(kubectl create --dry-run=server -f - <<<"$request" 2>&1) || true
  [[ $answer == *"not found. There can be a delay"* ]] || break
  sleep 0.5
done

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
