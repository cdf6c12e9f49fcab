//! The authorization endpoint's rules (RFC 6749 §4.1.1, OAuth 2.1 §4.1,
//! RFC 9700), without HTTP: validating an authorization request, matching
//! redirect URIs, PKCE, and building the redirect back to the client.
//!
//! Order matters (OAuth 2.1 §4.1.2.1, RFC 9700 §4.11.2): the client and
//! its redirect URI are checked first, and while either is in doubt the
//! user sees an error page; only then are errors sent back to the client by
//! redirect, so the endpoint can never be made an open redirector.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use crate::config::{ClientConfig, GrantType};
use crate::scope::ScopeSet;

/// Request parameters as received, keeping repeats so they can be refused.
#[derive(Debug, Default, Clone)]
pub struct RawParams(HashMap<String, Vec<String>>);

impl RawParams {
    pub fn parse(form: &[u8]) -> RawParams {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in form_urlencoded::parse(form) {
            map.entry(k.into_owned()).or_default().push(v.into_owned());
        }
        RawParams(map)
    }

    /// The single non-empty value of `name`; `Err` when it is repeated.
    pub fn one(&self, name: &str) -> Result<Option<&str>, Repeated> {
        match self.0.get(name).map(Vec::as_slice) {
            None => Ok(None),
            Some([v]) => Ok((!v.is_empty()).then_some(v.as_str())),
            Some(_) => Err(Repeated),
        }
    }

    pub fn any_repeated(&self) -> bool {
        self.0.values().any(|v| v.len() > 1)
    }

    /// Every parameter, for carrying a request through a form.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().flat_map(|(k, vs)| vs.iter().map(move |v| (k.as_str(), v.as_str())))
    }
}

/// A parameter that appeared more than once (RFC 6749 §3.1 forbids it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeated;

/// A validated authorization request.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    pub client: Arc<ClientConfig>,
    /// The redirect URI to answer at (the registered one that matched).
    pub redirect_uri: String,
    /// Whether the request named it (then the token request must too).
    pub redirect_uri_sent: bool,
    pub scopes: ScopeSet,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
}

/// Why an authorization request cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeError {
    /// Shown to the user as a page; never a redirect (the client or its
    /// redirect URI cannot be trusted).
    Page(&'static str),
    /// Sent back to the client's redirect URI (RFC 6749 §4.1.2.1).
    Redirect { redirect_uri: String, error: &'static str, description: &'static str, state: Option<String> },
}

/// Whether `presented` names the registered redirect URI `registered`:
/// byte for byte, except that the port of a loopback IP literal may differ
/// (RFC 8252 §7.3, RFC 9700 §4.1.3: native apps take any free port).
pub fn redirect_uri_matches(registered: &str, presented: &str) -> bool {
    if registered == presented {
        return true;
    }
    let (Ok(r), Ok(p)) = (registered.parse::<http::Uri>(), presented.parse::<http::Uri>()) else { return false };
    let loopback = |u: &http::Uri| u.scheme_str() == Some("http") && matches!(u.host(), Some("127.0.0.1" | "[::1]"));
    loopback(&r)
        && loopback(&p)
        && r.host() == p.host()
        && p.host().is_some_and(|host| has_valid_port(presented, host))
        && r.path_and_query().map(|x| x.as_str()) == p.path_and_query().map(|x| x.as_str())
        && !presented.contains('#')
        && !presented.contains('@')
}

/// Whether `uri`, written `http://{host}…` exactly (a lower-case scheme),
/// names no port or a port a socket can have: 1 to 65535, in plain digits
/// (RFC 8252 §7.3 lets the port vary, not be 0, 99999 or empty).
fn has_valid_port(uri: &str, host: &str) -> bool {
    let Some(rest) = uri.strip_prefix("http://").and_then(|r| r.strip_prefix(host)) else { return false };
    let Some(after_colon) = rest.strip_prefix(':') else {
        return rest.is_empty() || rest.starts_with(['/', '?']);
    };
    let digits = after_colon.bytes().take_while(u8::is_ascii_digit).count();
    let (port, tail) = after_colon.split_at(digits);
    !port.starts_with('0')
        && port.parse::<u16>().is_ok_and(|p| p > 0)
        && (tail.is_empty() || tail.starts_with(['/', '?']))
}

/// Validates an authorization request against the registered `client`
/// (`None` when the `client_id` names no client).
pub fn validate(
    params: &RawParams,
    lookup: impl Fn(&str) -> Option<Arc<ClientConfig>>,
) -> Result<AuthorizationRequest, AuthorizeError> {
    // 1. The client and the redirect URI, before anything is redirected.
    let client_id = params.one("client_id").map_err(|_| AuthorizeError::Page("The client_id parameter is repeated"))?;
    let client_id =
        client_id.ok_or(AuthorizeError::Page("The request does not name a client (client_id is missing)"))?;
    let client = lookup(client_id).ok_or(AuthorizeError::Page("The client_id names no registered client"))?;
    let presented =
        params.one("redirect_uri").map_err(|_| AuthorizeError::Page("The redirect_uri parameter is repeated"))?;
    let redirect_uri = match presented {
        Some(uri) => client
            .redirect_uris
            .iter()
            .any(|r| redirect_uri_matches(r, uri))
            .then(|| uri.to_string())
            .ok_or(AuthorizeError::Page("The redirect_uri is not registered for this client"))?,
        // RFC 6749 §3.1.2.3: optional only when exactly one is registered.
        None => match client.redirect_uris.as_slice() {
            [only] => only.clone(),
            [] => return Err(AuthorizeError::Page("This client has no redirect URI registered")),
            _ => return Err(AuthorizeError::Page("The redirect_uri parameter is required for this client")),
        },
    };
    if !client.grant_types.contains(&GrantType::AuthorizationCode) {
        return Err(AuthorizeError::Page("This client may not use the authorization code flow"));
    }

    // 2. Everything else is the client's to hear about.
    let state = params.one("state").ok().flatten().map(str::to_owned);
    let fail = |error, description| AuthorizeError::Redirect {
        redirect_uri: redirect_uri.clone(),
        error,
        description,
        state: state.clone(),
    };
    if params.any_repeated() {
        return Err(fail("invalid_request", "A request parameter is repeated"));
    }
    match params.one("response_type").ok().flatten() {
        Some("code") => {}
        None => return Err(fail("invalid_request", "The response_type parameter is missing")),
        Some(_) => return Err(fail("unsupported_response_type", "Only response_type=code is supported")),
    }
    let challenge = params.one("code_challenge").ok().flatten();
    let method = params.one("code_challenge_method").ok().flatten();
    let code_challenge = match (challenge, method) {
        (None, None) if client.require_pkce => {
            return Err(fail(
                "invalid_request",
                "PKCE is required: send code_challenge with code_challenge_method=S256",
            ));
        }
        (None, None) => None,
        (None, Some(_)) => return Err(fail("invalid_request", "code_challenge_method without code_challenge")),
        // OAuth 2.1 §4.1.2.1: `plain` is not allowed, nor a default to it.
        (Some(_), m) if m != Some("S256") => {
            return Err(fail("invalid_request", "code_challenge_method must be S256"));
        }
        (Some(c), _) if !is_pkce_value(c) || c.len() != 43 => {
            return Err(fail("invalid_request", "code_challenge is not a base64url SHA-256 digest"));
        }
        (Some(c), _) => Some(c.to_string()),
    };
    let scopes = match params.one("scope").ok().flatten() {
        None => client.scopes.clone(),
        Some(s) => {
            let set = ScopeSet::parse(s)
                .filter(|set| !set.is_empty())
                .ok_or_else(|| fail("invalid_scope", "The scope parameter is malformed"))?;
            if !set.is_subset(&client.scopes) {
                return Err(fail("invalid_scope", "A requested scope is not allowed for this client"));
            }
            set
        }
    };
    Ok(AuthorizationRequest {
        redirect_uri_sent: presented.is_some(),
        client,
        redirect_uri,
        scopes,
        state,
        code_challenge,
    })
}

/// `code-verifier = 43*128unreserved` (RFC 7636 §4.1); the S256 challenge
/// is drawn from the same alphabet.
pub fn is_pkce_value(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// `BASE64URL(SHA256(verifier)) == challenge`, compared in constant time.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let computed = B64.encode(Sha256::digest(verifier.as_bytes()));
    bool::from(computed.as_bytes().ct_eq(challenge.as_bytes()))
}

/// The redirect URI with `params` appended to its query (RFC 6749 §4.1.2:
/// keep the registered query, add ours).
pub fn redirect_with(redirect_uri: &str, params: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        query.append_pair(k, v);
    }
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    format!("{redirect_uri}{sep}{}", query.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_match_exactly_but_for_loopback_ports() {
        assert!(redirect_uri_matches("https://app.example/cb", "https://app.example/cb"));
        assert!(!redirect_uri_matches("https://app.example/cb", "https://app.example/cb/"));
        assert!(!redirect_uri_matches("https://app.example/cb", "https://app.example/cb?x=1"));
        assert!(!redirect_uri_matches("https://app.example/cb", "https://APP.example/cb"));
        assert!(!redirect_uri_matches("https://app.example:443/cb", "https://app.example:8443/cb"));
        assert!(redirect_uri_matches("http://127.0.0.1:3000/cb", "http://127.0.0.1:51234/cb"));
        assert!(redirect_uri_matches("http://[::1]/cb", "http://[::1]:8080/cb"));
        assert!(!redirect_uri_matches("http://127.0.0.1:3000/cb", "http://127.0.0.1:3000/other"));
        assert!(!redirect_uri_matches("http://127.0.0.1:3000/cb", "http://127.0.0.2:3000/cb"));
        assert!(!redirect_uri_matches("http://localhost:3000/cb", "http://localhost:4000/cb"));
        // SECURITY.md 50: any port, but one a socket can have, and the scheme as registered.
        assert!(redirect_uri_matches("http://127.0.0.1:3000/cb", "http://127.0.0.1:65535/cb"));
        assert!(redirect_uri_matches("http://127.0.0.1:3000/cb", "http://127.0.0.1/cb"));
        assert!(redirect_uri_matches("http://127.0.0.1:3000/cb", "http://127.0.0.1:1/cb"));
        for bad in [
            "http://127.0.0.1:0/cb",
            "http://127.0.0.1:99999/cb",
            "http://127.0.0.1:65536/cb",
            "http://127.0.0.1:/cb",
            "http://127.0.0.1:03000/cb",
            "HTTP://127.0.0.1:3000/cb",
            "Http://127.0.0.1:4000/cb",
            "http://127.0.0.1:+80/cb",
        ] {
            assert!(!redirect_uri_matches("http://127.0.0.1:3000/cb", bad), "{bad}");
        }
    }

    #[test]
    fn pkce_s256() {
        // RFC 7636 Appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches("x", challenge));
        assert!(is_pkce_value(verifier));
        assert!(!is_pkce_value("short"));
    }

    #[test]
    fn redirects_keep_the_registered_query() {
        assert_eq!(
            redirect_with("https://a.example/cb", &[("code", "x y"), ("state", "s")]),
            "https://a.example/cb?code=x+y&state=s"
        );
        assert_eq!(redirect_with("https://a.example/cb?k=1", &[("code", "c")]), "https://a.example/cb?k=1&code=c");
    }
}
