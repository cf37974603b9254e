//! `wasi:http` for plugins granted `allow_http`: each request is checked against the
//! grants (scheme, host, port, path prefix) before anything is sent, then sent by the host:
//! the name resolved as for TCP grants, TLS with the system's roots or `[network] ca`,
//! HTTP/1.1. Redirects are not followed (the plugin sees them and asks again, checked
//! again). Bytes are counted both ways. The guest's waits for the response and its body
//! are bounded by `network_timeout` in `io.rs`.

use std::future::{Future, poll_fn};
use std::path::Path;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Poll, ready};

use http::uri::Scheme;
use http_body_util::BodyExt;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::NetShared;
use crate::wasm::instance::State;

/// The TLS client settings of plugins' HTTPS requests.
#[derive(Clone)]
pub struct Tls(Arc<rustls::ClientConfig>);

impl Tls {
    /// Trust the certificates in the PEM file `ca`, and the system's roots when
    /// `system_roots`.
    pub fn new(ca: Option<&Path>, system_roots: bool) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut roots = rustls::RootCertStore::empty();
        if system_roots {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!("skipping a system root certificate: {e}");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, "system root certificates for plugins' HTTPS");
        }
        if let Some(ca) = ca {
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("network.ca: cannot read {}", ca.display()))?;
            anyhow::ensure!(
                !certs.is_empty(),
                "network.ca: {} holds no certificate",
                ca.display()
            );
            for c in certs {
                roots
                    .add(c)
                    .with_context(|| format!("network.ca: a certificate of {}", ca.display()))?;
            }
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self(Arc::new(config)))
    }
}

/// The `wasi:http` state of a store.
pub struct Http {
    ctx: WasiHttpCtx,
    hooks: Hooks,
}

impl Http {
    /// A store's `wasi:http`: every request refused without `shared` grants.
    pub fn new(shared: Option<Arc<NetShared>>) -> Self {
        Self {
            ctx: WasiHttpCtx::new(),
            hooks: Hooks { shared },
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.http.hooks,
            table: &mut self.table,
            ctx: &mut self.http.ctx,
        }
    }
}

struct Hooks {
    shared: Option<Arc<NetShared>>,
}

type Sent = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        let Some(shared) = self.shared.clone() else {
            return Box::new(async { Err(Error::HttpRequestDenied) });
        };
        let uri = request.uri();
        let https = uri.scheme() == Some(&Scheme::HTTPS);
        // The Host header is the authority as the plugin wrote it: no user part may ride
        // in front of the checked host.
        let userinfo = uri.authority().is_some_and(|a| a.as_str().contains('@'));
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path().to_string();
        if userinfo
            || !shared
                .grants
                .http
                .iter()
                .any(|g| g.covers(https, &host, port, &path))
        {
            let scheme = if https { "https" } else { "http" };
            shared
                .meter
                .refused("http", &format!("{scheme}://{host}:{port}{path}"));
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        Box::new(send(shared, request, options, https, host, port))
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Send a granted request: connect (to the host's addresses now), TLS, HTTP/1.1.
async fn send(
    shared: Arc<NetShared>,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    https: bool,
    host: String,
    port: u16,
) -> Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
> {
    let limit = shared.timeout;
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .map_or(limit, |t| t.min(limit));
    let addrs = shared
        .network
        .resolver
        .resolve(&host)
        .await
        .map_err(|_| Error::DestinationNotFound)?;
    let mut stream = None;
    let mut timed_out = false;
    for ip in addrs {
        match tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect((ip, port)))
            .await
        {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => tracing::debug!(%ip, port, "HTTP connect failed: {e}"),
            Err(_) => timed_out = true,
        }
    }
    let stream = match stream {
        Some(s) => s,
        None if timed_out => {
            shared.meter.timed_out();
            return Err(Error::ConnectionTimeout);
        }
        None => return Err(Error::ConnectionRefused),
    };
    let stream: Box<dyn Stream> = if https {
        let name = ServerName::try_from(host.clone()).map_err(|_| Error::HttpRequestUriInvalid)?;
        let tls = tokio_rustls::TlsConnector::from(shared.network.tls.0.clone());
        match tokio::time::timeout(limit, tls.connect(name, stream)).await {
            Ok(Ok(s)) => Box::new(s),
            Ok(Err(e)) => {
                tracing::warn!(%host, port, "TLS handshake failed: {e}");
                return Err(Error::TlsCertificateError);
            }
            Err(_) => return Err(Error::ConnectionTimeout),
        }
    } else {
        Box::new(stream)
    };
    let (mut sender, conn) = tokio::time::timeout(
        limit,
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    // Origin form on the wire: the scheme and authority went into the connection.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let out = shared.clone();
    let request = request.map(|body| {
        body.map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                out.meter.bytes_out(d.len());
            }
            f
        })
        .boxed_unsync()
    });
    let mut response = pin!(sender.send_request(request));
    let mut conn = Some(conn);
    // The connection must be driven while the response is awaited.
    let response = poll_fn(|cx| match response.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(r.map_err(Error::from)),
        Poll::Pending => {
            let Some(c) = conn.as_mut() else {
                return Poll::Pending;
            };
            let done = ready!(Pin::new(c).poll(cx));
            conn = None;
            match done {
                Ok(()) => response.as_mut().poll(cx).map_err(Error::from),
                Err(e) => Poll::Ready(Err(Error::from(e))),
            }
        }
    })
    .await?;
    let counted = shared.clone();
    let response = response.map(|incoming| {
        incoming
            .map_err(Error::from)
            .map_frame(move |f| {
                if let Some(d) = f.data_ref() {
                    counted.meter.bytes_in(d.len());
                }
                f
            })
            .boxed_unsync()
    });
    let io: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async move {
        match conn {
            Some(c) => c.await.map_err(Error::from),
            None => Ok(()),
        }
    });
    Ok((response, io))
}
