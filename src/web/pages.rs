//! HTML rendering of the login, consent and error pages with minijinja
//! (autoescaped: every value a client or user supplied is escaped). The one
//! stylesheet is inline and allowed by its hash in the CSP, so pages load
//! nothing from anywhere.

use base64::Engine as _;
use minijinja::{Environment, context};
use sha2::{Digest, Sha256};

const STYLE: &str = include_str!("templates/style.css");

pub struct Pages {
    env: Environment<'static>,
    style_hash: String,
}

impl Default for Pages {
    fn default() -> Self {
        Pages::new()
    }
}

impl Pages {
    pub fn new() -> Pages {
        let mut env = Environment::new();
        for (name, source) in [
            ("layout.html", include_str!("templates/layout.html")),
            ("login.html", include_str!("templates/login.html")),
            ("consent.html", include_str!("templates/consent.html")),
            ("error.html", include_str!("templates/error.html")),
        ] {
            // The templates are part of the binary; a syntax error in one is
            // caught by the tests, and rendering reports it as a page error.
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "bad template");
            }
        }
        let digest = Sha256::digest(STYLE.as_bytes());
        let style_hash = format!("sha256-{}", base64::engine::general_purpose::STANDARD.encode(digest));
        Pages { env, style_hash }
    }

    /// The CSP source that allows the inline stylesheet.
    pub fn style_hash(&self) -> &str {
        &self.style_hash
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> String {
        match self.env.get_template(name).and_then(|t| t.render(ctx)) {
            Ok(html) => html,
            Err(e) => {
                tracing::error!(template = name, error = %e, "rendering failed");
                "<!doctype html><title>Error</title><p>Something went wrong.</p>".to_string()
            }
        }
    }

    pub fn login(
        &self,
        client_name: &str,
        action: &str,
        csrf: &str,
        return_to: &str,
        error: Option<&str>,
        username: &str,
    ) -> String {
        self.render(
            "login.html",
            context! { title => "Sign in", style => STYLE, client_name, action, csrf, return_to, error, username },
        )
    }

    pub fn consent(
        &self,
        client_name: &str,
        username: &str,
        scopes: &[(String, String)],
        action: &str,
        csrf: &str,
        fields: &[(String, String)],
    ) -> String {
        let scopes: Vec<minijinja::Value> =
            scopes.iter().map(|(name, description)| context! { name, description }).collect();
        self.render(
            "consent.html",
            context! { title => "Allow access", style => STYLE, client_name, username, scopes, action, csrf, fields },
        )
    }

    pub fn error(&self, title: &str, message: &str) -> String {
        self.render("error.html", context! { title, style => STYLE, message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_the_style_hash_matches() {
        let p = Pages::new();
        let html = p.login("<b>Evil</b>", "/oauth/login", "c\"srf", "/oauth/authorize?a=1&b=2", Some("x"), "al<ice");
        assert!(html.contains("&lt;b&gt;Evil&lt;&#x2f;b&gt;") || html.contains("&lt;b&gt;Evil&lt;/b&gt;"), "{html}");
        assert!(!html.contains("<b>Evil"));
        assert!(html.contains("name=\"username\""));
        assert!(html.contains("<label for=\"password\">"));
        let inline = html.split("<style>").nth(1).and_then(|s| s.split("</style>").next()).unwrap();
        let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(inline.as_bytes()));
        assert_eq!(p.style_hash(), format!("sha256-{digest}"));

        let consent = p.consent(
            "Cal",
            "alice",
            &[("calendar.read".into(), "See your calendar".into())],
            "/oauth/authorize",
            "t",
            &[("state".into(), "\"><script>".into())],
        );
        assert!(consent.contains("See your calendar"));
        assert!(consent.contains("value=\"approve\"") && consent.contains("value=\"deny\""));
        assert!(!consent.contains("<script>"));
        assert!(p.error("T", "m").contains("m"));
    }
}
