package main

// The harness's own OIDC issuer: an HTTPS discovery document and JWKS for signing keys that the
// tests hold, so that they can sign tokens with any claims (expired, nbf in the future, odd
// email_verified values, ...) that kube-apiserver and the operator then both judge.
//
//	kcluster testissuer-keys DIR          writes DIR/rsa.pem (PKCS#1), DIR/ec.pem (PKCS#8, P-256) and
//	                                      DIR/p521.pem (PKCS#8, P-521, for ES512) once
//	kcluster testissuer --dir DIR --port N --cert FILE --key FILE
//
// The JWKS publishes both keys (kids "test-rsa" and "test-ec") without an "alg", so the RSA key
// verifies RS256 and PS256 tokens alike, as go-oidc and the operator allow.
//
// It is also a distributed claims endpoint (OpenID Connect Core 5.6.2) whose answers the tests
// choose: GET /claims?jwt=J answers J (the JWT a test signed, good or bad), with the status given
// by status=N (default 200), and only to the bearer given by bearer=T when that is set (401
// otherwise), so that a token's _claim_sources can name it with or without an access_token.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
)

const (
	testRSAKid = "test-rsa"
	testECKid  = "test-ec"
	// The P-521 key, for ES512 tokens (tests/differential.rs).
	testP521Kid = "test-p521"
)

func writeTestIssuerKeys(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	rsaPath, ecPath := filepath.Join(dir, "rsa.pem"), filepath.Join(dir, "ec.pem")
	if !exists(rsaPath) {
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return err
		}
		if err := writePEM(rsaPath, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key), 0o600); err != nil {
			return err
		}
	}
	for path, curve := range map[string]elliptic.Curve{ecPath: elliptic.P256(), filepath.Join(dir, "p521.pem"): elliptic.P521()} {
		if exists(path) {
			continue
		}
		key, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			return err
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(path, "PRIVATE KEY", der, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// readECKey reads a PKCS#8 ECDSA private key.
func readECKey(path string) (*ecdsa.PrivateKey, error) {
	der, err := readPEM(path)
	if err != nil {
		return nil, err
	}
	parsed, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, err
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s is not an ECDSA key", path)
	}
	return key, nil
}

func readPEM(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s holds no PEM block", path)
	}
	return block.Bytes, nil
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// fixed pads a big-endian integer to size bytes, as RFC 7518 wants EC coordinates.
func fixed(n *big.Int, size int) []byte {
	out := make([]byte, size)
	return n.FillBytes(out)
}

func testIssuerJWKS(dir string) ([]byte, error) {
	rsaDer, err := readPEM(filepath.Join(dir, "rsa.pem"))
	if err != nil {
		return nil, err
	}
	rsaKey, err := x509.ParsePKCS1PrivateKey(rsaDer)
	if err != nil {
		return nil, err
	}
	ecKey, err := readECKey(filepath.Join(dir, "ec.pem"))
	if err != nil {
		return nil, err
	}
	p521Key, err := readECKey(filepath.Join(dir, "p521.pem"))
	if err != nil {
		return nil, err
	}
	keys := []map[string]string{
		{
			"kty": "RSA", "use": "sig", "kid": testRSAKid,
			"n": b64(rsaKey.PublicKey.N.Bytes()),
			"e": b64(big.NewInt(int64(rsaKey.PublicKey.E)).Bytes()),
		},
		{
			"kty": "EC", "use": "sig", "kid": testECKid, "crv": "P-256",
			"x": b64(fixed(ecKey.PublicKey.X, 32)),
			"y": b64(fixed(ecKey.PublicKey.Y, 32)),
		},
		{
			"kty": "EC", "use": "sig", "kid": testP521Kid, "crv": "P-521",
			"x": b64(fixed(p521Key.PublicKey.X, 66)),
			"y": b64(fixed(p521Key.PublicKey.Y, 66)),
		},
	}
	return json.Marshal(map[string]any{"keys": keys})
}

func runTestIssuer(args []string) int {
	opts := map[string]string{}
	for i := 0; i+1 < len(args); i += 2 {
		opts[args[i]] = args[i+1]
	}
	dir, port, cert, key := opts["--dir"], opts["--port"], opts["--cert"], opts["--key"]
	if dir == "" || port == "" || cert == "" || key == "" {
		fmt.Fprintln(os.Stderr, "testissuer: need --dir, --port, --cert, --key")
		return 2
	}
	jwks, err := testIssuerJWKS(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testissuer:", err)
		return 1
	}
	issuer := "https://127.0.0.1:" + port
	discovery, _ := json.Marshal(map[string]any{
		"issuer":                                issuer,
		"jwks_uri":                              issuer + "/keys",
		"authorization_endpoint":                issuer + "/auth",
		"response_types_supported":              []string{"id_token"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{"RS256", "PS256", "ES256"},
	})
	serve := func(body []byte) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(body)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", serve(discovery))
	mux.HandleFunc("/keys", serve(jwks))
	mux.HandleFunc("/claims", serveClaims)
	fmt.Fprintln(os.Stderr, "testissuer: serving", issuer)
	if err := http.ListenAndServeTLS("127.0.0.1:"+port, cert, key, mux); err != nil {
		fmt.Fprintln(os.Stderr, "testissuer:", err)
		return 1
	}
	return 0
}

// serveClaims answers the JWT the request names: see the file's comment.
func serveClaims(w http.ResponseWriter, r *http.Request) {
	query := r.URL.Query()
	if bearer := query.Get("bearer"); bearer != "" && r.Header.Get("Authorization") != "Bearer "+bearer {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	status := http.StatusOK
	if text := query.Get("status"); text != "" {
		n, err := strconv.Atoi(text)
		if err != nil || n < 100 || n > 999 {
			http.Error(w, "status must be an HTTP status code", http.StatusBadRequest)
			return
		}
		status = n
	}
	w.Header().Set("Content-Type", "application/jwt")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(query.Get("jwt")))
}
