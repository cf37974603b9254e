//! Who may call the HTTP endpoint, and from where.
//!
//! - **Bearer tokens.** `[[api.tokens]]` holds each token's SHA-256 digest, never the token.
//!   Each token has roles: `read` (the query API, tables, status, tap), `metrics`
//!   (`/metrics`) and `committed` (the processor's `/api/committed`). A token is 256 random bits, so a plain digest is enough: there is nothing
//!   to guess that a slow hash would protect. Digests are compared in constant time.
//! - **No token** gets the roles in `api.anonymous`: none unless the operator says so.
//! - **Browsers.** A web page in a browser on the host can send requests to loopback. The
//!   `Host` must be an IP address, `localhost` or a name in `api.hosts` (which stops DNS
//!   rebinding), an `Origin` must be this endpoint's own, and a request that is not a read
//!   must carry `Content-Type: application/json` (no HTML form or `text/plain` POST can).
//! - `/health` and `/ready` stay open: they tell nothing but up or down.
//!
//! Every refusal is counted by its reason (`ApiMetrics::refused`).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ApiMetrics;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The query API, tables, status and status page data, and tap.
    Read,
    /// `/metrics`.
    Metrics,
    /// The processor's `/api/committed`: where the lake stands for an agent's streams
    /// (asked by agents behind a Kafka sink; sequences and checkpoints, no rows).
    Committed,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Metrics => "metrics",
            Role::Committed => "committed",
        }
    }
}

/// One `[[api.tokens]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it, for logs and refusals.
    pub name: String,
    /// The hex SHA-256 of the token: the config never holds the token itself. Make a token
    /// and its entry with `sluice-agent token --name NAME --role read --role metrics` (or
    /// `sluice-processor token`).
    pub sha256: TokenDigest,
    /// What it may call: any of `read` (the agent's `/tap/STREAM`, the processor's `/api/*`
    /// but `/api/committed`), `metrics` (`/metrics`) and `committed` (the processor's
    /// `/api/committed`, which agents behind a Kafka sink ask: every agent's sequence and
    /// checkpoint per table, no rows).
    pub roles: Vec<Role>,
}

/// The SHA-256 digest of a token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of `token`.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for TokenDigest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| {
            serde::de::Error::custom(
                "sha256 must be the 64 hex digits of a token's SHA-256 (from `token`), \
                 not the token itself",
            )
        })?;
        Ok(Self(bytes))
    }
}

/// Why a request was refused; the reason is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer`, and anonymous callers lack the role.
    NoToken,
    /// A bearer token matching no configured digest.
    UnknownToken,
    /// A known token without the role the route needs.
    MissingRole,
    /// A `Host` that is not an IP address, `localhost` or a name in `api.hosts`.
    Host,
    /// An `Origin` (or `Sec-Fetch-Site`) from another site.
    CrossOrigin,
    /// A state-changing request without `Content-Type: application/json`.
    NotJson,
}

impl Refusal {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NoToken => "no_token",
            Refusal::UnknownToken => "unknown_token",
            Refusal::MissingRole => "missing_role",
            Refusal::Host => "host",
            Refusal::CrossOrigin => "cross_origin",
            Refusal::NotJson => "not_json",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Refusal::NoToken | Refusal::UnknownToken => StatusCode::UNAUTHORIZED,
            Refusal::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::FORBIDDEN,
        }
    }
}

/// The endpoint's rules, from `[api]`.
pub(crate) struct Guard {
    tokens: Vec<TokenConfig>,
    anonymous: Vec<Role>,
    hosts: Vec<String>,
    metrics: Arc<dyn ApiMetrics>,
}

impl Guard {
    pub(crate) fn new(api: &crate::ApiConfig, metrics: Arc<dyn ApiMetrics>) -> Self {
        if api.tokens.is_empty() && api.anonymous.is_empty() {
            tracing::warn!(
                "[api] has no tokens: only /health and /ready answer \
                 (make one with the `token` command)"
            );
        }
        if api.anonymous.contains(&Role::Read) {
            tracing::warn!(
                "api.anonymous grants `read`: anyone who reaches {} can query the data",
                api.listen
            );
        }
        Self {
            tokens: api.tokens.clone(),
            anonymous: api.anonymous.clone(),
            hosts: api.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            metrics,
        }
    }

    /// Whether a request with these `headers` may use a route needing `role` (`None`: a
    /// public page, which still gets the browser checks).
    fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
        role: Option<Role>,
    ) -> Result<(), (Refusal, String)> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !self.host_allowed(host) {
            return Err((
                Refusal::Host,
                format!(
                    "Host {host:?} is not an address of this endpoint: use its IP address, \
                     localhost, or a name listed in api.hosts"
                ),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let same = origin
                .to_str()
                .ok()
                .and_then(|o| {
                    o.strip_prefix("http://")
                        .or_else(|| o.strip_prefix("https://"))
                })
                .is_some_and(|authority| authority.eq_ignore_ascii_case(host));
            if !same {
                return Err((
                    Refusal::CrossOrigin,
                    format!("requests from origin {origin:?} are refused"),
                ));
            }
        }
        if headers
            .get("sec-fetch-site")
            .is_some_and(|s| s.as_bytes() == b"cross-site" || s.as_bytes() == b"same-site")
        {
            return Err((
                Refusal::CrossOrigin,
                "requests from another site are refused".into(),
            ));
        }
        if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            let json = headers
                .get(header::CONTENT_TYPE)
                .and_then(|c| c.to_str().ok())
                .and_then(|c| c.split(';').next())
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("application/json"));
            if !json {
                return Err((
                    Refusal::NotJson,
                    format!("{method} needs Content-Type: application/json"),
                ));
            }
        }
        let Some(role) = role else { return Ok(()) };
        match bearer(headers) {
            None if self.anonymous.contains(&role) => Ok(()),
            None => Err((
                Refusal::NoToken,
                format!("this needs a bearer token with role {}", role.name()),
            )),
            Some(token) => {
                let digest = TokenDigest::of(token);
                // Every digest is compared, so the time taken tells nothing of which matched.
                let mut found = None;
                for t in &self.tokens {
                    if bool::from(t.sha256.0.ct_eq(&digest.0)) {
                        found = Some(t);
                    }
                }
                match found {
                    None => Err((Refusal::UnknownToken, "unknown token".into())),
                    Some(t) if t.roles.contains(&role) => Ok(()),
                    Some(t) => Err((
                        Refusal::MissingRole,
                        format!("token {:?} lacks role {}", t.name, role.name()),
                    )),
                }
            }
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = if let Some(rest) = host.strip_prefix('[') {
            // An IPv6 literal: "[::1]:7401".
            return rest
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        } else {
            match host.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => host,
            }
        };
        !name.is_empty()
            && (name.parse::<std::net::Ipv4Addr>().is_ok()
                || name.eq_ignore_ascii_case("localhost")
                || self.hosts.iter().any(|h| name.eq_ignore_ascii_case(h)))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The middleware: refuses what `guard` does not allow for `role`.
pub(crate) async fn enforce(
    State((guard, role)): State<(Arc<Guard>, Option<Role>)>,
    request: Request,
    next: Next,
) -> Response {
    match guard.check(request.method(), request.headers(), role) {
        Ok(()) => next.run(request).await,
        Err((refusal, message)) => {
            guard.metrics.refused(refusal.reason());
            tracing::debug!(reason = refusal.reason(), path = %request.uri().path(), "request refused: {message}");
            let mut response = (
                refusal.status(),
                axum::Json(serde_json::json!({ "error": message, "reason": refusal.reason() })),
            )
                .into_response();
            if refusal.status() == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"sluice\""),
                );
            }
            response
        }
    }
}

/// `token`: make a bearer token for `[api]`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// Who will hold it (shown in refusals and logs).
    #[arg(long)]
    pub name: String,
    /// What it may do (repeat for several).
    #[arg(long = "role", value_enum, required = true)]
    pub roles: Vec<Role>,
}

/// A new random token: `sluice_` and 64 hex digits.
pub fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(format!("sluice_{}", hex::encode(bytes)))
}

/// Make a token and print it with the `[[api.tokens]]` entry that admits it.
pub fn print_new_token(args: &TokenArgs) -> std::io::Result<()> {
    let token = new_token()?;
    let digest = hex::encode(TokenDigest::of(&token).0);
    let roles = args
        .roles
        .iter()
        .map(|r| format!("{:?}", r.name()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "token for {:?} (shown once; the config keeps only its digest):\n\n    {token}\n",
        args.name
    );
    let _ = writeln!(
        out,
        "add to the [api] section of the config:\n\n[[api.tokens]]\nname = {:?}\nsha256 = \"{digest}\"\nroles = [{roles}]",
        args.name
    );
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    struct NoMetrics;
    impl ApiMetrics for NoMetrics {
        fn render(&self) -> String {
            String::new()
        }
    }

    fn guard(anonymous: Vec<Role>) -> Guard {
        let anonymous: Vec<&str> = anonymous.into_iter().map(Role::name).collect();
        let api: crate::ApiConfig = toml::from_str(&format!(
            r#"
            listen = "127.0.0.1:0"
            hosts = ["sluice.internal"]
            anonymous = {anonymous:?}
            [[tokens]]
            name = "grafana"
            sha256 = "{}"
            roles = ["metrics"]
            [[tokens]]
            name = "ops"
            sha256 = "{}"
            roles = ["read", "metrics"]
            "#,
            hex::encode(TokenDigest::of("metrics-token").0),
            hex::encode(TokenDigest::of("ops-token").0),
        ))
        .expect("config");
        Guard::new(&api, Arc::new(NoMetrics))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7401"));
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    fn refusal(
        g: &Guard,
        method: Method,
        h: &[(&'static str, &str)],
        role: Option<Role>,
    ) -> Option<Refusal> {
        g.check(&method, &headers(h), role).err().map(|(r, _)| r)
    }

    #[test]
    fn tokens_open_only_the_routes_of_their_roles() {
        let g = guard(vec![]);
        let ops = [("authorization", "Bearer ops-token")];
        let grafana = [("authorization", "Bearer metrics-token")];
        assert_eq!(refusal(&g, Method::GET, &ops, Some(Role::Read)), None);
        assert_eq!(
            refusal(&g, Method::GET, &grafana, Some(Role::Metrics)),
            None
        );
        assert_eq!(
            refusal(&g, Method::GET, &grafana, Some(Role::Read)),
            Some(Refusal::MissingRole)
        );
        assert_eq!(
            refusal(&g, Method::GET, &[], Some(Role::Metrics)),
            Some(Refusal::NoToken)
        );
        assert_eq!(
            refusal(
                &g,
                Method::GET,
                &[("authorization", "Bearer ops-tokenX")],
                Some(Role::Read)
            ),
            Some(Refusal::UnknownToken)
        );
        // The digest itself is not a token.
        let digest = hex::encode(TokenDigest::of("ops-token").0);
        assert_eq!(
            refusal(
                &g,
                Method::GET,
                &[("authorization", &format!("Bearer {digest}"))],
                Some(Role::Read)
            ),
            Some(Refusal::UnknownToken)
        );
        let anon = guard(vec![Role::Metrics]);
        assert_eq!(refusal(&anon, Method::GET, &[], Some(Role::Metrics)), None);
        assert_eq!(
            refusal(&anon, Method::GET, &[], Some(Role::Read)),
            Some(Refusal::NoToken)
        );
    }

    #[test]
    fn browsers_on_other_sites_and_rebound_names_are_refused() {
        let g = guard(vec![]);
        let ops = ("authorization", "Bearer ops-token");
        let json = ("content-type", "application/json; charset=utf-8");
        for (method, headers, want) in [
            // A page elsewhere posting plain text, as a cross-origin "simple request" may.
            (
                Method::POST,
                vec![
                    ops,
                    ("origin", "http://evil.example"),
                    ("content-type", "text/plain"),
                ],
                Some(Refusal::CrossOrigin),
            ),
            (
                Method::POST,
                vec![ops, ("content-type", "text/plain")],
                Some(Refusal::NotJson),
            ),
            (
                Method::POST,
                vec![ops, ("content-type", "application/x-www-form-urlencoded")],
                Some(Refusal::NotJson),
            ),
            (
                Method::POST,
                vec![ops, json, ("origin", "http://127.0.0.1:7401")],
                None,
            ),
            (
                Method::GET,
                vec![ops, ("sec-fetch-site", "cross-site")],
                Some(Refusal::CrossOrigin),
            ),
        ] {
            assert_eq!(
                refusal(&g, method, &headers, Some(Role::Read)),
                want,
                "{headers:?}"
            );
        }
        // DNS rebinding: a name the attacker controls, pointed at 127.0.0.1.
        let mut h = headers(&[ops]);
        h.insert(
            header::HOST,
            HeaderValue::from_static("rebind.evil.example:7401"),
        );
        assert_eq!(
            g.check(&Method::GET, &h, Some(Role::Read))
                .err()
                .map(|e| e.0),
            Some(Refusal::Host)
        );
        for ok in [
            "localhost:7401",
            "SLUICE.internal:7401",
            "[::1]:7401",
            "10.0.0.5",
        ] {
            h.insert(header::HOST, HeaderValue::from_static(ok));
            assert!(g.check(&Method::GET, &h, Some(Role::Read)).is_ok(), "{ok}");
        }
        h.remove(header::HOST);
        assert_eq!(
            g.check(&Method::GET, &h, Some(Role::Read))
                .err()
                .map(|e| e.0),
            Some(Refusal::Host)
        );
    }

    #[test]
    fn a_token_in_the_config_instead_of_its_digest_is_refused_at_load() {
        let err = toml::from_str::<crate::ApiConfig>(
            r#"
            listen = "127.0.0.1:0"
            [[tokens]]
            name = "ops"
            sha256 = "sluice_0123"
            roles = ["read"]
            "#,
        )
        .expect_err("not a digest");
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }

    #[test]
    fn new_tokens_are_random_and_admitted_by_their_digest() {
        let (a, b) = (new_token().expect("token"), new_token().expect("token"));
        assert_ne!(a, b);
        assert_eq!(a.len(), "sluice_".len() + 64);
        assert_ne!(TokenDigest::of(&a), TokenDigest::of(&b));
        // A config entry with the digest `token` prints admits the token, and only it.
        let api: crate::ApiConfig = toml::from_str(&format!(
            "listen = \"127.0.0.1:0\"\n[[tokens]]\nname = \"n\"\nsha256 = \"{}\"\nroles = [\"read\"]",
            hex::encode(TokenDigest::of(&a).0)
        ))
        .expect("config");
        let g = Guard::new(&api, Arc::new(NoMetrics));
        let with = |t: &str| {
            let bearer = format!("Bearer {t}");
            refusal(
                &g,
                Method::GET,
                &[("authorization", &bearer)],
                Some(Role::Read),
            )
        };
        assert_eq!(with(&a), None);
        assert_eq!(with(&b), Some(Refusal::UnknownToken));
    }
}
