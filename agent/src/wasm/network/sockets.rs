//! `wasi:sockets` held to a plugin's grants. wasmtime-wasi checks every socket address a
//! guest uses against [`addr_check`]; the agent replaces four functions of its own:
//! `resolve-addresses` (only names a grant mentions, `[network] hosts` first),
//! `create-tcp-socket` and `create-udp-socket` (no socket, and so no file descriptor, for a
//! plugin without a TCP grant, never a UDP one, and at most [`MAX_SOCKETS`] open at once;
//! each refusal counted), and `tcp-socket.finish-connect` (to know which streams are TCP
//! connections, whose bytes are counted).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use wasmtime::StoreContextMut;
use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::p2::SocketError;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    self, HostResolveAddressStream, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{
    self, ErrorCode, IpAddress, IpAddressFamily, Network,
};
use wasmtime_wasi::p2::bindings::sockets::tcp::TcpSocket;
use wasmtime_wasi::p2::bindings::sockets::tcp_create_socket;
use wasmtime_wasi::p2::bindings::sockets::udp::UdpSocket;
use wasmtime_wasi::p2::bindings::sync::sockets::tcp::HostTcpSocket;
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable};
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsCtxView, WasiSocketsView};

use super::{MAX_SOCKETS, NetShared};
use crate::wasm::instance::State;

/// The check wasmtime-wasi applies to every address a guest binds, connects or sends to.
/// Only TCP connects to a granted name's current address and port pass (and the wildcard
/// bind a connect makes first); UDP, listening and everything else is refused.
pub(crate) fn addr_check(
    shared: Arc<NetShared>,
) -> impl Fn(SocketAddr, SocketAddrUse) -> Pin<Box<dyn Future<Output = bool> + Send + Sync>>
+ Send
+ Sync
+ 'static {
    move |addr, usage| {
        let shared = shared.clone();
        Box::pin(async move {
            let (ok, kind) = match usage {
                // The implicit bind of a connect: any local address, a port of the system's.
                // Any other bind is for listening (or picking a source address): refused.
                SocketAddrUse::TcpBind => {
                    (addr.ip().is_unspecified() && addr.port() == 0, "listen")
                }
                SocketAddrUse::TcpConnect => (connect_allowed(&shared, addr).await, "tcp"),
                SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => (false, "listen"),
                _ => (false, "udp"),
            };
            if !ok {
                shared.meter.refused(kind, &addr.to_string());
            }
            ok
        })
    }
}

/// Whether some `allow_tcp` grant of `addr`'s port names a host that resolves to its
/// address now.
async fn connect_allowed(shared: &NetShared, addr: SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    for g in shared.grants.tcp.iter().filter(|g| g.port == addr.port()) {
        match shared.network.resolver.resolve(&g.host).await {
            Ok(ips) if ips.contains(&ip) => return true,
            Ok(_) => {}
            Err(e) => tracing::debug!(host = %g.host, "cannot resolve a granted host: {e}"),
        }
    }
    false
}

/// Replace `resolve-addresses` and `tcp-socket.finish-connect` in a linker that has
/// wasmtime-wasi's sockets already.
pub(crate) fn link_sockets(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    ip_name_lookup::add_to_linker::<State, GuardedLookup>(linker, |s| {
        let shared = s.net_shared();
        Lookup {
            sockets: s.sockets(),
            shared,
        }
    })?;
    linker
        .instance("wasi:sockets/tcp-create-socket@0.2.12")?
        .func_wrap(
            "create-tcp-socket",
            |mut store: StoreContextMut<'_, State>, (family,): (IpAddressFamily,)| {
                let state = store.data_mut();
                let Some(shared) = state.net_shared() else {
                    return Ok((Err(ErrorCode::AccessDenied),));
                };
                if shared.grants.tcp.is_empty() {
                    shared.meter.refused("tcp", "socket");
                    return Ok((Err(ErrorCode::AccessDenied),));
                }
                // Sockets the guest dropped are gone from its table.
                let table = &state.table;
                state
                    .net
                    .tcp_sockets
                    .retain(|&rep| table.get(&Resource::<TcpSocket>::new_borrow(rep)).is_ok());
                if state.net.tcp_sockets.len() >= MAX_SOCKETS {
                    shared.meter.refused("tcp", "socket limit");
                    return Ok((Err(ErrorCode::NewSocketLimit),));
                }
                let made = tcp_create_socket::Host::create_tcp_socket(&mut state.sockets(), family);
                Ok((match made {
                    Ok(socket) => {
                        state.net.tcp_sockets.push(socket.rep());
                        Ok(socket)
                    }
                    Err(e) => Err(e.downcast()?),
                },))
            },
        )?;
    linker
        .instance("wasi:sockets/udp-create-socket@0.2.12")?
        .func_wrap(
            "create-udp-socket",
            |mut store: StoreContextMut<'_, State>, (_family,): (IpAddressFamily,)| {
                if let Some(shared) = store.data_mut().net_shared() {
                    shared.meter.refused("udp", "socket");
                }
                let refused: Result<Resource<UdpSocket>, ErrorCode> = Err(ErrorCode::AccessDenied);
                Ok((refused,))
            },
        )?;
    let mut tcp = linker.instance("wasi:sockets/tcp@0.2.12")?;
    tcp.func_wrap(
        "[method]tcp-socket.finish-connect",
        |mut store: StoreContextMut<'_, State>, (socket,): (Resource<TcpSocket>,)| {
            let state = store.data_mut();
            let connected = HostTcpSocket::finish_connect(&mut state.sockets(), socket);
            let streams: Result<(Resource<DynInputStream>, Resource<DynOutputStream>), ErrorCode> =
                match connected {
                    Ok((input, output)) => {
                        state.net.tcp_streams.insert(input.rep());
                        state.net.tcp_streams.insert(output.rep());
                        Ok((input, output))
                    }
                    Err(e) => Err(e.downcast()?),
                };
            Ok((streams,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// `ip-name-lookup` that answers only names a grant mentions (and IP addresses).
struct GuardedLookup;

impl HasData for GuardedLookup {
    type Data<'a> = Lookup<'a>;
}

struct Lookup<'a> {
    sockets: WasiSocketsCtxView<'a>,
    shared: Option<Arc<NetShared>>,
}

impl ip_name_lookup::Host for Lookup<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> Result<Resource<ResolveAddressStream>, SocketError> {
        let literal = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok();
        let Some(shared) = &self.shared else {
            return Err(ErrorCode::AccessDenied.into());
        };
        if !literal && !shared.grants.names(&name) {
            shared.meter.refused("dns", &name);
            return Err(ErrorCode::AccessDenied.into());
        }
        // A pinned name resolves to its address without DNS.
        let name = shared
            .network
            .resolver
            .pinned(&name)
            .map_or(name, |ip| ip.to_string());
        ip_name_lookup::Host::resolve_addresses(&mut self.sockets, network, name)
    }
}

impl network::Host for Lookup<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.sockets, error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime_wasi::p2::bindings::sockets::network::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.sockets, err)
    }
}

impl network::HostNetwork for Lookup<'_> {
    fn drop(&mut self, this: Resource<Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.sockets, this)
    }
}

impl HostResolveAddressStream for Lookup<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> Result<Option<IpAddress>, SocketError> {
        HostResolveAddressStream::resolve_next_address(&mut self.sockets, stream)
    }

    fn subscribe(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        HostResolveAddressStream::subscribe(&mut self.sockets, stream)
    }

    fn drop(&mut self, stream: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        HostResolveAddressStream::drop(&mut self.sockets, stream)
    }
}

impl State {
    /// The instance's network grants, if it has any.
    pub(crate) fn net_shared(&self) -> Option<Arc<NetShared>> {
        self.net.shared.clone()
    }
}
