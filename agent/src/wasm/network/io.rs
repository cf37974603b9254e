//! `wasi:io` for a networked plugin: every wait (a `poll`, a `block`, a blocking read or
//! write) ends by `network_timeout`, and by the call's own budget, whichever comes first.
//! Epoch interruption cannot stop a guest waiting in the host, so without this a peer
//! that never answers would hold the plugin's thread for ever. A wait cut short traps
//! the guest ([`NetTimeout`]); the instance is restarted as after any failure. The bytes
//! read from and written to TCP connections are counted here too.

use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError, StreamResult};
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi_io::bindings::wasi::io::poll::{
    Host as AsyncPoll, HostPollable as AsyncPollable,
};
use wasmtime_wasi_io::bindings::wasi::io::streams::{
    HostInputStream as AsyncInput, HostOutputStream as AsyncOutput,
};

use super::NetState;
use crate::wasm::instance::State;

/// A wait of a networked plugin that reached its limit.
#[derive(Debug, thiserror::Error)]
#[error("a network wait passed {0:?} (network_timeout, or the call's time budget)")]
pub struct NetTimeout(pub Duration);

/// `wasi:io/poll` and `wasi:io/streams` over the store's table, bounded and counted.
pub struct BoundedIo;

impl HasData for BoundedIo {
    type Data<'a> = Io<'a>;
}

/// The store's table and network state, borrowed for one call.
pub struct Io<'a> {
    table: &'a mut ResourceTable,
    net: &'a mut NetState,
}

impl BoundedIo {
    /// Replace wasmtime-wasi's `wasi:io/poll` and `wasi:io/streams` in `linker`.
    pub fn link(linker: &mut Linker<State>) -> wasmtime::Result<()> {
        linker.allow_shadowing(true);
        poll::add_to_linker::<State, BoundedIo>(linker, State::io)?;
        streams::add_to_linker::<State, BoundedIo>(linker, State::io)?;
        linker.allow_shadowing(false);
        Ok(())
    }
}

impl State {
    fn io(&mut self) -> Io<'_> {
        Io {
            table: &mut self.table,
            net: &mut self.net,
        }
    }
}

impl Io<'_> {
    /// Run `wait` until the wait limit: now + `network_timeout`, or the call's deadline.
    fn bounded<T>(
        &mut self,
        wait: impl AsyncFnOnce(&mut ResourceTable) -> T,
    ) -> Result<T, NetTimeout> {
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        let limit = self
            .net
            .shared
            .as_ref()
            .map(|s| now.checked_add(s.timeout.min(hour)).unwrap_or(now));
        let until = match (limit, self.net.deadline) {
            (Some(l), Some(d)) => l.min(d),
            (l, d) => l.or(d).unwrap_or(now + hour),
        };
        let table = &mut *self.table;
        // The timer is made inside the runtime `in_tokio` enters.
        in_tokio(async { tokio::time::timeout_at(until.into(), wait(table)).await }).map_err(|_| {
            if let Some(s) = &self.net.shared {
                s.meter.timed_out();
            }
            NetTimeout(until.saturating_duration_since(now))
        })
    }

    fn tcp(&self, rep: u32) -> bool {
        self.net.tcp_streams.contains(&rep)
    }

    fn count_in(&self, rep: u32, n: usize) {
        if let Some(s) = &self.net.shared
            && self.tcp(rep)
        {
            s.meter.bytes_in(n);
        }
    }

    fn count_out(&self, rep: u32, n: usize) {
        if let Some(s) = &self.net.shared
            && self.tcp(rep)
        {
            s.meter.bytes_out(n);
        }
    }
}

fn trap(e: NetTimeout) -> StreamError {
    StreamError::Trap(wasmtime::Error::new(e))
}

impl poll::Host for Io<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        self.bounded(async |t| AsyncPoll::poll(t, pollables).await)?
    }
}

impl poll::HostPollable for Io<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        poll::HostPollable::ready(self.table, pollable)
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        self.bounded(async |t| AsyncPollable::block(t, pollable).await)?
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        poll::HostPollable::drop(self.table, pollable)
    }
}

impl streams::Host for Io<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.table, err)
    }
}

impl streams::HostInputStream for Io<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        self.net.tcp_streams.remove(&stream.rep());
        streams::HostInputStream::drop(self.table, stream)
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        let rep = stream.rep();
        let bytes = streams::HostInputStream::read(self.table, stream, len)?;
        self.count_in(rep, bytes.len());
        Ok(bytes)
    }

    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        let rep = stream.rep();
        let bytes = self
            .bounded(async |t| AsyncInput::blocking_read(t, stream, len).await)
            .map_err(trap)??;
        self.count_in(rep, bytes.len());
        Ok(bytes)
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        let rep = stream.rep();
        let n = streams::HostInputStream::skip(self.table, stream, len)?;
        self.count_in(rep, n as usize);
        Ok(n)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        let rep = stream.rep();
        let n = self
            .bounded(async |t| AsyncInput::blocking_skip(t, stream, len).await)
            .map_err(trap)??;
        self.count_in(rep, n as usize);
        Ok(n)
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostInputStream::subscribe(self.table, stream)
    }
}

impl streams::HostOutputStream for Io<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        self.net.tcp_streams.remove(&stream.rep());
        // Dropping an output stream waits for its last write: bounded like any wait.
        self.bounded(async |t| AsyncOutput::drop(t, stream).await)?
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        streams::HostOutputStream::check_write(self.table, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        let (rep, n) = (stream.rep(), bytes.len());
        streams::HostOutputStream::write(self.table, stream, bytes)?;
        self.count_out(rep, n);
        Ok(())
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        let (rep, n) = (stream.rep(), bytes.len());
        self.bounded(async |t| AsyncOutput::blocking_write_and_flush(t, stream, bytes).await)
            .map_err(trap)??;
        self.count_out(rep, n);
        Ok(())
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        let rep = stream.rep();
        self.bounded(async |t| AsyncOutput::blocking_write_zeroes_and_flush(t, stream, len).await)
            .map_err(trap)??;
        self.count_out(rep, len as usize);
        Ok(())
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostOutputStream::subscribe(self.table, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        let rep = stream.rep();
        streams::HostOutputStream::write_zeroes(self.table, stream, len)?;
        self.count_out(rep, len as usize);
        Ok(())
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.table, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        self.bounded(async |t| {
            AsyncOutput::blocking_flush(t, Resource::new_borrow(stream.rep())).await
        })
        .map_err(trap)?
    }

    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        let (d, s) = (dst.rep(), src.rep());
        let n = streams::HostOutputStream::splice(self.table, dst, src, len)?;
        self.count_in(s, n as usize);
        self.count_out(d, n as usize);
        Ok(n)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        let (d, s) = (dst.rep(), src.rep());
        let n = self
            .bounded(async |t| AsyncOutput::blocking_splice(t, dst, src, len).await)
            .map_err(trap)??;
        self.count_in(s, n as usize);
        self.count_out(d, n as usize);
        Ok(n)
    }
}
