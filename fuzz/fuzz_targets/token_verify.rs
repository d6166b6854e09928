//! `Verifier::verify`, the operator's security core, against hostile ID tokens.
//!
//! Two modes, chosen by the first input byte:
//! - any first byte except 0x00 — **raw**: the whole input, lossily decoded as UTF-8, is the
//!   token. Finds panics in the shape checks, base64/JSON handling and jsonwebtoken's parsing.
//! - 0x00 — **structured**: the rest drives `arbitrary` to build a header and claims (algorithm,
//!   kid, jku/x5u/jwk/crit headers, iss/aud/azp/exp/nbf/iat/email/groups variants, duplicate
//!   keys, tampering), which are then *signed* with the issuer's real RSA or EC key, an attacker
//!   key, HMAC-with-the-public-key, or nothing. This gets past the signature check, so the
//!   fuzzer reaches claim validation, and gives an oracle: whatever `verify` accepts must have
//!   been signed by the issuer's key with an allowed algorithm and must carry claims the
//!   operator's rules accept (checked independently below).
//!
//! Always: no panic, and no error message repeats the token (bearer credential) when it is at
//! least 16 bytes long.
//!
//! Keys are generated once per process (no private key is checked in); the verifier holds the
//! issuer's RSA and EC public keys through `KeySet::from_static`, so nothing touches the network.
#![no_main]

use std::sync::LazyLock;

use arbitrary::{Arbitrary, Unstructured};
use aws_lc_rs::{
    encoding::{AsDer, PublicKeyX509Der},
    hmac,
    rand::SystemRandom,
    rsa::KeySize,
    signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
        KeyPair as _, RSA_PKCS1_SHA256, RSA_PKCS1_SHA384, RSA_PSS_SHA256, RsaKeyPair,
    },
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, jwk::JwkSet};
use kubeconfig_operator::{
    config::OidcConfig,
    oidc::jwks::KeySet,
    oidc::token::{IdToken, TokenError},
    oidc::verify::Verifier,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

const ISSUER: &str = "https://dex.example.com/dex";
const CLIENT: &str = "kubeconfig-operator";
const RSA_KID: &str = "issuer-rsa";
const EC_KID: &str = "issuer-ec";
/// go-oidc v2's allowance for `nbf` in the future; `exp` has none.
const NOT_BEFORE_SKEW_SECS: i64 = 60;
const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256];

struct Keys {
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    attacker_rsa: RsaKeyPair,
    attacker_ec: EcdsaKeyPair,
    /// P-384 key, published nowhere: an ES384 signature under the EC kid.
    ec384: EcdsaKeyPair,
    /// SubjectPublicKeyInfo DER of the issuer's RSA key, the classic HMAC-confusion secret.
    rsa_public_der: Vec<u8>,
    jwks: JwkSet,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| {
    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let public = rsa.public_key();
    // No `alg` on the RSA JWK, so it serves both RS256 and PS256; the EC JWK pins its curve.
    let point = ec.public_key().as_ref();
    let (x, y) = point[1..].split_at(32);
    let jwks: JwkSet = serde_json::from_value(json!({"keys": [
        {
            "kty": "RSA", "use": "sig", "kid": RSA_KID,
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero()),
        },
        {"kty": "EC", "use": "sig", "kid": EC_KID, "crv": "P-256", "x": b64(x), "y": b64(y)},
    ]}))
    .unwrap();
    let der: PublicKeyX509Der = public.as_der().unwrap();
    Keys {
        rsa_public_der: der.as_ref().to_vec(),
        attacker_rsa: RsaKeyPair::generate(KeySize::Rsa2048).unwrap(),
        attacker_ec: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
        ec384: EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap(),
        rsa,
        ec,
        jwks,
    }
});

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
});

fn config() -> OidcConfig {
    OidcConfig {
        username_prefix: "oidc:".into(),
        groups_prefix: "oidc:".into(),
        ..OidcConfig::for_tests(ISSUER, &ALGORITHMS)
    }
}

/// `FUZZ_EXPLAIN=1 ./token_verify FILE...` prints each structured input's verdict and decoded
/// form (used to pick and document the seed corpus, see fuzz/README.md).
static EXPLAIN: LazyLock<bool> = LazyLock::new(|| std::env::var_os("FUZZ_EXPLAIN").is_some());

static VERIFIER: LazyLock<Verifier> =
    LazyLock::new(|| Verifier::with_keys(config(), KeySet::from_static(&KEYS.jwks, &ALGORITHMS)));

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0, rest)) => structured(rest),
        _ => raw(data),
    }
});

fn verify(token: &str) -> Result<kubeconfig_operator::oidc::token::Identity, TokenError> {
    let result = RUNTIME.block_on(VERIFIER.verify(&IdToken::from(token.to_owned())));
    if let Err(error) = &result {
        assert_no_echo(error, token);
    }
    result
}

fn raw(data: &[u8]) {
    let token = String::from_utf8_lossy(data);
    // A real token can only come from the structured mode: nobody can sign without the key.
    let _ = verify(&token);
}

/// The error's message must not repeat the token. Texts that are fixed (the variant's message
/// with its data left out) are not an echo even if the fuzzer happens to feed them back.
fn assert_no_echo(error: &TokenError, token: &str) {
    if token.len() < 16 {
        return;
    }
    let shown = error.to_string();
    if !shown.contains(token) {
        return;
    }
    let skeleton = match error {
        TokenError::UnknownKey(_) => TokenError::UnknownKey(String::new()),
        TokenError::MissingClaim(_) => TokenError::MissingClaim(String::new()),
        TokenError::Expired { .. } => TokenError::Expired { expired_at: None },
        TokenError::WrongIssuer { expected, .. } => TokenError::WrongIssuer {
            expected: expected.clone(),
            found: String::new(),
        },
        other => other.clone(),
    }
    .to_string();
    assert!(
        skeleton.contains(token),
        "the error message repeats the token: {shown:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Structured mode.

#[derive(Arbitrary, Debug, Clone)]
enum AlgName {
    Rs256,
    Ps256,
    Es256,
    Rs384,
    Es384,
    Hs256,
    None,
    NoneMixedCase,
    Missing,
    NotAString(i8),
    Other(String),
}

impl AlgName {
    fn json(&self) -> Option<Value> {
        Some(match self {
            AlgName::Rs256 => json!("RS256"),
            AlgName::Ps256 => json!("PS256"),
            AlgName::Es256 => json!("ES256"),
            AlgName::Rs384 => json!("RS384"),
            AlgName::Es384 => json!("ES384"),
            AlgName::Hs256 => json!("HS256"),
            AlgName::None => json!("none"),
            AlgName::NoneMixedCase => json!("nOnE"),
            AlgName::Missing => return None,
            AlgName::NotAString(n) => json!(n),
            AlgName::Other(s) => json!(s),
        })
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Kid {
    Rsa,
    Ec,
    Missing,
    Null,
    Number(i32),
    /// The real kid with something after it (prefix-match bugs).
    RsaWithSuffix(String),
    PathTraversal,
    Other(String),
}

impl Kid {
    fn json(&self) -> Option<Value> {
        Some(match self {
            Kid::Rsa => json!(RSA_KID),
            Kid::Ec => json!(EC_KID),
            Kid::Missing => return None,
            Kid::Null => Value::Null,
            Kid::Number(n) => json!(n),
            Kid::RsaWithSuffix(s) => json!(format!("{RSA_KID}{s}")),
            Kid::PathTraversal => json!("../../../../dev/null"),
            Kid::Other(s) => json!(s),
        })
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum HeaderExtra {
    Typ(String),
    Jku,
    X5u,
    /// An attacker-controlled JWK embedded in the header (must be ignored).
    EmbeddedJwk,
    X5c,
    Crit(Vec<String>),
    Cty(String),
    B64False,
    Zip,
    Field(String, SmallJson),
}

#[derive(Arbitrary, Debug, Clone)]
enum SmallJson {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Vec<String>),
    Obj(Vec<(String, i32)>),
}

impl SmallJson {
    fn json(&self) -> Value {
        match self {
            SmallJson::Null => Value::Null,
            SmallJson::Bool(b) => json!(b),
            SmallJson::Int(n) => json!(n),
            SmallJson::Float(f) => json!(f),
            SmallJson::Str(s) => json!(s),
            SmallJson::Arr(items) => json!(items),
            SmallJson::Obj(fields) => {
                Value::Object(fields.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
            }
        }
    }
}

#[derive(Arbitrary, Debug, Clone, PartialEq)]
enum Signer {
    IssuerRsaPkcs1Sha256,
    IssuerRsaPss256,
    IssuerRsaPkcs1Sha384,
    IssuerEc256,
    AttackerRsa,
    AttackerEc,
    Ec384,
    /// HMAC-SHA256 keyed with the issuer's public key (algorithm confusion).
    HmacWithPublicKey,
    Empty,
    Garbage(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone)]
enum Iss {
    Exact,
    TrailingSlash,
    Uppercase,
    Array,
    Missing,
    Number,
    Other(String),
}

#[derive(Arbitrary, Debug, Clone)]
enum Aud {
    Client,
    Missing,
    Other(String),
    /// Several audiences; `bool` says whether the client is among them.
    Many(bool, Vec<String>),
    Empty,
    Number(i64),
}

#[derive(Arbitrary, Debug, Clone)]
enum Time {
    /// Seconds relative to now.
    Offset(i32),
    Absolute(i64),
    Float(f64),
    Str(String),
    Huge,
    Negative,
    Missing,
    Null,
}

#[derive(Arbitrary, Debug, Clone)]
enum Email {
    Good,
    Empty,
    WithControl,
    Number(i64),
    Array,
    Missing,
    Other(String),
}

#[derive(Arbitrary, Debug, Clone)]
enum Groups {
    Missing,
    One(String),
    Many(Vec<String>),
    Mixed(Vec<String>, i32),
    Number(i32),
    Null,
    Object,
}

#[derive(Arbitrary, Debug, Clone)]
enum Tamper {
    None,
    FlipSignatureByte(u16),
    SwapPayloadByte(u16, u8),
    AppendToSignature(String),
    /// Replaces the header segment by one with `alg: none` after signing.
    ReplaceHeader,
    ExtraSegment,
    DropSignature,
    /// Inserts standard-base64 characters (`+`, `/`, `=`) at an index.
    NonUrlBase64(u16, u8),
}

#[derive(Arbitrary, Debug, Clone)]
struct Forged {
    alg: AlgName,
    kid: Kid,
    header_extras: Vec<HeaderExtra>,
    signer: Signer,
    iss: Iss,
    aud: Aud,
    azp: Option<Option<String>>,
    exp: Time,
    nbf: Time,
    iat: Time,
    email: Email,
    email_verified: Option<SmallJson>,
    groups: Groups,
    sub: Option<String>,
    extra_claims: Vec<(String, SmallJson)>,
    /// Raw `"name": value` members appended to the payload JSON after the generated ones
    /// (duplicate keys: which one does each parser see?).
    duplicate_claims: Vec<(ClaimName, SmallJson)>,
    tamper: Tamper,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum ClaimName {
    Iss,
    Aud,
    Azp,
    Exp,
    Nbf,
    Iat,
    Email,
    EmailVerified,
    Groups,
}

impl ClaimName {
    fn name(self) -> &'static str {
        match self {
            ClaimName::Iss => "iss",
            ClaimName::Aud => "aud",
            ClaimName::Azp => "azp",
            ClaimName::Exp => "exp",
            ClaimName::Nbf => "nbf",
            ClaimName::Iat => "iat",
            ClaimName::Email => "email",
            ClaimName::EmailVerified => "email_verified",
            ClaimName::Groups => "groups",
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn time_json(time: &Time, now: i64) -> Option<Value> {
    Some(match time {
        Time::Offset(s) => json!(now + i64::from(*s)),
        Time::Absolute(t) => json!(t),
        Time::Float(f) => json!(f),
        Time::Str(s) => json!(s),
        Time::Huge => json!(u64::MAX),
        Time::Negative => json!(i64::MIN),
        Time::Missing => return None,
        Time::Null => Value::Null,
    })
}

fn header_json(forged: &Forged) -> Map<String, Value> {
    let mut header = Map::new();
    for extra in &forged.header_extras {
        let (name, value) = match extra {
            HeaderExtra::Typ(t) => ("typ".to_owned(), json!(t)),
            HeaderExtra::Jku => ("jku".to_owned(), json!("https://evil.example/keys")),
            HeaderExtra::X5u => ("x5u".to_owned(), json!("https://evil.example/cert.pem")),
            HeaderExtra::EmbeddedJwk => {
                let mut jwk = serde_json::to_value(&KEYS.jwks.keys[0]).unwrap();
                jwk["n"] = json!(b64(&[0xAB; 256]));
                ("jwk".to_owned(), jwk)
            }
            HeaderExtra::X5c => ("x5c".to_owned(), json!(["MIIBIjANBgkqhkiG9w0BAQEFAAOC"])),
            HeaderExtra::Crit(names) => ("crit".to_owned(), json!(names)),
            HeaderExtra::Cty(c) => ("cty".to_owned(), json!(c)),
            HeaderExtra::B64False => ("b64".to_owned(), json!(false)),
            HeaderExtra::Zip => ("zip".to_owned(), json!("DEF")),
            HeaderExtra::Field(name, value) => (name.clone(), value.json()),
        };
        header.insert(name, value);
    }
    if let Some(alg) = forged.alg.json() {
        header.insert("alg".into(), alg);
    }
    if let Some(kid) = forged.kid.json() {
        header.insert("kid".into(), kid);
    }
    header
}

fn claims_json(forged: &Forged, now: i64) -> Map<String, Value> {
    let mut claims: Map<String, Value> = forged
        .extra_claims
        .iter()
        .map(|(k, v)| (k.clone(), v.json()))
        .collect();
    let mut set = |name: &str, value: Option<Value>| match value {
        Some(value) => {
            claims.insert(name.into(), value);
        }
        None => {
            claims.remove(name);
        }
    };
    set(
        "iss",
        match &forged.iss {
            Iss::Exact => Some(json!(ISSUER)),
            Iss::TrailingSlash => Some(json!(format!("{ISSUER}/"))),
            Iss::Uppercase => Some(json!(ISSUER.to_uppercase())),
            Iss::Array => Some(json!([ISSUER])),
            Iss::Missing => None,
            Iss::Number => Some(json!(1)),
            Iss::Other(s) => Some(json!(s)),
        },
    );
    set(
        "aud",
        match &forged.aud {
            Aud::Client => Some(json!(CLIENT)),
            Aud::Missing => None,
            Aud::Other(s) => Some(json!(s)),
            Aud::Many(with_client, others) => {
                let mut auds = others.clone();
                if *with_client {
                    auds.insert(auds.len() / 2, CLIENT.into());
                }
                Some(json!(auds))
            }
            Aud::Empty => Some(json!([])),
            Aud::Number(n) => Some(json!(n)),
        },
    );
    set(
        "azp",
        forged
            .azp
            .as_ref()
            .map(|azp| json!(azp.as_deref().unwrap_or(CLIENT))),
    );
    set("exp", time_json(&forged.exp, now));
    set("nbf", time_json(&forged.nbf, now));
    set("iat", time_json(&forged.iat, now));
    set(
        "email",
        match &forged.email {
            Email::Good => Some(json!("jane@example.com")),
            Email::Empty => Some(json!("")),
            Email::WithControl => Some(json!("jane\u{7}@example.com")),
            Email::Number(n) => Some(json!(n)),
            Email::Array => Some(json!(["jane@example.com"])),
            Email::Missing => None,
            Email::Other(s) => Some(json!(s)),
        },
    );
    set(
        "email_verified",
        forged.email_verified.as_ref().map(SmallJson::json),
    );
    set(
        "groups",
        match &forged.groups {
            Groups::Missing => None,
            Groups::One(g) => Some(json!(g)),
            Groups::Many(gs) => Some(json!(gs)),
            Groups::Mixed(gs, n) => {
                let mut items: Vec<Value> = gs.iter().map(|g| json!(g)).collect();
                items.push(json!(n));
                Some(Value::Array(items))
            }
            Groups::Number(n) => Some(json!(n)),
            Groups::Null => Some(Value::Null),
            Groups::Object => Some(json!({"dev": true})),
        },
    );
    set("sub", forged.sub.as_ref().map(|s| json!(s)));
    claims
}

fn sign(signer: &Signer, input: &[u8]) -> Vec<u8> {
    let keys = &*KEYS;
    let rng = SystemRandom::new();
    let rsa = |key: &RsaKeyPair, padding| {
        let mut signature = vec![0; key.public_modulus_len()];
        key.sign(padding, &rng, input, &mut signature).unwrap();
        signature
    };
    match signer {
        Signer::IssuerRsaPkcs1Sha256 => rsa(&keys.rsa, &RSA_PKCS1_SHA256),
        Signer::IssuerRsaPss256 => rsa(&keys.rsa, &RSA_PSS_SHA256),
        Signer::IssuerRsaPkcs1Sha384 => rsa(&keys.rsa, &RSA_PKCS1_SHA384),
        Signer::IssuerEc256 => keys.ec.sign(&rng, input).unwrap().as_ref().to_vec(),
        Signer::AttackerRsa => rsa(&keys.attacker_rsa, &RSA_PKCS1_SHA256),
        Signer::AttackerEc => keys
            .attacker_ec
            .sign(&rng, input)
            .unwrap()
            .as_ref()
            .to_vec(),
        Signer::Ec384 => keys.ec384.sign(&rng, input).unwrap().as_ref().to_vec(),
        Signer::HmacWithPublicKey => {
            let key = hmac::Key::new(hmac::HMAC_SHA256, &keys.rsa_public_der);
            hmac::sign(&key, input).as_ref().to_vec()
        }
        Signer::Empty => Vec::new(),
        Signer::Garbage(bytes) => bytes.clone(),
    }
}

/// Serialises the claims, then appends the duplicate members as raw JSON text.
fn payload_text(claims: &Map<String, Value>, duplicates: &[(ClaimName, SmallJson)]) -> String {
    let mut text = serde_json::to_string(claims).unwrap();
    if duplicates.is_empty() {
        return text;
    }
    text.pop(); // the closing brace
    for (i, (name, value)) in duplicates.iter().enumerate() {
        if i > 0 || !claims.is_empty() {
            text.push(',');
        }
        text.push_str(&format!("{}:{}", json!(name.name()), value.json()));
    }
    text.push('}');
    text
}

fn apply(tamper: &Tamper, header: &str, payload: &str, signature: &str) -> String {
    let mut token = format!("{header}.{payload}.{signature}");
    match tamper {
        Tamper::None => {}
        Tamper::FlipSignatureByte(at) => {
            let mut sig = URL_SAFE_NO_PAD.decode(signature).unwrap_or_default();
            if !sig.is_empty() {
                let i = usize::from(*at) % sig.len();
                sig[i] ^= 0x01;
            }
            token = format!("{header}.{payload}.{}", b64(&sig));
        }
        Tamper::SwapPayloadByte(at, byte) => {
            let mut bytes = URL_SAFE_NO_PAD.decode(payload).unwrap_or_default();
            if !bytes.is_empty() {
                let i = usize::from(*at) % bytes.len();
                bytes[i] = *byte;
            }
            token = format!("{header}.{}.{signature}", b64(&bytes));
        }
        Tamper::AppendToSignature(s) => token.push_str(s),
        Tamper::ReplaceHeader => {
            let none = b64(br#"{"alg":"none","kid":"issuer-rsa"}"#);
            token = format!("{none}.{payload}.{signature}");
        }
        Tamper::ExtraSegment => token.push_str(".AAAA"),
        Tamper::DropSignature => token = format!("{header}.{payload}."),
        Tamper::NonUrlBase64(at, which) => {
            let c = ['+', '/', '='][usize::from(*which) % 3];
            let i = usize::from(*at) % (token.len() + 1);
            token.insert(i, c);
        }
    }
    token
}

fn structured(data: &[u8]) {
    let Ok(forged) = Forged::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let now = now();
    let header = header_json(&forged);
    let claims = claims_json(&forged, now);
    let header_b64 = b64(serde_json::to_string(&header).unwrap().as_bytes());
    let payload = payload_text(&claims, &forged.duplicate_claims);
    let payload_b64 = b64(payload.as_bytes());
    let signature = sign(
        &forged.signer,
        format!("{header_b64}.{payload_b64}").as_bytes(),
    );
    let signed = format!("{header_b64}.{payload_b64}.{}", b64(&signature));
    let token = apply(&forged.tamper, &header_b64, &payload_b64, &b64(&signature));
    // Some tampering is a no-op (appending "", writing the byte that was there).
    let tampered = token != signed;

    let result = verify(&token);
    if *EXPLAIN {
        let outcome = result.as_ref().map_or_else(|e| e.reason(), |_| "Accepted");
        eprintln!("OUTCOME {outcome} {forged:?}");
    }
    let Ok(identity) = result else {
        return;
    };

    // Accepted: check it independently, from what was actually put into the token. Without
    // `kid` every key is tried, as kube-apiserver (go-oidc) does; go-jose skips a null member,
    // so a null `kid` is no `kid`.
    let kid = header.get("kid").filter(|kid| !kid.is_null());
    let names = |expected: &str| kid.is_none() || kid == Some(&json!(expected));
    let genuine = match (&forged.signer, header.get("alg").and_then(Value::as_str)) {
        (Signer::IssuerRsaPkcs1Sha256, Some("RS256"))
        | (Signer::IssuerRsaPss256, Some("PS256")) => names(RSA_KID),
        (Signer::IssuerEc256, Some("ES256")) => names(EC_KID),
        _ => false,
    };
    assert!(
        genuine && !tampered,
        "accepted a token the issuer did not sign with an allowed algorithm: {forged:?}"
    );
    assert!(
        !header.contains_key("crit"),
        "accepted a token with critical extensions: {forged:?}"
    );
    // The fuzzer's x5c is a public key, not a certificate, which go-jose refuses to parse.
    assert!(
        !header.contains_key("x5c"),
        "accepted a token whose x5c is no certificate chain: {forged:?}"
    );
    // The claims as a JSON parser that keeps the last duplicate sees them (kube-apiserver's
    // claim map, which the username and groups come from).
    let seen: Map<String, Value> = serde_json::from_str(&payload).unwrap();
    // The registered claims as go-oidc's struct has them: Go's encoding/json matches member
    // names case-insensitively (Unicode folding) and keeps the last match; a null leaves a
    // string as it was.
    let members = in_order(&payload);
    let registered = |field: &str| {
        members
            .iter()
            .rev()
            .find(|(name, value)| go_folds_to(name, field) && !(field == "iss" && value.is_null()))
            .map(|(_, value)| value)
    };
    assert_eq!(
        registered("iss"),
        Some(&json!(ISSUER)),
        "wrong iss accepted: {forged:?}"
    );
    // kube-apiserver ignores `azp`, so it is not checked here.
    let aud_ok = match registered("aud") {
        Some(Value::String(aud)) => aud == CLIENT,
        Some(Value::Array(auds)) => {
            auds.contains(&json!(CLIENT)) && auds.iter().all(Value::is_string)
        }
        _ => false,
    };
    assert!(aud_ok, "wrong audience accepted: {forged:?}");
    // A time as go-oidc reads it: a number, or a string holding one.
    let time = |value: &Value| match value {
        Value::String(text) => text.parse::<f64>().ok(),
        other => other.as_f64(),
    };
    let exp = registered("exp").and_then(time);
    assert!(
        exp.is_some_and(|exp| exp >= now as f64),
        "expired or exp-less token accepted: {forged:?}"
    );
    if let Some(nbf) = registered("nbf").filter(|nbf| !nbf.is_null()) {
        assert!(
            time(nbf).is_some_and(|at| at <= (now + NOT_BEFORE_SKEW_SECS + 5) as f64),
            "nbf too far in the future (or not a number) accepted: {forged:?}"
        );
    }
    if let Some(iat) = registered("iat") {
        assert!(time(iat).is_some(), "iat not a time accepted: {forged:?}");
    }
    let email = match seen.get("email") {
        Some(Value::String(email)) => email.as_str(),
        Some(Value::Null) => "",
        other => panic!("username claim {other:?} accepted: {forged:?}"),
    };
    assert_eq!(identity.username, format!("oidc:{email}"));
    assert!(
        matches!(seen.get("email_verified"), None | Some(Value::Bool(true))),
        "unverified email accepted: {forged:?}"
    );
    // As kube-apiserver reads them: null is none, a null item is "".
    let groups: Vec<String> = match seen.get("groups") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(g)) => vec![format!("oidc:{g}")],
        Some(Value::Array(gs)) => gs
            .iter()
            .map(|g| match g {
                Value::Null => "oidc:".to_owned(),
                g => format!("oidc:{}", g.as_str().expect("non-string group accepted")),
            })
            .collect(),
        Some(other) => panic!("groups claim {other} accepted"),
    };
    assert_eq!(identity.groups, groups, "groups differ: {forged:?}");
}

/// A JSON object's members in document order, duplicates kept: what Go's encoding/json walks.
fn in_order(object: &str) -> Vec<(String, Value)> {
    struct Members;
    impl<'de> serde::de::Visitor<'de> for Members {
        type Value = Vec<(String, Value)>;
        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            std::iter::from_fn(|| map.next_entry().transpose()).collect()
        }
    }
    serde::Deserializer::deserialize_map(&mut serde_json::Deserializer::from_str(object), Members)
        .expect("an accepted payload is an object")
}

/// `bytes.EqualFold(member, field)` for a field name of ASCII lower case: simple Unicode case
/// folding, in which `s` also matches the long s and `k` the Kelvin sign.
fn go_folds_to(member: &str, field: &str) -> bool {
    let mut member = member.chars();
    field.chars().all(|f| {
        member.next().is_some_and(|m| {
            m.to_ascii_lowercase() == f || (f, m) == ('s', '\u{17F}') || (f, m) == ('k', '\u{212A}')
        })
    }) && member.next().is_none()
}
