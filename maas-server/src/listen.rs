//! Serving a listener: on the runtime `Server::start` runs on, or on
//! threads of its own; either way its connections can be cut when the
//! shutdown's grace has passed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use axum::serve::{Listener, ListenerExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::stopped;

/// A listener being served: its task (ends once its connections have
/// ended after the stop signal) and its open connections.
pub(crate) struct Listening {
    pub(crate) task: JoinHandle<io::Result<()>>,
    pub(crate) open: Arc<Open>,
}

/// The connections a listener has open, to cut when the grace has passed.
#[derive(Default)]
pub(crate) struct Open {
    /// Each connection's socket (a second handle to it), by number.
    sockets: Mutex<(u64, HashMap<u64, socket2::Socket>)>,
}

impl Open {
    /// Shuts every open connection down (both ways): a request still
    /// reading or writing fails, and its connection ends.
    pub(crate) fn cut(&self) {
        let sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        for socket in sockets.1.values() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Registers `stream`: its number, or `None` when no second handle to
    /// it could be had (out of descriptors: then it cannot be cut, only
    /// waited for).
    fn add(&self, stream: &TcpStream) -> Option<u64> {
        let socket = socket2::SockRef::from(stream).try_clone().ok()?;
        let mut sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        let n = sockets.0;
        sockets.0 += 1;
        sockets.1.insert(n, socket);
        Some(n)
    }

    fn remove(&self, n: u64) {
        self.sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .remove(&n);
    }
}

/// A TCP listener whose connections are registered in an [`Open`].
struct Cuttable {
    inner: TcpListener,
    open: Arc<Open>,
}

impl Listener for Cuttable {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        // axum's accept: errors are logged and retried.
        let (stream, peer) = Listener::accept(&mut self.inner).await;
        let n = self.open.add(&stream);
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            stream,
            registered: n.map(|n| (n, Arc::clone(&self.open))),
        };
        (conn, peer)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection, registered until it is dropped.
struct Conn {
    stream: TcpStream,
    registered: Option<(u64, Arc<Open>)>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some((n, open)) = &self.registered {
            open.remove(*n);
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener` until `shutdown`, then until its connections
/// have ended (hyper closes the idle ones at once).
async fn serve_on<S>(
    listener: TcpListener,
    open: Arc<Open>,
    app: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    // The peer's address reaches handlers (the dashboard's login limit):
    // axum gives it for a tapped listener of any kind (the tap does
    // nothing).
    let listener = Cuttable {
        inner: listener,
        open,
    }
    .tap_io(|_| {});
    axum::serve(
        listener,
        axum::ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(app),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Serves `app` on `listener` in a task of the current runtime until
/// `stop` is sent (see [`Listening`]). Small answers and streamed events
/// go out at once (no Nagle delay).
pub(crate) fn serve<S>(listener: TcpListener, app: S, stop: &watch::Sender<bool>) -> Listening
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let open = Arc::new(Open::default());
    let task = tokio::spawn(serve_on(
        listener,
        Arc::clone(&open),
        app,
        stopped(stop.subscribe()),
    ));
    Listening { task, open }
}

/// Serves `app` on `listener` as [`serve`] does, on `threads` threads of
/// its own, each with a current-thread runtime: a connection is served by
/// the thread that accepted it, start to end, and so are the upstream
/// connections its requests open (the gateway's client prefers those of
/// the asking thread), as nginx's workers do. No request's work crosses
/// threads, so none waits for another thread to wake.
///
/// The returned task ends when every thread has stopped serving. Each
/// thread's runtime then runs on until `release` is sent or dropped: the
/// requests that ended there may still be settling in its tasks (what is
/// left then is dropped with it).
pub(crate) fn serve_threads<S>(
    threads: usize,
    listener: TcpListener,
    app: S,
    stop: &watch::Sender<bool>,
    release: &watch::Sender<bool>,
) -> io::Result<Listening>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let listener = listener.into_std()?;
    let open = Arc::new(Open::default());
    let mut served = Vec::with_capacity(threads);
    for i in 0..threads {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // The same listening socket: whichever thread is free accepts.
        let listener = listener.try_clone()?;
        let (app, open) = (app.clone(), Arc::clone(&open));
        let (shutdown, release) = (stopped(stop.subscribe()), stopped(release.subscribe()));
        let (done, ended) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("maas-listen-{i}"))
            .spawn(move || {
                rt.block_on(async move {
                    let r = match TcpListener::from_std(listener) {
                        Ok(listener) => serve_on(listener, open, app, shutdown).await,
                        Err(e) => Err(e),
                    };
                    let _ = done.send(r);
                    release.await;
                });
            })?;
        served.push(ended);
    }
    let task = tokio::spawn(async move {
        let mut first = Ok(());
        for ended in served {
            let r = ended
                .await
                .unwrap_or_else(|_| Err(io::Error::other("a listener thread panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    });
    Ok(Listening { task, open })
}
