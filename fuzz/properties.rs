//! What the fuzz targets check, shared by `fuzz/fuzz_targets/*` (under
//! cargo-fuzz, on nightly) and by `tests/fuzz_corpora.rs`, which replays
//! every committed corpus input on stable in the ordinary suite. Each
//! function takes the fuzzer's bytes and panics when a property fails;
//! none may panic on any input otherwise.
//!
//! Properties, not only "no panic": a normalised path normalises to
//! itself, and one with no ambiguity recorded holds no encoded separator;
//! a token taken out of a form or query leaves none behind and nothing
//! else changed; a redirect URI matches only itself or its loopback twin;
//! a response is framed the same whether it arrives whole or a byte at a
//! time; a configuration that parses names route prefixes that are
//! normal already; a JWT accepted at any moment, read again by a plain
//! JSON parser, is signed, typed, addressed and timed as RFC 9068 asks;
//! an endpoint's form is read as the form's pairs say, and an
//! authorization request's error goes only to a registered redirect URI.

use http::{HeaderMap, HeaderValue, Method};

/// Path normalisation and what the path policy reads of it.
pub fn path(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let Ok(normal) = portcullis::http::path::normalize(path) else { return };
    assert!(normal.path.starts_with('/'), "{path:?} became {:?}", normal.path);
    let again = portcullis::http::path::normalize(&normal.path).expect("a normal path normalises");
    assert_eq!(again.path, normal.path, "normalising {path:?} twice");
    if !normal.ambiguities.any() {
        let lower = normal.path.to_ascii_lowercase();
        for encoded in ["%2f", "%5c", "%3b", "\\", ";"] {
            assert!(!lower.contains(encoded), "{path:?} became {:?} with no ambiguity recorded", normal.path);
        }
        // An escape that decodes to another escape.
        let escaped_escape =
            lower.as_bytes().windows(5).any(|w| w.starts_with(b"%25") && w[3..].iter().all(u8::is_ascii_hexdigit));
        assert!(!escaped_escape, "{path:?} became {:?}: double encoding with no ambiguity recorded", normal.path);
    }
}

/// Bearer tokens from a form body or query, and from `Authorization`.
pub fn bearer(data: &[u8]) {
    use portcullis::auth::bearer;
    // A form's pairs, leaving out the empty ones (`a=1&&b=2`), which the
    // form is rebuilt without.
    let pairs =
        |form: &[u8]| form.split(|&b| b == b'&').filter(|p| !p.is_empty()).map(<[u8]>::to_vec).collect::<Vec<_>>();
    if let Ok((token, rest)) = bearer::split_form_token(data) {
        let (before, after) = (pairs(data), pairs(&rest));
        match token {
            None => assert_eq!(after, before, "nothing taken, nothing changed"),
            Some(token) => {
                assert!(!token.is_empty());
                assert_eq!(after.len() + 1, before.len(), "the token's pair, and only it, left the form");
                let mut kept = before.iter();
                assert!(after.iter().all(|p| kept.any(|q| q == p)), "the other pairs stay, in their order");
                let (again, rest_again) = bearer::split_form_token(&rest).expect("what is left still parses");
                assert_eq!(again, None, "one token per form, and it is gone");
                assert_eq!(pairs(&rest_again), after);
            }
        }
    }
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value);
        if let Ok(Some(token)) = bearer::from_header(&headers) {
            assert!(bearer::is_token68(token), "{token:?} is not token68");
            assert!(data.windows(token.len()).any(|w| w == token.as_bytes()), "{token:?} is not in the header");
        }
    }
}

/// The redirect URI matcher: `registered`, a NUL, `presented`.
pub fn redirect_uri(data: &[u8]) {
    let Some(nul) = data.iter().position(|&b| b == 0) else { return };
    let (Ok(registered), Ok(presented)) = (std::str::from_utf8(&data[..nul]), std::str::from_utf8(&data[nul + 1..]))
    else {
        return;
    };
    use portcullis::oauth::authorize::redirect_uri_matches;
    assert!(redirect_uri_matches(registered, registered), "a URI matches itself");
    // Only what registration accepts is ever matched against (no
    // fragment, https or a loopback http, …).
    if portcullis::config::check_redirect_uri(registered).is_err() {
        return;
    }
    if redirect_uri_matches(registered, presented) && registered != presented {
        // Only a loopback IP literal's port may differ (RFC 8252 §7.3).
        let (r, p): (http::Uri, http::Uri) = (registered.parse().expect("parsed"), presented.parse().expect("parsed"));
        assert_eq!(p.scheme_str(), Some("http"));
        assert!(matches!(p.host(), Some("127.0.0.1" | "[::1]")), "{presented:?}");
        assert_eq!(r.host(), p.host());
        assert_eq!(r.path_and_query().map(|x| x.as_str()), p.path_and_query().map(|x| x.as_str()));
        assert!(!presented.contains(['#', '@']), "{presented:?}");
    }
}

/// The upstream response parser and body decoders: the first byte picks
/// the request's method (odd: `HEAD`), the rest is the wire.
pub fn upstream_response(data: &[u8]) {
    let Some((&first, wire)) = data.split_first() else { return };
    let method = if first % 2 == 1 { Method::HEAD } else { Method::GET };
    use portcullis::upstream::http1::frame_for_fuzzing;
    let whole = frame_for_fuzzing(wire, &method, wire.len());
    for step in [1, 7] {
        let pieces = frame_for_fuzzing(wire, &method, step);
        match (&whole, &pieces) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "framed differently fed {step} bytes at a time"),
            (Err(_), Err(_)) => {}
            _ => panic!("fed whole: {whole:?}; fed {step} bytes at a time: {pieces:?}"),
        }
    }
    if let Ok(Some(framed)) = &whole {
        if method == Method::HEAD || matches!(framed.status, 204 | 304) {
            assert!(framed.body.is_empty(), "no body for HEAD, 204 or 304");
        }
        // A body framed by its length (HEAD, 204 and 304 bodies are not,
        // and their fields are relayed as they came) ends at it.
        let by_length = method == Method::GET
            && !matches!(framed.status, 204 | 304)
            && !framed.headers.iter().any(|(name, _)| name == "transfer-encoding");
        let length = framed.headers.iter().find(|(name, _)| name == "content-length");
        if let (Some((_, length)), true, true) = (length, framed.ended, by_length) {
            let length: u64 = std::str::from_utf8(length).expect("a checked length").parse().expect("a number");
            assert_eq!(framed.body.len() as u64, length, "a body ends at its length");
        }
    }
}

/// The configuration file's parser and checks.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = portcullis::config::Config::parse(text, "fuzz.toml", &|_| None) else { return };
    for route in &config.routes {
        if route.path_prefix.is_empty() {
            continue;
        }
        let normal = portcullis::http::path::normalize(&route.path_prefix).expect("a route's prefix is normal");
        assert_eq!(normal.path, route.path_prefix);
    }
}

const JWT_ISSUER: &str = "https://issuer.example";
const JWT_AUDIENCE: &str = "api";
const JWT_LEEWAY: u64 = 60;
/// The moment the `jwt` seeds are written for.
pub const JWT_NOW: u64 = 1_800_000_000;

/// The fixed key ring the `jwt` target verifies with.
fn jwt_keys() -> &'static (portcullis::auth::keys::KeyRing, portcullis::auth::tokens::JwtVerifier) {
    use portcullis::auth::keys::{self, KeyRing};
    use portcullis::auth::tokens::JwtVerifier;
    use std::time::Duration;
    static KEYS: std::sync::OnceLock<(KeyRing, JwtVerifier)> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let ring = KeyRing::new(&[keys::from_seed([7; 32], 0, 0)], Duration::from_secs(3600)).expect("a key ring");
        (ring, JwtVerifier::new(JWT_ISSUER, JWT_AUDIENCE, Duration::from_secs(JWT_LEEWAY)))
    })
}

/// The token a `jwt` input stands for (see [`jwt`]).
fn jwt_token(data: &[u8]) -> Option<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let key = &jwt_keys().0.keys()[0];
    match data.iter().position(|&b| b == 0) {
        Some(nul) => {
            let header = String::from_utf8_lossy(&data[..nul]).replace("$kid", &key.kid);
            let signed = format!("{}.{}", B64.encode(header), B64.encode(&data[nul + 1..]));
            let signature = jsonwebtoken::crypto::sign(signed.as_bytes(), &key.signing, jsonwebtoken::Algorithm::EdDSA)
                .expect("signed");
            Some(format!("{signed}.{signature}"))
        }
        None => std::str::from_utf8(data).ok().map(str::to_owned),
    }
}

/// Whether the `jwt` input is accepted at `now`: for checking that the
/// seeds reach both sides of the verifier.
pub fn jwt_accepts(data: &[u8], now: u64) -> bool {
    let (ring, verifier) = jwt_keys();
    jwt_token(data).is_some_and(|token| verifier.verify(&token, ring, now).is_ok())
}

/// JWT verification (RFC 9068 §4) with a fixed key, at three moments (a
/// plausible one, and both ends of the clock). The input is a token, or a
/// header and claims (JSON) split by a NUL, which are signed with the key
/// (`$kid` in the header becomes its `kid`), so that what the fuzzer
/// changes is the JSON and not only the signature.
pub fn jwt(data: &[u8]) {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use jsonwebtoken::Algorithm;

    let (ring, verifier) = jwt_keys();
    let key = &ring.keys()[0];
    let Some(token) = jwt_token(data) else { return };
    let json = |part: &str| -> serde_json::Value {
        serde_json::from_slice(&B64.decode(part).expect("an accepted part is base64url")).expect("and JSON")
    };
    for now in [JWT_NOW, 0, u64::MAX] {
        let Ok((identity, issued_at)) = verifier.verify(&token, ring, now) else { continue };
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "{token:?}");
        let signed = format!("{}.{}", parts[0], parts[1]);
        let verified = jsonwebtoken::crypto::verify(parts[2], signed.as_bytes(), &key.verifying, Algorithm::EdDSA);
        assert!(verified.is_ok_and(|ok| ok), "accepted with a signature that does not verify: {token:?}");
        let (header, claims) = (json(parts[0]), json(parts[1]));
        assert_eq!(header["alg"], "EdDSA", "{header}");
        assert_eq!(header["kid"].as_str(), Some(key.kid.as_str()), "{header}");
        let typ = header["typ"].as_str().map(str::to_ascii_lowercase);
        assert!(matches!(typ.as_deref(), Some("at+jwt" | "application/at+jwt")), "{header}");
        assert!(header.get("crit").is_none(), "{header}");
        assert_eq!(claims["iss"], JWT_ISSUER, "{claims}");
        let aud = &claims["aud"];
        assert!(
            aud == JWT_AUDIENCE || aud.as_array().is_some_and(|all| all.iter().any(|a| a == JWT_AUDIENCE)),
            "{claims}"
        );
        let exp = claims["exp"].as_u64().expect("a numeric exp");
        assert!(exp >= now.saturating_sub(JWT_LEEWAY), "expired at {now}: {claims}");
        assert_eq!(identity.expires_at, exp);
        if let Some(nbf) = claims.get("nbf").filter(|v| !v.is_null()) {
            assert!(nbf.as_u64().expect("a numeric nbf") <= now.saturating_add(JWT_LEEWAY), "not yet valid: {claims}");
        }
        assert_eq!(issued_at, claims.get("iat").and_then(serde_json::Value::as_u64).unwrap_or(0), "{claims}");
        assert_eq!(claims["sub"], identity.subject.as_str());
        assert_eq!(claims["client_id"], identity.client_id.as_str());
        assert_eq!(claims["jti"], identity.jti.as_str());
        // Any change to the signature is refused.
        let mut tampered = token.clone().into_bytes();
        let at = signed.len() + 1 + parts[2].len() / 2;
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ASCII");
        assert!(verifier.verify(&tampered, ring, now).is_err(), "a changed signature was accepted: {tampered:?}");
    }
}

/// The forms of the token, introspection and revocation endpoints, the
/// authorization request (as a query or a form), and `Authorization:
/// Basic` client credentials.
pub fn oauth_form(data: &[u8]) {
    use portcullis::config::{ClientConfig, ClientSecret, GrantType};
    use portcullis::oauth::authorize::{self, AuthorizeError, RawParams, redirect_uri_matches};
    use portcullis::oauth::{BasicCredentials, Params};
    use portcullis::scope::ScopeSet;
    use std::sync::{Arc, OnceLock};

    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(data).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let count = |name: &str| pairs.iter().filter(|(k, _)| k == name).count();
    let repeated = pairs.iter().any(|(k, _)| count(k) > 1);

    // Token, introspection, revocation: each parameter at most once, and
    // one sent empty is one not sent.
    match Params::parse(data) {
        Ok(params) => {
            assert!(!repeated, "a repeated parameter was taken");
            for (name, value) in &pairs {
                assert_eq!(params.get(name), (!value.is_empty()).then_some(value.as_str()), "{name:?}");
            }
        }
        Err(_) => assert!(repeated, "refused with no parameter repeated"),
    }

    // The authorization request.
    static CLIENT: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        Arc::new(ClientConfig {
            client_id: "app".into(),
            name: "App".into(),
            secret: ClientSecret::None,
            redirect_uris: vec!["https://app.example/cb".into(), "http://127.0.0.1/cb?x=1".into()],
            scopes: ScopeSet::parse("read write").expect("scopes"),
            grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
            public: true,
            require_pkce: true,
        })
    });
    let raw = RawParams::parse(data);
    assert_eq!(raw.any_repeated(), repeated);
    let registered = |uri: &str| client.redirect_uris.iter().any(|r| redirect_uri_matches(r, uri));
    match authorize::validate(&raw, |id| (id == client.client_id).then(|| client.clone())) {
        Ok(request) => {
            assert!(!repeated);
            assert_eq!(count("client_id"), 1);
            assert!(registered(&request.redirect_uri), "{:?}", request.redirect_uri);
            assert!(pairs.contains(&("response_type".into(), "code".into())));
            assert!(!request.scopes.is_empty() && request.scopes.is_subset(&client.scopes));
            let challenge = request.code_challenge.expect("PKCE is required of this client");
            assert!(challenge.len() == 43 && authorize::is_pkce_value(&challenge), "{challenge:?}");
            assert!(pairs.contains(&("code_challenge_method".into(), "S256".into())));
        }
        // Never an open redirector (RFC 9700 §4.11.2).
        Err(AuthorizeError::Redirect { redirect_uri, .. }) => {
            assert!(registered(&redirect_uri), "an error sent to {redirect_uri:?}");
        }
        Err(AuthorizeError::Page(_)) => {}
    }

    // Basic credentials: what is read is what was encoded.
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(credentials) = BasicCredentials::parse(text) {
        use base64::Engine as _;
        assert!(!credentials.client_id.is_empty());
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let again = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            encode(&credentials.client_id),
            encode(&credentials.client_secret)
        ));
        assert_eq!(BasicCredentials::parse(&again), Ok(credentials));
    }
}
