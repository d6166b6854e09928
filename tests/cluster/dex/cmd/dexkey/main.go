// dexkey prints the current signing key of a Dex whose storage is the SQLite file DB, so that
// tests can sign tokens with the key the Dex JWKS publishes (and so every API server that trusts
// that Dex accepts their signature) while choosing the claims themselves:
//
//	dexkey DB    prints {"kid": ..., "alg": ..., "pkcs1": <base64 DER of the RSA private key>}
//
// It reads Dex's own storage through Dex's storage package, so it follows Dex's key rotation.
package main

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/dexidp/dex/storage/sql"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: dexkey DB")
		os.Exit(2)
	}
	store, err := (&sql.SQLite3{File: os.Args[1]}).Open(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dexkey: open storage:", err)
		os.Exit(1)
	}
	defer store.Close()
	keys, err := store.GetKeys()
	if err != nil || keys.SigningKey == nil {
		fmt.Fprintln(os.Stderr, "dexkey: no signing key yet:", err)
		os.Exit(1)
	}
	key, ok := keys.SigningKey.Key.(*rsa.PrivateKey)
	if !ok {
		fmt.Fprintf(os.Stderr, "dexkey: the signing key is a %T, not RSA\n", keys.SigningKey.Key)
		os.Exit(1)
	}
	out, _ := json.Marshal(map[string]string{
		"kid":   keys.SigningKey.KeyID,
		"alg":   keys.SigningKey.Algorithm,
		"pkcs1": base64.StdEncoding.EncodeToString(x509.MarshalPKCS1PrivateKey(key)),
	})
	fmt.Println(string(out))
}
