#!/usr/bin/env python3
"""Writes COUNT distinct ID tokens for alice, one per line, to each FILE: real users arrive with
fresh tokens, so a benchmark that repeats one token measures the verdict cache, not the download.

    bench/fresh_tokens.py COUNT FILE...

Each token is the claims of a real Dex token for alice (read from stdin) with its own `jti`
(the file's name and the token's line: files of separate calls never share a token, so the API
server's own token cache cannot answer one row with another's tokens), signed with the main Dex's
current key (tests/cluster's `dexkey`, as the differential test signs),
so the operator and the API server accept it as they accept Dex's own. Both cores sign.
"""

import base64
import json
import os
import subprocess
import sys
from multiprocessing import Pool

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def init(pkcs1: str, kid: str, claims: dict) -> None:
    global KEY, HEADER, CLAIMS
    KEY = serialization.load_der_private_key(base64.b64decode(pkcs1), password=None)
    HEADER = b64url(json.dumps({"alg": "RS256", "kid": kid}).encode())
    CLAIMS = claims


def sign(span: tuple) -> list:
    tag, first, count = span
    tokens = []
    for n in range(first, first + count):
        payload = b64url(json.dumps({**CLAIMS, "jti": f"bench-{tag}-{n}"}).encode())
        signing_input = f"{HEADER}.{payload}".encode()
        signature = KEY.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        tokens.append(f"{HEADER}.{payload}.{b64url(signature)}\n")
    return tokens


def main() -> None:
    count, files = int(sys.argv[1]), sys.argv[2:]
    template = sys.stdin.read().strip().split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(template + "=" * (-len(template) % 4)))
    key = json.loads(
        subprocess.run(
            [os.environ["DEX_KEY_TOOL"], os.environ["DEX_DB_FILE"]],
            check=True,
            capture_output=True,
        ).stdout
    )
    chunk = 2000
    with Pool(os.cpu_count(), init, (key["pkcs1"], key["kid"], claims)) as pool:
        for path in files:
            tag = os.path.basename(path)
            spans = [(tag, first, min(chunk, count - first)) for first in range(0, count, chunk)]
            with open(path, "w") as out:
                for tokens in pool.imap(sign, spans):
                    out.writelines(tokens)


if __name__ == "__main__":
    main()
