package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// nodeName is the local cluster's one node. It is also the node's "Hostname" address, the first
// address type kube-apiserver tries for the kubelet: so the API server, which runs on the host's
// loopback, reaches the kubelet through netfwd's listener there (lib.sh, node_*).
const nodeName = "127.0.0.1"

// writeCerts creates in dir whatever of these is missing (existing files are kept, so a new
// leaf can be added to an existing cluster without invalidating the others):
//
//	ca.crt/ca.key                  cluster CA (signs apiserver serving, admin and KCM client certs)
//	apiserver.crt/apiserver.key    serving cert, SANs 127.0.0.1 ::1 localhost kubernetes...
//	admin.crt/admin.key            client cert CN=kubernetes-admin O=system:masters
//	kcm-masters.crt/.key           client cert CN=system:kube-controller-manager O=system:masters
//	                               (--use-service-account-credentials=false: the controllers act
//	                               as the KCM itself, which therefore needs more than its bootstrap role)
//	sa.key/sa.pub                  service-account signing key (RSA 2048)
//	dex-ca.crt/dex-ca.key          throwaway CA for Dex
//	dex.crt/dex.key                Dex serving cert, SANs 127.0.0.1 localhost
//	apiserver-kubelet-client, node, kube-proxy, scheduler: client certs of the node's parts
func writeCerts(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, caKey, err := loadOrNewCA(dir, "ca", "kcluster-ca")
	if err != nil {
		return err
	}
	hosts := []string{"127.0.0.1", "::1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "10.0.0.1"}
	if err := leaf(dir, "apiserver", ca, caKey, pkix.Name{CommonName: "kube-apiserver"}, hosts, true); err != nil {
		return err
	}
	if err := leaf(dir, "admin", ca, caKey, pkix.Name{CommonName: "kubernetes-admin", Organization: []string{"system:masters"}}, nil, false); err != nil {
		return err
	}
	if err := leaf(dir, "kcm-masters", ca, caKey, pkix.Name{CommonName: "system:kube-controller-manager", Organization: []string{"system:masters"}}, nil, false); err != nil {
		return err
	}
	// The node's parts (node-up): each with the identity RBAC's bootstrap roles expect, and the
	// API server's client certificate for the kubelet (exec, attach, logs, port-forward).
	for _, c := range []struct {
		name string
		subj pkix.Name
	}{
		{"apiserver-kubelet-client", pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}}},
		{"node", pkix.Name{CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}}},
		{"kube-proxy", pkix.Name{CommonName: "system:kube-proxy"}},
		{"scheduler", pkix.Name{CommonName: "system:kube-scheduler"}},
	} {
		if err := leaf(dir, c.name, ca, caKey, c.subj, nil, false); err != nil {
			return err
		}
	}
	if !exists(filepath.Join(dir, "sa.pub")) {
		saKey, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return err
		}
		saDer, _ := x509.MarshalPKCS8PrivateKey(saKey)
		if err := writePEM(filepath.Join(dir, "sa.key"), "PRIVATE KEY", saDer, 0o600); err != nil {
			return err
		}
		pubDer, _ := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
		if err := writePEM(filepath.Join(dir, "sa.pub"), "PUBLIC KEY", pubDer, 0o644); err != nil {
			return err
		}
	}
	dca, dcaKey, err := loadOrNewCA(dir, "dex-ca", "kcluster-dex-ca")
	if err != nil {
		return err
	}
	return leaf(dir, "dex", dca, dcaKey, pkix.Name{CommonName: "dex"}, []string{"127.0.0.1", "::1", "localhost"}, true)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func loadOrNewCA(dir, name, cn string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err1 := os.ReadFile(filepath.Join(dir, name+".crt"))
	keyPEM, err2 := os.ReadFile(filepath.Join(dir, name+".key"))
	if err1 == nil && err2 == nil {
		cb, _ := pem.Decode(certPEM)
		kb, _ := pem.Decode(keyPEM)
		if cb == nil || kb == nil {
			return nil, nil, fmt.Errorf("%s: bad PEM", name)
		}
		c, err := x509.ParseCertificate(cb.Bytes)
		if err != nil {
			return nil, nil, err
		}
		k, err := x509.ParseECPrivateKey(kb.Bytes)
		return c, k, err
	}
	c, k, err := newCA(cn)
	if err != nil {
		return nil, nil, err
	}
	return c, k, writePair(dir, name, c, k)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

func newCA(cn string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	return c, key, err
}

func leaf(dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, subj pkix.Name, hosts []string, server bool) error {
	if exists(filepath.Join(dir, name+".crt")) && exists(filepath.Join(dir, name+".key")) {
		return nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      subj,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(5 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	c, _ := x509.ParseCertificate(der)
	return writePair(dir, name, c, key)
}

func writePair(dir, name string, c *x509.Certificate, key *ecdsa.PrivateKey) error {
	if err := writePEM(filepath.Join(dir, name+".crt"), "CERTIFICATE", c.Raw, 0o644); err != nil {
		return err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, name+".key"), "EC PRIVATE KEY", der, 0o600)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}
