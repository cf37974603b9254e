//! The network grants of a plugin, as configured: `allow_tcp = ["db.internal:5432"]` and
//! `allow_http = ["https://api.example.com/v1/*"]`. Nothing is allowed without one.

use std::fmt;

/// One `allow_tcp` entry: a host name or IP address and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpGrant {
    /// Lower-case host name, or an IP address as written (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl TcpGrant {
    /// Parse `host:port` or `[v6]:port`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (host, port) = split_host_port(s)
            .ok_or_else(|| format!("{s:?} is not host:port (IPv6 as [addr]:port)"))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s:?}: the port must be a number from 1 to 65535"))?;
        Ok(Self {
            host: host_name(host, s)?,
            port,
        })
    }
}

impl fmt::Display for TcpGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One `allow_http` entry: a scheme, a host, a port and a path prefix. A request matches
/// when all four do; the prefix ends at a `/` or with `*` (`/v1/*` matches `/v1/x` but
/// not `/v10`; `/v1*` matches both), and without `*` the path must be exactly it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGrant {
    /// `https://` rather than `http://`.
    pub https: bool,
    /// Lower-case host name, or an IP address.
    pub host: String,
    /// The port (the scheme's default when none is written).
    pub port: u16,
    /// The path, or the path prefix without its `*`.
    pub path: String,
    /// `path` is a prefix (it ended with `*`).
    pub prefix: bool,
}

impl HttpGrant {
    /// Parse `http[s]://host[:port]/path[*]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{s:?}: {why} (like \"https://api.example.com/v1/*\")");
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("must start with http:// or https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/*"),
        };
        if authority.contains('@') || path.contains(['?', '#']) {
            return Err(bad("no user, query or fragment"));
        }
        let default = if https { 443 } else { 80 };
        let (host, port) = match split_host_port(authority) {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
            ),
            None => (
                authority.trim_start_matches('[').trim_end_matches(']'),
                default,
            ),
        };
        if path.contains("..") || path.strip_suffix('*').unwrap_or(path).contains('*') {
            return Err(bad("`*` only at the end of the path, and no `..`"));
        }
        let (path, prefix) = match path.strip_suffix('*') {
            Some(p) => (p.to_string(), true),
            None => (path.to_string(), false),
        };
        Ok(Self {
            https,
            host: host_name(host, s)?,
            port,
            path,
            prefix,
        })
    }

    /// Whether a request to `scheme://host:port/path` is covered (`path` as sent, without
    /// its query). The path is judged as a server would read it: percent-decoded, with no
    /// `.` or `..` segment (also before a `;`), no backslash and no encoded slash, since
    /// servers that merge those would serve a path outside the prefix.
    pub fn covers(&self, https: bool, host: &str, port: u16, path: &str) -> bool {
        let Some(path) = plain_path(path) else {
            return false;
        };
        self.https == https
            && self
                .host
                .eq_ignore_ascii_case(host.trim_start_matches('[').trim_end_matches(']'))
            && self.port == port
            && if self.prefix {
                path.starts_with(&self.path)
            } else {
                path == self.path
            }
    }
}

/// `path` percent-decoded, if no server could read it as another path: no invalid escape
/// or non-UTF-8, no encoded `/` or `\`, no backslash, no `.` or `..` segment.
fn plain_path(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            let b = u8::from_str_radix(hex, 16).ok()?;
            if b == b'/' || b == b'\\' {
                return None;
            }
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(out).ok()?;
    let dotted = decoded.split('/').any(|seg| {
        let seg = seg.split(';').next().unwrap_or(seg);
        seg == "." || seg == ".."
    });
    (!dotted && !decoded.contains('\\')).then_some(decoded)
}

impl fmt::Display for HttpGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let star = if self.prefix { "*" } else { "" };
        write!(f, "{scheme}://{host}:{}{}{star}", self.port, self.path)
    }
}

/// `host:port` or `[v6]:port`, split; `None` without a port.
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return Some((host, after.strip_prefix(':')?));
    }
    let (host, port) = s.rsplit_once(':')?;
    (!host.contains(':')).then_some((host, port))
}

/// A host as granted: an IP address, or a DNS name in lower case.
fn host_name(host: &str, whole: &str) -> Result<String, String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(host.to_string());
    }
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
        });
    if !ok {
        return Err(format!("{whole:?}: {host:?} is no host name or IP address"));
    }
    Ok(host.to_ascii_lowercase())
}

/// A plugin's network grants, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// `allow_tcp`.
    pub tcp: Vec<TcpGrant>,
    /// `allow_http`.
    pub http: Vec<HttpGrant>,
}

impl Grants {
    /// Parse both lists; the error names the entry.
    pub fn parse(tcp: &[String], http: &[String]) -> Result<Self, (&'static str, String)> {
        Ok(Self {
            tcp: tcp
                .iter()
                .map(|s| TcpGrant::parse(s))
                .collect::<Result<_, _>>()
                .map_err(|e| ("allow_tcp", e))?,
            http: http
                .iter()
                .map(|s| HttpGrant::parse(s))
                .collect::<Result<_, _>>()
                .map_err(|e| ("allow_http", e))?,
        })
    }

    /// Whether the plugin may use the network at all.
    pub fn any(&self) -> bool {
        !self.tcp.is_empty() || !self.http.is_empty()
    }

    /// Whether `name` is a host some grant names (what the plugin may look up).
    pub fn names(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        self.tcp.iter().any(|g| g.host.eq_ignore_ascii_case(name))
            || self.http.iter().any(|g| g.host.eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_grants_parse_names_addresses_and_ports_and_refuse_the_rest() {
        let g = TcpGrant::parse("DB.internal:5432").expect("name");
        assert_eq!((g.host.as_str(), g.port), ("db.internal", 5432));
        assert_eq!(TcpGrant::parse("[::1]:80").expect("v6").host, "::1");
        assert_eq!(
            TcpGrant::parse("10.0.0.5:1883").expect("v4").to_string(),
            "10.0.0.5:1883"
        );
        for bad in [
            "db", "db:0", "db:70000", ":80", "a b:1", "::1:80", "db:x", "-a:1",
        ] {
            assert!(TcpGrant::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_http_grant_covers_its_scheme_host_port_and_path_prefix_only() {
        let g = HttpGrant::parse("https://api.example.com/v1/*").expect("grant");
        assert!(g.covers(true, "API.example.com", 443, "/v1/items"));
        assert!(
            !g.covers(false, "api.example.com", 443, "/v1/items"),
            "scheme"
        );
        assert!(
            !g.covers(true, "api.example.com", 8443, "/v1/items"),
            "port"
        );
        assert!(
            !g.covers(true, "evil.example.com", 443, "/v1/items"),
            "host"
        );
        assert!(
            !g.covers(true, "api.example.com", 443, "/v10"),
            "prefix ends at /"
        );
        assert!(
            !g.covers(true, "api.example.com", 443, "/v1/../admin"),
            "dot segments"
        );
        for sneaky in [
            "/v1/%2e%2e/admin",
            "/v1/.%2E/admin",
            "/v1/..\\admin",
            "/v1/..;/admin",
            "/v1/%2fadmin",
            "/v1/%5c..",
            "/v1/%zz",
            "/v1/%c3",
        ] {
            assert!(!g.covers(true, "api.example.com", 443, sneaky), "{sneaky}");
        }
        assert!(
            g.covers(true, "api.example.com", 443, "/v1/caf%C3%A9"),
            "an escaped letter is that letter"
        );
        let exact = HttpGrant::parse("http://10.0.0.5:8080/metrics").expect("exact");
        assert!(exact.covers(false, "10.0.0.5", 8080, "/metrics"));
        assert!(!exact.covers(false, "10.0.0.5", 8080, "/metrics/x"));
        let host = HttpGrant::parse("http://localhost:9000").expect("whole host");
        assert!(host.covers(false, "localhost", 9000, "/anything"));
        for bad in [
            "ftp://x/",
            "https://user@x/",
            "https://x/a*b",
            "https://x/a?q=1",
            "https://x:0/",
            "https:///a",
            "https://x/../a",
            "https://x/\u{e9}*x",
        ] {
            assert!(HttpGrant::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_granted_names_may_be_looked_up() {
        let g = Grants::parse(
            &["db.internal:5432".into()],
            &["https://api.example.com/*".into()],
        )
        .expect("grants");
        assert!(g.names("db.internal") && g.names("API.example.com.") && !g.names("evil.com"));
        assert_eq!(
            Grants::parse(&["nope".into()], &[]).map_err(|e| e.0),
            Err("allow_tcp")
        );
    }
}
