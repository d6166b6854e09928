// kctools: the one static binary of the tests' tool image (kcluster.local/tools, built FROM
// scratch by node-up.sh), for pods on the local cluster's node:
//
//	kctools kubectl ARGS...            kubectl of the cluster's own Kubernetes version (also when
//	                                   run as kubectl: target/cluster/bin/kubectl links to it)
//	kctools get URL [--cacert FILE] [--bearer-file FILE] [--out FILE]
//	                                   one HTTPS GET; the body to stdout (or FILE), exit 1 unless 200
//	kctools get-loop URL [--cacert FILE] --bearer-file FILE --seconds N
//	                                   GET every 200 ms for N seconds, each on a new connection;
//	                                   prints one line per failure and "ok=N failed=M" at the end
//	kctools serve PORT TEXT            an HTTP server answering TEXT (for port-forward)
//	kctools tick                       prints "tick N" every 200 ms (for logs -f)
//	kctools echo                       copies stdin to stdout, line by line (for attach)
//	kctools sleep                      waits for SIGTERM
//	kctools follow NAMESPACE           a long-running client-go program on $KUBECONFIG: lists pods
//	                                   every second until stopped, printing "ok FINGERPRINT" or
//	                                   "failed FINGERPRINT ERROR", FINGERPRINT being the first 12 hex
//	                                   digits of the SHA-256 of the bearer token client-go sent, so
//	                                   a test sees which token a tokenFile kubeconfig gave it
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"k8s.io/component-base/cli"
	kubectl "k8s.io/kubectl/pkg/cmd"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	// As target/cluster/bin/kubectl (a symlink): kubectl of the cluster's own version.
	if filepath.Base(os.Args[0]) == "kubectl" {
		os.Args = append([]string{"kubectl", "kubectl"}, os.Args[1:]...)
	}
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kctools kubectl|get|get-loop|serve|tick|echo|sleep ...")
		os.Exit(2)
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "kubectl":
		// kubectl finds plugins (kubectl-oidc_login) from os.Args, which must read as kubectl's own.
		os.Args = append([]string{"kubectl"}, args...)
		cmd := kubectl.NewDefaultKubectlCommand()
		cmd.SetArgs(args)
		if err := cli.RunNoErrOutput(cmd); err != nil {
			cmdutil.CheckErr(err) // prints the error as kubectl does and exits non-zero
		}
		os.Exit(0)
	case "get", "get-loop":
		os.Exit(get(os.Args[1] == "get-loop", args))
	case "serve":
		if len(args) != 2 {
			os.Exit(2)
		}
		http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, args[1]) })
		fmt.Println("serving on", args[0])
		fmt.Fprintln(os.Stderr, http.ListenAndServe(":"+args[0], nil))
		os.Exit(1)
	case "tick":
		for i := 0; ; i++ {
			fmt.Println("tick", i)
			time.Sleep(200 * time.Millisecond)
		}
	case "echo":
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			fmt.Println("echo:", sc.Text())
		}
		// stdin closed: keep the container running for the next attach.
		waitSignal()
	case "sleep":
		waitSignal()
	case "follow":
		os.Exit(follow(args))
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func follow(args []string) int {
	if len(args) != 1 {
		return 2
	}
	config, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		clientcmd.NewDefaultClientConfigLoadingRules(), &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// client-go's own token wrappers sit outside this one, so it sees the header they set.
	var sent atomic.Value
	sent.Store("none")
	config.Wrap(func(next http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			sum := sha256.Sum256([]byte(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")))
			sent.Store(hex.EncodeToString(sum[:6]))
			return next.RoundTrip(r)
		})
	})
	clientset, err := kubernetes.NewForConfig(config)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for {
		_, err := clientset.CoreV1().Pods(args[0]).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			fmt.Println("failed", sent.Load(), err)
		} else {
			fmt.Println("ok", sent.Load())
		}
		time.Sleep(time.Second)
	}
}

func waitSignal() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	os.Exit(0)
}

func get(loop bool, args []string) int {
	if len(args) < 1 {
		return 2
	}
	url := args[0]
	var cacert, bearerFile, out string
	seconds := 0
	for i := 1; i+1 < len(args); i += 2 {
		switch args[i] {
		case "--cacert":
			cacert = args[i+1]
		case "--bearer-file":
			bearerFile = args[i+1]
		case "--out":
			out = args[i+1]
		case "--seconds":
			seconds, _ = strconv.Atoi(args[i+1])
		default:
			fmt.Fprintln(os.Stderr, "get: unknown flag", args[i])
			return 2
		}
	}
	tr := &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{}}
	if cacert != "" {
		pem, err := os.ReadFile(cacert)
		if err != nil {
			fmt.Fprintln(os.Stderr, "get:", err)
			return 1
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		tr.TLSClientConfig.RootCAs = pool
	}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	once := func() ([]byte, error) {
		req, err := http.NewRequest("GET", url, nil)
		if err != nil {
			return nil, err
		}
		if bearerFile != "" {
			tok, err := os.ReadFile(bearerFile)
			if err != nil {
				return nil, err
			}
			req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != 200 {
			// The body of a refusal names the reason, never the token.
			return nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
		}
		return body, nil
	}
	if !loop {
		body, err := once()
		if err != nil {
			fmt.Fprintln(os.Stderr, "get:", err)
			return 1
		}
		if out != "" {
			if err := os.WriteFile(out, body, 0o600); err != nil {
				fmt.Fprintln(os.Stderr, "get:", err)
				return 1
			}
			return 0
		}
		os.Stdout.Write(body)
		return 0
	}
	end := time.Now().Add(time.Duration(seconds) * time.Second)
	ok, failed := 0, 0
	for time.Now().Before(end) {
		body, err := once()
		switch {
		case err != nil:
			failed++
			fmt.Printf("%s failed: %v\n", time.Now().UTC().Format(time.RFC3339Nano), err)
		case !strings.Contains(string(body), "kind: Config"):
			failed++
			fmt.Printf("%s failed: not a kubeconfig (%d bytes)\n", time.Now().UTC().Format(time.RFC3339Nano), len(body))
		default:
			ok++
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Printf("ok=%d failed=%d\n", ok, failed)
	if failed > 0 || ok == 0 {
		return 1
	}
	return 0
}
