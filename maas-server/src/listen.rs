//! Serving a listener: on the runtime `Server::start` runs on, or on
//! threads of its own; either way its connections can be cut when the
//! shutdown's grace has passed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use axum::serve::{Listener, ListenerExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
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

/// A TCP listener whose connections are registered in an [`Open`], and,
/// on a listener's threads ([`serve_threads`]), balanced between them.
struct Cuttable {
    inner: TcpListener,
    open: Arc<Open>,
    balance: Option<Balance>,
}

/// One of a listener's threads: its number, and the connections the
/// others hand it.
struct Balance {
    me: usize,
    threads: Arc<Threads>,
    handed: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
}

/// A listener's threads: the connections each has open, and where to hand
/// each one a connection.
struct Threads {
    open: Vec<AtomicUsize>,
    hand: Vec<mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>>,
}

impl Threads {
    /// The thread with the fewest connections open (`me` among equals),
    /// counted as having one more.
    fn least(&self, me: usize) -> usize {
        let count = |i: usize| self.open[i].load(Ordering::Relaxed);
        let mut least = me;
        for i in 0..self.open.len() {
            if count(i) < count(least) {
                least = i;
            }
        }
        self.open[least].fetch_add(1, Ordering::Relaxed);
        least
    }
}

impl Cuttable {
    /// The next connection to serve here: one accepted (kept, or handed
    /// to the thread with the fewest open: whichever thread wakes first
    /// accepts all that are waiting, so a burst of connections would
    /// otherwise land on one thread) or one handed here.
    async fn next(&mut self) -> (TcpStream, SocketAddr) {
        let Some(b) = &mut self.balance else {
            // axum's accept: errors are logged and retried.
            return Listener::accept(&mut self.inner).await;
        };
        loop {
            tokio::select! {
                (stream, peer) = Listener::accept(&mut self.inner) => {
                    let to = b.threads.least(b.me);
                    if to == b.me {
                        return (stream, peer);
                    }
                    let back = match stream.into_std() {
                        Ok(s) => match b.threads.hand[to].send((s, peer)) {
                            Ok(()) => continue,
                            // That thread has stopped serving: served here.
                            Err(mpsc::error::SendError(back)) => Some(back),
                        },
                        Err(_) => None,
                    };
                    b.threads.open[to].fetch_sub(1, Ordering::Relaxed);
                    if let Some(stream) = back.and_then(|(s, _)| TcpStream::from_std(s).ok()) {
                        b.threads.open[b.me].fetch_add(1, Ordering::Relaxed);
                        return (stream, peer);
                    }
                }
                Some((stream, peer)) = b.handed.recv() => {
                    if let Ok(stream) = TcpStream::from_std(stream) {
                        return (stream, peer);
                    }
                    b.threads.open[b.me].fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Listener for Cuttable {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        let (stream, peer) = self.next().await;
        let n = self.open.add(&stream);
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            stream,
            registered: n.map(|n| (n, Arc::clone(&self.open))),
            counted: self
                .balance
                .as_ref()
                .map(|b| (Arc::clone(&b.threads), b.me)),
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
    /// The listener's threads and the one serving it (counted there).
    counted: Option<(Arc<Threads>, usize)>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some((n, open)) = &self.registered {
            open.remove(*n);
        }
        if let Some((threads, me)) = &self.counted {
            threads.open[*me].fetch_sub(1, Ordering::Relaxed);
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
    balance: Option<Balance>,
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
        balance,
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
        None,
        app,
        stopped(stop.subscribe()),
    ));
    Listening { task, open }
}

/// Serves `app` on `listener` as [`serve`] does, on `threads` threads of
/// its own, each with a current-thread runtime: a connection is served by
/// one thread, start to end (the one with the fewest connections open when
/// it came: the thread that accepted it hands it on), and so are the upstream
/// connections its requests open (the gateway's client prefers those of
/// the asking thread), as nginx's workers do. No request's work crosses
/// threads, so none waits for another thread to wake.
///
/// The returned task ends when every thread has stopped serving. Each
/// thread's runtime then runs on until `release` is sent or dropped: the
/// requests that ended there may still be settling in its tasks, and a
/// connection opened there (a store's, reopened by a request) is driven
/// there (what is left then is dropped with it).
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
    let (hand, handed): (Vec<_>, Vec<_>) = (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
    let shared = Arc::new(Threads {
        open: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
        hand,
    });
    let mut served = Vec::with_capacity(threads);
    for (i, handed) in handed.into_iter().enumerate() {
        let balance = Balance {
            me: i,
            threads: Arc::clone(&shared),
            handed,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // The same listening socket: whichever thread wakes accepts, and
        // keeps the connection or hands it to the one with the fewest.
        let listener = listener.try_clone()?;
        let (app, open) = (app.clone(), Arc::clone(&open));
        let (shutdown, release) = (stopped(stop.subscribe()), stopped(release.subscribe()));
        let (done, ended) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("maas-listen-{i}"))
            .spawn(move || {
                rt.block_on(async move {
                    tokio::spawn(keep_a_timer());
                    let r = match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            serve_on(listener, open, Some(balance), app, shutdown).await
                        }
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

/// How often [`keep_a_timer`]'s timer fires.
const KEPT_TIMER: Duration = Duration::from_secs(1);

/// Keeps a timer set on the thread's runtime, sooner than a request's
/// timeout. Tokio wakes a runtime's driver (a write to its eventfd, and
/// one more event for its next poll) whenever a timer is set sooner than
/// every one already set; on a thread serving one request at a time that
/// was every request's upstream timeout (issue 24: one syscall a request
/// at one connection). With this one set, it is once a second.
async fn keep_a_timer() {
    loop {
        tokio::time::sleep(KEPT_TIMER).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Connections that come at once are shared out between the threads,
    /// though whichever wakes first could accept them all.
    #[tokio::test]
    async fn connections_that_come_together_are_shared_between_the_threads() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Answers with the name of the thread serving it.
        let app = tower::service_fn(|_: Request| async {
            let name = std::thread::current().name().unwrap_or("?").to_owned();
            Ok::<_, Infallible>(Response::new(axum::body::Body::from(name)))
        });
        let (stop, _) = watch::channel(false);
        let (release, _) = watch::channel(false);
        let listening = serve_threads(2, listener, app, &stop, &release).unwrap();
        let mut conns = Vec::new();
        for _ in 0..8 {
            conns.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut served = HashMap::<String, usize>::new();
        for c in &mut conns {
            c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            while !answer.ends_with(b"maas-listen-0") && !answer.ends_with(b"maas-listen-1") {
                let mut buf = [0u8; 1024];
                let n = c.read(&mut buf).await.unwrap();
                assert!(n > 0, "{}", String::from_utf8_lossy(&answer));
                answer.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8(answer).unwrap();
            let name = text.rsplit("\r\n").next().unwrap().to_owned();
            *served.entry(name).or_default() += 1;
        }
        // At most two decisions race: 4 and 4, or 5 and 3.
        assert_eq!(served.len(), 2, "{served:?}");
        assert!(served.values().all(|&n| n >= 3), "{served:?}");
        drop(conns);
        stop.send(true).unwrap();
        listening.task.await.unwrap().unwrap();
    }
}
