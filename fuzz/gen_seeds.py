#!/usr/bin/env python3
"""Writes the checked-in seed corpora under fuzz/corpus/<target>/.

Run from anywhere: `python3 fuzz/gen_seeds.py`. Seeds are small and each one stands for a case
the operator must handle (see the names). Token seeds are real-shaped but never a complete
`eyJ...eyJ...` JWT: their JSON segments start with a space (" {" encodes as "IHsi"), which the
verifier's JSON parsers accept, so no credential-looking string lands in the repository.

Structured token seeds (first byte 0x00) are made by `structured_token_seeds`, which needs the
built target: it mutates the all-zero input (a valid RS256 token, see token_verify.rs) one
field at a time and keeps one input per verdict, using FUZZ_EXPLAIN=1 to read the verdict.
"""
import base64, json, os, pathlib, re, subprocess, sys

ROOT = pathlib.Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"
ISSUER = "https://dex.example.com/dex"
CLIENT = "kubeconfig-operator"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def seg(obj) -> str:
    """A JSON segment with a leading space, so it never encodes to 'eyJ...'."""
    text = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return b64((" " + text).encode())


def write(target: str, name: str, data):
    if isinstance(data, str):
        data = data.encode()
    path = CORPUS / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


GOOD_CLAIMS = {"iss": ISSUER, "aud": CLIENT, "exp": 4102444800, "iat": 1700000000,
               "email": "jane@example.com", "email_verified": True, "groups": ["dev", "ops"]}
SIG = b64(b"\x01" * 64)


def token_seeds():
    h = lambda **kw: seg(kw)
    p = seg(GOOD_CLAIMS)
    rsa = {"alg": "RS256", "kid": "issuer-rsa"}
    dup = seg('{"alg":"none","alg":"RS256","kid":"issuer-rsa"}')
    utf16 = b64(' {"alg":"RS256"}'.encode("utf-16-le"))
    seeds = {
        "rs256_shape": f"{h(**rsa)}.{p}.{SIG}",
        "es256_ec_kid": f"{h(alg='ES256', kid='issuer-ec')}.{p}.{SIG}",
        "ps256": f"{h(alg='PS256', kid='issuer-rsa')}.{p}.{SIG}",
        "alg_none_empty_sig": f"{h(alg='none', kid='issuer-rsa')}.{p}.",
        "alg_none_mixed_case": f"{h(alg='nOnE', kid='issuer-rsa')}.{p}.",
        "hs256_public_key_confusion": f"{h(alg='HS256', kid='issuer-rsa')}.{p}.{b64(bytes(32))}",
        "kid_path_traversal": f"{h(alg='RS256', kid='../../../../dev/null')}.{p}.{SIG}",
        "kid_number": f"{h(alg='RS256', kid=7)}.{p}.{SIG}",
        "kid_missing": f"{h(alg='RS256')}.{p}.{SIG}",
        "kid_control_chars": f"{h(alg='RS256', kid='k' * 80 + chr(27) + '[31m')}.{p}.{SIG}",
        "alg_missing": f"{h(kid='issuer-rsa')}.{p}.{SIG}",
        "alg_not_string": f"{h(alg=256, kid='issuer-rsa')}.{p}.{SIG}",
        "jku_header": f"{h(**rsa, jku='https://evil.example/keys')}.{p}.{SIG}",
        "x5u_header": f"{h(**rsa, x5u='https://evil.example/c.pem')}.{p}.{SIG}",
        "embedded_jwk": f"{h(**rsa, jwk={'kty': 'RSA', 'n': 'AQAB', 'e': 'AQAB'})}.{p}.{SIG}",
        "crit_header": f"{h(**rsa, crit=['exp'])}.{p}.{SIG}",
        "header_array": f"{seg([1, 2])}.{p}.{SIG}",
        "header_not_json": f"{b64(b'not json')}.{p}.{SIG}",
        "payload_not_json": f"{h(**rsa)}.{b64(b'not json')}.{SIG}",
        "payload_array": f"{h(**rsa)}.{seg([1, 2, 3])}.{SIG}",
        "duplicate_keys": f"{dup}.{p}.{SIG}",
        "padded_base64": f"{h(**rsa)}==.{p}=.{SIG}==",
        "standard_base64_chars": f"{h(**rsa)}.{p}.++//{SIG}",
        "two_segments": f"{h(**rsa)}.{p}",
        "four_segments": f"{h(**rsa)}.{p}.{SIG}.{SIG}",
        "empty_segments": "..",
        "empty_header": f".{p}.{SIG}",
        "bearer_prefix": f"Bearer {h(**rsa)}.{p}.{SIG}",
        "trailing_newline": f"{h(**rsa)}.{p}.{SIG}\n",
        "unicode": f"{h(**rsa)}.{p}.\u00e9\u00e9\u00e9",
        "short_eyj_like": "eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl",
        "impossible_b64_len": f"{h(**rsa)}.{p}.{SIG}a",
        "utf16_header": f"{utf16}.{p}.{SIG}",
        "invalid_utf8_bytes": b"\xff\xfe." + p.encode() + b".\xc3\x28",
        "deep_json": f"{seg('[' * 200 + ']' * 200)}.{p}.{SIG}",
    }
    for name, token in seeds.items():
        write("token_verify", f"raw_{name}", token)


CA_PEM = ("-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2F0ZXN0\n"
          "-----END CERTIFICATE-----\n")


def config_seeds():
    base = ("server: https://kube.example.com:6443\n"
            "oidc:\n  issuerUrl: https://dex.example.com/dex\n  clientId: kubeconfig-operator\n")
    seeds = {
        "minimal": base,
        "full": base + (
            "clusterName: prod\nuserName: oidc\ndefaultNamespace: default\nwatchNamespace: ops\n"
            "certificateAuthorityData: " + base64.b64encode(CA_PEM.encode()).decode() + "\n"
            "http:\n  listen: 0.0.0.0:8443\n  tlsCertFile: /etc/tls/tls.crt\n"
            "  tlsKeyFile: /etc/tls/tls.key\n  maxConnections: 64\n  requestsPerMinutePerClient: 60\n"
            "  allowedOrigins: [https://console.example.com, 'http://localhost:3000']\n"),
        "oidc_full": ("server: https://k.example\noidc:\n  issuerUrl: https://dex.example.com/dex/\n"
                      "  clientId: c\n  usernameClaim: sub\n  usernamePrefix: 'oidc:'\n"
                      "  groupsClaim: ''\n  groupsPrefix: 'oidc:'\n  caFile: /etc/dex/ca.pem\n"
                      "  signingAlgorithms: [RS256, PS256, ES256, ES384]\n  leewaySeconds: 0\n"
                      "  requireAuthorizedParty: true\n  requireKeyId: true\n  strictNames: true\n"),
        "flow_style": '{server: "https://k.example", oidc: {issuerUrl: "https://d.example", clientId: c}}\n',
        "json": json.dumps({"server": "https://k.example",
                            "oidc": {"issuerUrl": "https://d.example", "clientId": "c"}}),
        "empty": "",
        "null_doc": "~\n",
        "comment_only": "# nothing\n",
        "multi_doc": base + "---\n" + base,
        "anchors": "server: &s https://k.example\noidc: {issuerUrl: *s, clientId: *s}\n",
        "merge_key": "a: &a {clientId: c}\noidc:\n  <<: *a\n  issuerUrl: https://d.example\n",
        "tags": base + "clusterName: !!binary aGVsbG8=\n",
        "unknown_field": base + "serverr: https://typo.example\n",
        "wrong_type": "server: [1, 2]\noidc: 7\n",
        "leeway_too_big": base.replace("clientId", "leewaySeconds: 301\n  clientId"),
        "leeway_negative": base.replace("clientId", "leewaySeconds: -1\n  clientId"),
        "eddsa_algorithm": base.replace("clientId", "signingAlgorithms: [RS256, EdDSA]\n  clientId"),
        "strict_not_bool": base.replace("clientId", "strictNames: 'yes'\n  clientId"),
        "huge_int": base + "http:\n  maxConnections: 99999999999999999999999\n",
        "zero_connections": base + "http:\n  maxConnections: 0\n  requestsPerMinutePerClient: 0\n",
        "hmac_algorithm": base.replace("clientId", "signingAlgorithms: [HS256, none]\n  clientId"),
        "empty_algorithms": base.replace("clientId", "signingAlgorithms: []\n  clientId"),
        "http_issuer": base.replace("https://dex", "http://dex"),
        "issuer_with_query": base.replace("/dex\n", "/dex?x=1#f\n"),
        "issuer_no_host": base.replace("https://dex.example.com/dex", "https:///dex"),
        "bad_ca_base64": base + "certificateAuthorityData: '!!!'\n",
        "ca_not_pem": base + "certificateAuthorityData: " + base64.b64encode(b"hello").decode() + "\n",
        "ca_both": base + "certificateAuthorityData: eA==\ncertificateAuthorityFile: /x/ca.pem\n",
        "ca_file": base + "certificateAuthorityFile: /etc/ssl/ca.pem\n",
        "ca_file_garbage": base + "certificateAuthorityFile: garbage\n",
        "ca_file_dir": base + "certificateAuthorityFile: /dir\n",
        "tls_cert_only": base + "http:\n  tlsCertFile: tls.crt\n",
        "listen_ipv6": base + "http:\n  listen: '[::1]:8000'\n",
        "listen_bad": base + "http:\n  listen: localhost:http\n",
        "namespace_invalid": base + "defaultNamespace: Not_A_Label-\nwatchNamespace: ''\n",
        "cluster_name_control": base + 'clusterName: "a\\u0007b"\n',
        "user_name_blank": base + "userName: '   '\n",
        "client_id_blank": base.replace("clientId: kubeconfig-operator", "clientId: ' '"),
        "crlf": base.replace("\n", "\r\n"),
        "bom": "\ufeff" + base,
        "block_scalars": base + "clusterName: |\n  multi\n  line\n",
        "quoted_newline_path": base + 'certificateAuthorityFile: "a\\nb"\n',
    }
    for name, text in seeds.items():
        write("config_load", name, text)


def structured_token_seeds(binary):
    """One structured seed per distinct verdict, each a single-field change of the valid token."""
    base = bytes(1 + 160)
    candidates = [base]
    for pos in range(1, 161):
        for value in (0x20, 0x45, 0x60, 0x80, 0xA0, 0xC0, 0xE0, 0xFF):
            data = bytearray(base)
            data[pos] = value
            candidates.append(bytes(data))
    tmp = ROOT / "target" / "seedgen"
    tmp.mkdir(parents=True, exist_ok=True)
    files = []
    for i, data in enumerate(candidates):
        f = tmp / f"c{i:05}"
        f.write_bytes(data)
        files.append(f)
    out = subprocess.run([binary, *map(str, files)], env={**os.environ, "FUZZ_EXPLAIN": "1"},
                         capture_output=True, text=True, check=True).stderr
    by_file, current = {}, None
    for line in out.splitlines():
        if line.startswith("Running: "):
            current = line[len("Running: "):].strip()
        elif line.startswith("OUTCOME ") and current is not None:
            by_file[current] = line.split(" ", 2)
    outcomes = [by_file[str(f)] for f in files]
    kept, seen = 0, {}
    for data, (_, verdict, forged) in zip(candidates, outcomes):
        # Keep the first input per verdict and per kind of change (coarse: the variant names).
        key = (verdict, re.sub(r'"[^"]*"|-?\d+(\.\d+)?', "", forged))
        if key in seen or seen.get(verdict, 0) >= 4:
            continue
        seen[key] = True
        seen[verdict] = seen.get(verdict, 0) + 1
        write("token_verify", f"structured_{verdict}_{kept:02}", data)
        kept += 1
    print(f"kept {kept} structured token seeds: {sorted(k for k in seen if isinstance(k, str))}")


def http_seeds():
    """Requests for http_request: flags byte (bits 0-2 method: 0 GET, 2 HEAD, 3 POST, 4 PUT,
    5 DELETE, 6 OPTIONS, 7 from line 1; bit 3 controller ready), target line, header lines
    (`name: value`, or a bare line = an Authorization value). `@T`/`@X` stand for a valid and an
    expired token, signed by the target at start-up (so no token is checked in)."""
    GET, HEAD, POST, PUT, DELETE, OPTIONS, CUSTOM, READY = 0, 2, 3, 4, 5, 6, 7, 8
    KC = "/kube-config"
    shaped = lambda kid: f"Bearer {seg({'alg': 'RS256', 'kid': kid})}.{seg(GOOD_CLAIMS)}.{SIG}"
    seeds = {
        "valid": (READY, KC, ["Bearer @T"]),
        "valid_namespace": (READY, KC + "?namespace=team-a", ["Bearer @T"]),
        "valid_namespace_percent": (GET, KC + "?namespace=team%2Da", ["bearer @T"]),
        "valid_header_form_padded": (GET, KC, ["Authorization: BEARER   @T  "]),
        "valid_head": (HEAD, KC, ["Bearer @T"]),
        "expired": (GET, KC, ["Bearer @X"]),
        "two_authorization": (GET, KC, ["Bearer @T", "Bearer @T"]),
        "header_and_bare_line": (GET, KC, ["authorization: Bearer @T", "Bearer a.b.c"]),
        "no_authorization": (GET, KC, []),
        "basic": (GET, KC, ["Basic YWxpY2U6cHc="]),
        "bearer_only": (GET, KC, ["Bearer"]),
        "bearer_spaces": (GET, KC, ["Bearer    "]),
        "bearer_inner_space": (GET, KC, ["Bearer a.b c"]),
        "bearer_no_space": (GET, KC, ["Bearer@T"]),
        "bearer_tab": (GET, KC, ["Bearer\t@T"]),
        "bearer_non_ascii": (GET, KC, [b"Bearer \xc3\xa9\xc3\xa9.a.b"]),
        "bearer_long_garbage": (GET, KC, ["Bearer garbage-token-value-that-is-long"]),
        "token_shaped": (GET, KC, [shaped("issuer-rsa")]),
        "token_unknown_kid": (GET, KC, [shaped("someone-else")]),
        "token_long_kid": (GET, KC, [shaped("k" * 300)]),
        "token_alg_none": (GET, KC, [f"Bearer {seg({'alg': 'none', 'kid': 'issuer-rsa'})}.{seg(GOOD_CLAIMS)}."]),
        "token_tampered_tail": (GET, KC, ["Bearer @TA"]),
        "ns_invalid": (GET, KC + "?namespace=Bad_NS", ["Bearer @T"]),
        "ns_twice": (GET, KC + "?namespace=a&namespace=b", ["Bearer @T"]),
        "ns_unknown_param": (GET, KC + "?ns=team-a", ["Bearer @T"]),
        "ns_empty": (GET, KC + "?namespace=", ["Bearer @T"]),
        "ns_nul": (GET, KC + "?namespace=%00", ["Bearer @T"]),
        "ns_too_long": (GET, KC + "?namespace=" + "a" * 64, ["Bearer @T"]),
        "ns_trailing_amp": (GET, KC + "?namespace=team-a&", ["Bearer @T"]),
        "ns_bad_percent": (GET, KC + "?namespace=%zz%C3%28", ["Bearer @T"]),
        "query_only_separators": (GET, KC + "?=&&;", ["Bearer @T"]),
        "format_exec": (READY, KC + "?format=exec", ["Bearer @T"]),
        "format_exec_namespace": (GET, KC + "?namespace=team-a&format=exec", ["Bearer @T"]),
        "format_argocd": (GET, KC + "?format=argocd", ["Bearer @T"]),
        "format_twice": (GET, KC + "?format=token&format=exec", ["Bearer @T"]),
        "format_unknown": (GET, KC + "?format=Token%00", ["Bearer @T"]),
        "readyz_not_ready": (GET, "/readyz", []),
        "readyz_ready": (READY, "/readyz", []),
        "healthz": (GET, "/healthz", []),
        "metrics": (READY, "/metrics", ["Bearer @T"]),
        "post": (POST, KC, ["Bearer @T"]),
        "put": (PUT, KC, []),
        "delete": (DELETE, "/metrics", []),
        "options": (OPTIONS, KC, []),
        "custom_method": (CUSTOM, "PROPFIND " + KC, ["Bearer @T"]),
        "custom_method_connect": (CUSTOM, "CONNECT " + KC, []),
        "path_traversal": (GET, "/../../etc/passwd", []),
        "trailing_slash": (GET, KC + "/", ["Bearer @T"]),
        "double_slash": (GET, "/" + KC, ["Bearer @T"]),
        "uppercase_path": (GET, "/KUBE-CONFIG", ["Bearer @T"]),
        "encoded_slash": (GET, "/kube%2Dconfig", ["Bearer @T"]),
        "fragment_and_space": (GET, KC + "?namespace=a b#frag", ["Bearer @T"]),
        "absolute_uri": (GET, "http://evil.example" + KC, ["Bearer @T"]),
        "proxy_headers": (GET, KC, ["Host: evil.example", "X-Forwarded-For: 203.0.113.9", "Bearer @T"]),
        "body_headers": (GET, KC, ["Content-Length: 5", "Transfer-Encoding: chunked", "Bearer @T"]),
        "upgrade": (GET, KC, ["Connection: upgrade", "Upgrade: websocket", "Bearer @T"]),
        "invalid_header_name": (GET, KC, ["Bad Name: x", "Bearer @T"]),
        "echo_bait_fixed_text": (GET, KC + "?x=1", ["unknown query parameter; only namespace"]),
        # The target allows https://console.example.com for CORS.
        "cors_preflight": (OPTIONS, KC, ["Origin: https://console.example.com",
                                         "Access-Control-Request-Method: GET",
                                         "Access-Control-Request-Headers: authorization"]),
        "cors_preflight_other_origin": (OPTIONS, KC, ["Origin: https://evil.example",
                                                      "Access-Control-Request-Method: GET"]),
        "cors_preflight_post": (OPTIONS, KC, ["Origin: https://console.example.com",
                                              "Access-Control-Request-Method: POST"]),
        "cors_preflight_extra_header": (OPTIONS, KC, ["Origin: https://console.example.com",
                                                      "Access-Control-Request-Method: GET",
                                                      "Access-Control-Request-Headers: authorization, x-a"]),
        "cors_get": (READY, KC, ["Origin: https://console.example.com", "Bearer @T"]),
        "cors_two_origins": (GET, KC, ["Origin: https://console.example.com",
                                       "Origin: https://console.example.com", "Bearer @T"]),
    }
    for name, (flags, target, headers) in seeds.items():
        lines = [target.encode()] + [h if isinstance(h, bytes) else h.encode() for h in headers]
        write("http_request", name, bytes([flags]) + b"\n".join(lines))


if __name__ == "__main__":
    token_seeds()
    config_seeds()
    http_seeds()
    if len(sys.argv) > 1:
        structured_token_seeds(sys.argv[1])
