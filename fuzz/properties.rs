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
//! normal already.

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
