//! Route matching: the routes of the request's host (the exact name's,
//! else the longest `*.` wildcard's that matches, else those without a
//! host), then the longest path prefix among them; a path an upstream could
//! read as another of those routes' (case folded, or its ambiguities read
//! another way) is refused rather than guessed at (`check_readings`).

use http::HeaderValue;

use super::Refusal;
use crate::config::{HostPattern, RouteConfig, ScopeRule, host_name};
use crate::http::path::{Ambiguities, case_folded, other_readings, under_prefix};
use crate::proxy::Destination;
use crate::telemetry::metrics::{Metrics, RouteMetrics};

/// A route with what it needs at request time, resolved once.
pub struct Route {
    pub config: RouteConfig,
    /// The route's upstream, as the access log names it.
    pub(super) upstream: String,
    pub(super) metrics: RouteMetrics,
    pub(super) destination: Destination,
    /// The `Allow` header of a 405 from this route.
    pub(super) allow: HeaderValue,
}

impl Route {
    pub fn new(config: RouteConfig, metrics: &Metrics) -> Route {
        let allow = match &config.scopes {
            Some(ScopeRule { methods, other: None }) => {
                let mut allowed: Vec<&str> = methods.keys().map(String::as_str).collect();
                if methods.contains_key("GET") && !methods.contains_key("HEAD") {
                    allowed.push("HEAD");
                }
                allowed.sort_unstable();
                allowed.join(", ")
            }
            _ => String::new(),
        };
        let upstream = match &config.upstream {
            crate::config::Upstream::Static => "static://".to_string(),
            crate::config::Upstream::Http { authority, http2: true, .. } => format!("h2c://{authority}"),
            crate::config::Upstream::Http { scheme, authority, .. } => format!("{scheme}://{authority}"),
        };
        Route {
            upstream,
            metrics: metrics.route(&config.name),
            destination: Destination::new(&config, metrics),
            allow: HeaderValue::try_from(allow).unwrap_or_else(|_| HeaderValue::from_static("")),
            config,
        }
    }
}

/// The routes by host: a request is routed among its host's routes only,
/// as nginx picks a `server` before a `location`, so a path no route of
/// that host has is not found, whatever the other hosts' routes are.
pub struct RouteTable {
    /// By name, lower case.
    exact: std::collections::HashMap<String, HostRoutes>,
    /// `*.` patterns, the longest suffix first.
    subdomains: Vec<(HostPattern, HostRoutes)>,
    any: HostRoutes,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> RouteTable {
        let mut exact: std::collections::HashMap<String, Vec<Route>> = Default::default();
        let mut subdomains: Vec<(HostPattern, Vec<Route>)> = Vec::new();
        let mut any = Vec::new();
        for route in routes {
            match route.config.host.clone() {
                Some(HostPattern::Exact(name)) => exact.entry(name).or_default().push(route),
                Some(pattern @ HostPattern::Subdomains(_)) => {
                    match subdomains.iter_mut().find(|(p, _)| *p == pattern) {
                        Some((_, group)) => group.push(route),
                        None => subdomains.push((pattern, vec![route])),
                    }
                }
                Some(HostPattern::Any) | None => any.push(route),
            }
        }
        let suffix_len = |p: &HostPattern| match p {
            HostPattern::Subdomains(suffix) => suffix.len(),
            _ => 0,
        };
        subdomains.sort_by_key(|(pattern, _)| std::cmp::Reverse(suffix_len(pattern)));
        RouteTable {
            exact: exact.into_iter().map(|(name, group)| (name, HostRoutes::new(group))).collect(),
            subdomains: subdomains.into_iter().map(|(pattern, group)| (pattern, HostRoutes::new(group))).collect(),
            any: HostRoutes::new(any),
        }
    }

    /// The routes a request for `host` (its `Host`, any port and final dot
    /// ignored, case too) is routed among.
    pub fn for_host(&self, host: Option<&[u8]>) -> &HostRoutes {
        if self.exact.is_empty() && self.subdomains.is_empty() {
            return &self.any;
        }
        let Some(host) = host else { return &self.any };
        let name = String::from_utf8_lossy(host_name(host)).to_ascii_lowercase();
        if let Some(group) = self.exact.get(&name) {
            return group;
        }
        self.subdomains.iter().find(|(pattern, _)| pattern.matches(host)).map_or(&self.any, |(_, group)| group)
    }
}

/// The routes of one host, longest prefix first, so the first match is the
/// best.
pub struct HostRoutes {
    routes: Vec<Route>,
    /// Each route's prefix as an upstream blind to case reads it
    /// (`path::case_folded`), in the same order.
    folded_prefixes: Vec<String>,
    /// Whether a prefix has anything that case-folding changes: then even
    /// a plain lower-case path may read as another route's.
    prefix_folds: bool,
}

impl HostRoutes {
    fn new(mut routes: Vec<Route>) -> HostRoutes {
        routes.sort_by_key(|r| std::cmp::Reverse(r.config.path_prefix.len()));
        let folded_prefixes: Vec<String> = routes.iter().map(|r| case_folded(&r.config.path_prefix)).collect();
        let prefix_folds = routes.iter().any(|r| may_fold(&r.config.path_prefix));
        HostRoutes { routes, folded_prefixes, prefix_folds }
    }

    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| under_prefix(path, &r.config.path_prefix))
    }

    /// The route an upstream that ignores letter case (Express, ASP.NET)
    /// would take `path` for, the longest folded prefix first (folding can
    /// change lengths, so not necessarily the routes' own order).
    fn find_ignoring_case(&self, path: &str) -> Option<&Route> {
        let folded = case_folded(path);
        self.routes
            .iter()
            .zip(&self.folded_prefixes)
            .filter(|(_, prefix)| under_prefix(&folded, prefix))
            .max_by_key(|(_, prefix)| prefix.len())
            .map(|(route, _)| route)
    }

    /// Refuses a `path` (normalised, with the `ambiguities` it holds) that
    /// `route` was found for, when an upstream could act on it as a path
    /// outside that route: what the gateway authorises must be what every
    /// upstream acts on, and where common upstreams would read a path
    /// differently, the request is refused (README, "Security model").
    pub fn check_readings(&self, route: &Route, path: &str, ambiguities: Ambiguities) -> Result<(), Refusal> {
        let cfg = &route.config;
        if ambiguities.encoded_slash && !cfg.allow_encoded_slashes {
            return Err(Refusal::BadRequest(
                "The request path has an encoded slash (%2F), which upstreams read in different ways",
            ));
        }
        if ambiguities.double_encoding && !cfg.allow_encoded_slashes {
            return Err(Refusal::BadRequest(
                "The request path is percent-encoded twice (%25), which upstreams read in different ways",
            ));
        }
        if ambiguities.path_parameter && !cfg.allow_path_parameters {
            return Err(Refusal::BadRequest(
                "The request path has a ';' parameter, which servlet containers cut off before they route",
            ));
        }
        let elsewhere = Refusal::BadRequest("The request path may mean another route's path to the upstream");
        // `path` itself is `route`'s: only its case-blind reading is left.
        if (self.prefix_folds || may_fold(path)) && !same_route(self.find_ignoring_case(path), route) {
            return Err(elsewhere);
        }
        if ambiguities.any() {
            for reading in other_readings(path, ambiguities) {
                match reading {
                    Ok(other) if self.reads_as(route, &other) => {}
                    _ => return Err(elsewhere),
                }
            }
        }
        Ok(())
    }

    /// Whether `path` lies in `route` with letter case ignored as well.
    fn reads_as(&self, route: &Route, path: &str) -> bool {
        same_route(self.find(path), route)
            && (!(self.prefix_folds || may_fold(path)) || same_route(self.find_ignoring_case(path), route))
    }
}

fn same_route(found: Option<&Route>, route: &Route) -> bool {
    found.is_some_and(|r| std::ptr::eq(r, route))
}

/// Whether case-folding may change `s`: an upper-case ASCII letter (the hex
/// digits of escapes among them), or anything beyond ASCII. Most paths
/// have neither, and are spared the folding.
fn may_fold(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_uppercase() || !b.is_ascii())
}
