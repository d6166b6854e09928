// Command consumers reads the Secrets that kubeconfig-operator writes with the code of the
// programs that consume them, not with a reading of their documentation: Cluster API's remote
// cluster loader, Flux's kubeconfig-from-Secret impersonator and Argo CD's cluster-Secret
// conversion. Each then lists pods in the namespaces it is given with the resulting client and
// prints one line per namespace, "<namespace> allowed" or "<namespace> forbidden", so that
// tests/formats.rs can hold the result to the identity's RBAC.
//
// The Secret itself is read with the caller's own kubeconfig ($KUBECONFIG): the management
// identity in Cluster API's and Flux's terms, Argo CD's application controller in Argo CD's.
package main

import (
	"context"
	"fmt"
	"os"

	argodb "github.com/argoproj/argo-cd/v3/util/db"
	fluxmeta "github.com/fluxcd/pkg/apis/meta"
	fluxclient "github.com/fluxcd/pkg/runtime/client"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	capiremote "sigs.k8s.io/cluster-api/controllers/remote"
	ctrlclient "sigs.k8s.io/controller-runtime/pkg/client"
)

const usage = `usage:
  consumers cluster-api <namespace> <cluster>  <list-namespace>...
  consumers flux        <namespace> <secret>   <list-namespace>...
  consumers argocd      <namespace> <secret>   <list-namespace>...`

func main() {
	if err := run(context.Background(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) < 3 {
		return fmt.Errorf("%s", usage)
	}
	management, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		clientcmd.NewDefaultClientConfigLoadingRules(), &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return fmt.Errorf("the caller's kubeconfig: %w", err)
	}
	switch args[0] {
	case "cluster-api":
		if len(args) < 4 {
			return fmt.Errorf("%s", usage)
		}
		reader, err := ctrlclient.New(management, ctrlclient.Options{})
		if err != nil {
			return err
		}
		config, err := capiremote.RESTConfig(ctx, "kubeconfig-operator-consumers", reader,
			ctrlclient.ObjectKey{Namespace: args[1], Name: args[2]})
		if err != nil {
			return fmt.Errorf("Cluster API's loader: %w", err)
		}
		return listWithClientGo(ctx, config, args[3:])
	case "flux":
		if len(args) < 4 {
			return fmt.Errorf("%s", usage)
		}
		scheme := runtime.NewScheme()
		if err := clientgoscheme.AddToScheme(scheme); err != nil {
			return err
		}
		reader, err := ctrlclient.New(management, ctrlclient.Options{Scheme: scheme})
		if err != nil {
			return err
		}
		// As kustomize-controller builds it for spec.kubeConfig.secretRef (no key: "value",
		// then "value.yaml").
		impersonator := fluxclient.NewImpersonator(reader,
			fluxclient.WithScheme(scheme),
			fluxclient.WithKubeConfig(
				&fluxmeta.KubeConfigReference{SecretRef: &fluxmeta.SecretKeyReference{Name: args[2]}},
				fluxclient.KubeConfigOptions{}, args[1], nil))
		remote, _, err := impersonator.GetClient(ctx)
		if err != nil {
			return fmt.Errorf("Flux's loader: %w", err)
		}
		for _, namespace := range args[3:] {
			var pods corev1.PodList
			if err := report(namespace, remote.List(ctx, &pods, ctrlclient.InNamespace(namespace))); err != nil {
				return err
			}
		}
		return nil
	case "argocd":
		if len(args) < 4 {
			return fmt.Errorf("%s", usage)
		}
		clientset, err := kubernetes.NewForConfig(management)
		if err != nil {
			return err
		}
		secret, err := clientset.CoreV1().Secrets(args[1]).Get(ctx, args[2], metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("reading the cluster Secret: %w", err)
		}
		cluster, err := argodb.SecretToCluster(secret)
		if err != nil {
			return fmt.Errorf("Argo CD's SecretToCluster: %w", err)
		}
		config, err := cluster.RESTConfig()
		if err != nil {
			return fmt.Errorf("Argo CD's Cluster.RESTConfig: %w", err)
		}
		fmt.Printf("argocd cluster %q at %s\n", cluster.Name, cluster.Server)
		return listWithClientGo(ctx, config, args[3:])
	default:
		return fmt.Errorf("%s", usage)
	}
}

func listWithClientGo(ctx context.Context, config *rest.Config, namespaces []string) error {
	clientset, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	for _, namespace := range namespaces {
		_, err := clientset.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
		if err := report(namespace, err); err != nil {
			return err
		}
	}
	return nil
}

// report prints the verdict for one namespace; anything but success or a 403 is an error of the
// loaded configuration (TLS, server, token) and ends the program.
func report(namespace string, err error) error {
	switch {
	case err == nil:
		fmt.Printf("%s allowed\n", namespace)
	case apierrors.IsForbidden(err):
		fmt.Printf("%s forbidden\n", namespace)
	default:
		return fmt.Errorf("listing pods in %s: %w", namespace, err)
	}
	return nil
}
