//! The pooled HTTP/1.1 client of plain-http upstreams, driven in the
//! request's own task.
//!
//! hyper's pooled client (hyper-util's) runs each connection in a task of
//! its own and hands the answer's parts to the request's task one by one
//! through a channel: a task switch per part, and one write to the client
//! per part even when the upstream's bytes came in one read. Here the
//! connection (hyper's `client::conn::http1`) is polled by whoever reads
//! the answer: the parts already read are taken together and passed on as
//! one (one write to the client for what one read brought), and nothing
//! crosses tasks. Idle connections are kept per upstream (at most
//! [`Client::max_idle`], [`IDLE_TIMEOUT`] each) and checked before reuse;
//! a request that a kept connection failed before any answer (the upstream
//! had closed it) is sent once more on a new one.
//!
//! Upstreams at `h2c://` URLs speak HTTP/2 over cleartext (prior
//! knowledge): their requests share one connection
//! ([`Client::post_h2`]), which runs in a task of its own (HTTP/2
//! multiplexes requests, so no one request's task could drive it).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::thread::ThreadId;
use std::time::Duration;

use axum::http::header::{ACCEPT, CONTENT_TYPE, HOST};
use axum::http::response::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Uri};
use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::BoxError;

type Conn = Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// How long an idle connection is kept.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The most bytes taken together into one part of an answer.
const MAX_PART: usize = 256 << 10;

/// A connection and its sender, boxed where it is kept and passed on
/// (~700 bytes: moved as a pointer from the pool to the request to the
/// answer and back, not copied at each step).
struct Pooled {
    sender: SendRequest<Full<Bytes>>,
    conn: Conn,
    /// The thread it was opened on: its socket is registered with that
    /// thread's runtime ([`Client::checkout`] prefers it there).
    thread: ThreadId,
}

/// An upstream's shared name and `Host` header, and a kept connection to
/// it, if any ([`Client::checkout`]).
type Checkout = (Arc<str>, HeaderValue, Option<Box<Pooled>>);

struct Idle {
    pooled: Box<Pooled>,
    since: Instant,
}

/// The client (cheap to clone: one pool).
#[derive(Clone)]
pub(crate) struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("max_idle", &self.inner.max_idle)
            .finish_non_exhaustive()
    }
}

/// An upstream's kept connections, and what its requests carry.
struct Upstream {
    /// Its `host:port`, shared by its answers (to come home to).
    authority: Arc<str>,
    /// The `Host` header of its requests.
    host: HeaderValue,
    idle: Vec<Idle>,
    /// Its HTTP/2 connection (an `h2c://` upstream), shared.
    h2: Option<http2::SendRequest<Full<Bytes>>>,
}

/// The upstreams by `host:port` (foldhash: looked up on every request).
type UpstreamMap = HashMap<Arc<str>, Upstream, foldhash::fast::RandomState>;

struct Inner {
    /// The upstreams by `host:port`.
    upstreams: Mutex<UpstreamMap>,
    /// The runtime the client was made on, if any: its HTTP/2 connections
    /// run there.
    home: Option<tokio::runtime::Handle>,
    connect_timeout: Duration,
    max_idle: usize,
}

impl Client {
    /// A client connecting within `connect_timeout`, keeping at most
    /// `max_idle` idle connections per upstream.
    pub(crate) fn new(connect_timeout: Duration, max_idle: usize) -> Self {
        Client {
            inner: Arc::new(Inner {
                upstreams: Mutex::default(),
                home: tokio::runtime::Handle::try_current().ok(),
                connect_timeout,
                max_idle,
            }),
        }
    }

    /// The upstreams, locked (nothing is held across an await; a panic
    /// elsewhere leaves nothing half-written).
    fn upstreams(&self) -> std::sync::MutexGuard<'_, UpstreamMap> {
        self.inner
            .upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Posts `body` (JSON) to `http://{authority}{path}`; the answer's head
    /// and its body (which drives the connection and gives it back to the
    /// pool when it ends). The request's headers are written into `spare`
    /// (taken, cleared: a map done with, such as the client request's, is
    /// not allocated again).
    pub(crate) async fn post(
        &self,
        authority: &str,
        path: Uri,
        body: &Bytes,
        accept: Option<&HeaderValue>,
        spare: &mut HeaderMap,
    ) -> Result<(Parts, Answer), BoxError> {
        let (home, host, kept) = self.checkout(authority)?;
        let mut request = || request(path.clone(), Some(&host), body, accept, spare);
        if let Some(kept) = kept {
            match send(kept, request()).await {
                Ok((parts, body, pooled)) => return Ok(self.answer(home, parts, body, pooled)),
                // The upstream had closed the kept connection: nothing was
                // answered, a new one is tried.
                Err(e) if e.is_canceled() || e.is_incomplete_message() || e.is_closed() => {}
                Err(e) => return Err(e.into()),
            }
        }
        let fresh = self.connect(authority).await?;
        let (parts, body, pooled) = send(fresh, request()).await?;
        Ok(self.answer(home, parts, body, pooled))
    }

    /// Posts as [`post`](Self::post) to an h2c upstream (HTTP/2 over
    /// cleartext, prior knowledge) at `authority`: on its one shared
    /// connection, opened when there is none (or it closed); a request
    /// that the kept connection failed before any answer (the upstream had
    /// closed it) is sent once more on a new one.
    pub(crate) async fn post_h2(
        &self,
        authority: &str,
        path: Uri,
        body: &Bytes,
        accept: Option<&HeaderValue>,
        spare: &mut HeaderMap,
    ) -> Result<(Parts, Answer), BoxError> {
        // HTTP/2 requests name their scheme and authority.
        let mut uri = path.into_parts();
        uri.scheme = Some(axum::http::uri::Scheme::HTTP);
        uri.authority = Some(authority.parse()?);
        let uri = Uri::from_parts(uri)?;
        let kept = self.checkout_h2(authority)?;
        let mut request = || request(uri.clone(), None, body, accept, spare);
        if let Some(mut kept) = kept {
            match send_h2(&mut kept, request()).await {
                Ok(res) => return Ok(multiplexed(res)),
                Err(e) if e.is_canceled() || e.is_closed() => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut fresh = self.connect_h2(authority).await?;
        Ok(multiplexed(send_h2(&mut fresh, request()).await?))
    }

    /// `authority`'s HTTP/2 connection, if one is open.
    fn checkout_h2(
        &self,
        authority: &str,
    ) -> Result<Option<http2::SendRequest<Full<Bytes>>>, BoxError> {
        let mut upstreams = self.upstreams();
        let Some(up) = upstreams.get_mut(authority) else {
            return Ok(None);
        };
        if up.h2.as_ref().is_some_and(http2::SendRequest::is_closed) {
            up.h2 = None;
        }
        Ok(up.h2.clone())
    }

    /// Lets go of `authority`'s shared HTTP/2 connection (the requests on
    /// it go on; the next one opens another).
    pub(crate) fn forget_h2(&self, authority: &str) {
        let mut upstreams = self.upstreams();
        if let Some(up) = upstreams.get_mut(authority) {
            up.h2 = None;
        }
    }

    /// A new HTTP/2 connection to `authority`, kept as its shared one
    /// unless another request opened one meanwhile.
    ///
    /// It is opened and driven on the runtime the client was made on: the
    /// requests of every thread share it (a listener may be served by
    /// threads of their own, each with its runtime, as the example server's
    /// is), and it outlives any one of them.
    async fn connect_h2(
        &self,
        authority: &str,
    ) -> Result<http2::SendRequest<Full<Bytes>>, BoxError> {
        let opening = || {
            let client = self.clone();
            let name: Arc<str> = authority.into();
            async move {
                let stream = client.open(&name).await?;
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .handshake(TokioIo::new(stream))
                    .await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(upstream = %name, error = %e, "h2c upstream connection ended");
                    }
                });
                Ok::<_, BoxError>(sender)
            }
        };
        let sender = match &self.inner.home {
            Some(home) => match home.spawn(opening()).await {
                Ok(opened) => opened?,
                // That runtime has stopped: opened here.
                Err(e) if e.is_cancelled() => opening().await?,
                Err(e) => return Err(e.into()),
            },
            None => opening().await?,
        };
        let mut upstreams = self.upstreams();
        let up = upstream(&mut upstreams, authority)?;
        if up.h2.as_ref().is_none_or(http2::SendRequest::is_closed) {
            up.h2 = Some(sender.clone());
        }
        Ok(sender)
    }

    fn answer(
        &self,
        home: Arc<str>,
        parts: Parts,
        body: Incoming,
        pooled: Box<Pooled>,
    ) -> (Parts, Answer) {
        (
            parts,
            Answer {
                body,
                pooled: Some(pooled),
                home: Some((self.clone(), home)),
                failed: None,
            },
        )
    }

    /// `authority`'s shared name and `Host` header, and a kept connection
    /// to it that is still open, if any: the last one kept of those opened
    /// on this thread; on a runtime of several workers, else the last one
    /// kept.
    ///
    /// Where threads run runtimes of their own (a listener served by
    /// several, each a current-thread runtime), a connection opened on
    /// another thread is driven by that thread's runtime: each read and
    /// write of it a wake-up across threads, both threads woken for every
    /// request. A thread with none of its own kept opens one (once) rather
    /// than borrow another's: borrowed, it went back to the pool as the
    /// other thread's, so a thread serving one request at a time never
    /// opened one and crossed threads for good (issue 24: at one
    /// connection, ~2 context switches a request on each listen thread).
    /// Under a runtime of several workers (one I/O driver for all), the
    /// preference costs only the look.
    fn checkout(&self, authority: &str) -> Result<Checkout, BoxError> {
        let now = Instant::now();
        let mut upstreams = self.upstreams();
        let up = upstream(&mut upstreams, authority)?;
        let here = std::thread::current().id();
        let own_runtime = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        let found = loop {
            let next = match up.idle.iter().rposition(|i| i.pooled.thread == here) {
                Some(at) => Some(up.idle.remove(at)),
                None if own_runtime => None,
                None => up.idle.pop(),
            };
            let Some(Idle { mut pooled, since }) = next else {
                break None;
            };
            if now.duration_since(since) > IDLE_TIMEOUT || pooled.sender.is_closed() {
                continue;
            }
            // A connection the upstream closed ends when polled.
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if Pin::new(&mut pooled.conn).poll(&mut cx).is_ready() {
                continue;
            }
            if pooled.sender.is_ready() {
                break Some(pooled);
            }
        };
        Ok((Arc::clone(&up.authority), up.host.clone(), found))
    }

    /// Keeps `pooled` for the next request to `authority`.
    fn checkin(&self, authority: &str, pooled: Box<Pooled>) {
        let mut upstreams = self.upstreams();
        let Some(up) = upstreams.get_mut(authority) else {
            return;
        };
        let now = Instant::now();
        // Kept in the order they came back: the expired ones are first
        // (closed here, not held until a checkout reaches them).
        let expired = up
            .idle
            .iter()
            .take_while(|i| now.duration_since(i.since) > IDLE_TIMEOUT)
            .count();
        up.idle.drain(..expired);
        // Full: the oldest kept makes way for the one just used. (Dropping
        // this one instead would leave a thread whose runtime has none of
        // its own, with the pool full of another thread's, opening a
        // connection for each request until those expired.)
        if self.inner.max_idle == 0 {
            return;
        }
        if up.idle.len() >= self.inner.max_idle {
            up.idle.drain(..=up.idle.len() - self.inner.max_idle);
        }
        up.idle.push(Idle { pooled, since: now });
    }

    async fn connect(&self, authority: &str) -> Result<Box<Pooled>, BoxError> {
        let stream = self.open(authority).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(Box::new(Pooled {
            sender,
            conn,
            thread: std::thread::current().id(),
        }))
    }

    /// A TCP connection to `authority` (port 80 when it names none).
    async fn open(&self, authority: &str) -> Result<TcpStream, BoxError> {
        let addr = if authority.contains(':') && !authority.ends_with(']') {
            std::borrow::Cow::Borrowed(authority)
        } else {
            std::borrow::Cow::Owned(format!("{authority}:80"))
        };
        let stream = tokio::time::timeout(self.inner.connect_timeout, TcpStream::connect(&*addr))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting to the upstream timed out",
                )
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// `authority`'s entry in `upstreams` (made when there is none).
fn upstream<'a>(
    upstreams: &'a mut UpstreamMap,
    authority: &str,
) -> Result<&'a mut Upstream, BoxError> {
    if !upstreams.contains_key(authority) {
        let key: Arc<str> = authority.into();
        let up = Upstream {
            host: HeaderValue::from_str(authority)?,
            authority: Arc::clone(&key),
            idle: Vec::new(),
            h2: None,
        };
        upstreams.insert(key, up);
    }
    upstreams
        .get_mut(authority)
        .ok_or_else(|| "the upstream's entry was just made".into())
}

/// The upstream request: a POST of `body` (JSON) to `uri`, its headers
/// written into `spare` (taken, cleared).
fn request(
    uri: Uri,
    host: Option<&HeaderValue>,
    body: &Bytes,
    accept: Option<&HeaderValue>,
    spare: &mut HeaderMap,
) -> Request<Full<Bytes>> {
    let mut headers = std::mem::take(spare);
    headers.clear();
    if let Some(h) = host {
        headers.insert(HOST, h.clone());
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(a) = accept {
        headers.insert(ACCEPT, a.clone());
    }
    let mut req = Request::new(Full::new(body.clone()));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    req
}

/// Sends `req` on an HTTP/2 connection once it can take another stream.
async fn send_h2(
    sender: &mut http2::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<axum::http::Response<Incoming>, hyper::Error> {
    sender.ready().await?;
    sender.send_request(req).await
}

/// An answer on a multiplexed connection (its own task reads it).
fn multiplexed(res: axum::http::Response<Incoming>) -> (Parts, Answer) {
    let (parts, body) = res.into_parts();
    (
        parts,
        Answer {
            body,
            pooled: None,
            home: None,
            failed: None,
        },
    )
}

/// Sends `req` on `pooled`, driving its connection until the head comes.
async fn send(
    mut pooled: Box<Pooled>,
    req: Request<Full<Bytes>>,
) -> Result<(Parts, Incoming, Box<Pooled>), hyper::Error> {
    // The sender must be ready (the connection idle) before it takes a request.
    std::future::poll_fn(|cx| {
        if let Poll::Ready(Err(e)) = Pin::new(&mut pooled.conn).poll(cx) {
            return Poll::Ready(Err(e));
        }
        pooled.sender.poll_ready(cx)
    })
    .await?;
    let mut response = std::pin::pin!(pooled.sender.send_request(req));
    let mut conn_done = false;
    let res = std::future::poll_fn(|cx| {
        if !conn_done && let Poll::Ready(r) = Pin::new(&mut pooled.conn).poll(cx) {
            conn_done = true;
            if let Err(e) = r {
                // The response future reports it (canceled) or this.
                if let Poll::Ready(res) = response.as_mut().poll(cx) {
                    return Poll::Ready(res);
                }
                return Poll::Ready(Err(e));
            }
        }
        response.as_mut().poll(cx)
    })
    .await?;
    let (parts, body) = res.into_parts();
    Ok((parts, body, pooled))
}

/// An answer's body: reading it drives its connection; the parts already
/// read are taken together; at its end the connection goes back to the
/// pool (dropped early, it is closed).
pub(crate) struct Answer {
    body: Incoming,
    pooled: Option<Box<Pooled>>,
    home: Option<(Client, Arc<str>)>,
    /// An error met after parts already taken: given at the next poll.
    failed: Option<hyper::Error>,
}

impl Answer {
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(p) = &mut self.pooled
            && Pin::new(&mut p.conn).poll(cx).is_ready()
        {
            // Closed (or failed): the body reports what it lacks.
            self.pooled = None;
        }
    }

    /// The answer ended: its connection goes back to the pool.
    fn release(&mut self) {
        if let (Some(pooled), Some((client, authority))) = (self.pooled.take(), self.home.take()) {
            client.checkin(&authority, pooled);
        }
    }
}

impl HttpBody for Answer {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let mut taken: Option<Bytes> = None;
        let mut joined: Option<BytesMut> = None;
        let out = |taken: Option<Bytes>, joined: Option<BytesMut>| {
            joined
                .map(BytesMut::freeze)
                .or(taken)
                .map(|b| Ok(Frame::data(b)))
        };
        loop {
            this.drive(cx);
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        match (&mut joined, taken.take()) {
                            (Some(j), _) => j.extend_from_slice(&data),
                            (None, None) => taken = Some(data),
                            (None, Some(first)) => {
                                let mut j = BytesMut::with_capacity(first.len() + data.len());
                                j.extend_from_slice(&first);
                                j.extend_from_slice(&data);
                                joined = Some(j);
                            }
                        }
                        let len = joined.as_ref().map_or(0, BytesMut::len)
                            + taken.as_ref().map_or(0, Bytes::len);
                        if this.body.is_end_stream() {
                            this.release();
                            return Poll::Ready(out(taken, joined));
                        }
                        if len >= MAX_PART {
                            return Poll::Ready(out(taken, joined));
                        }
                    }
                    Err(other) => {
                        // Trailers: after what was taken.
                        if taken.is_some() || joined.is_some() {
                            return Poll::Ready(out(taken, joined));
                        }
                        return Poll::Ready(Some(Ok(other)));
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    this.pooled = None;
                    if taken.is_some() || joined.is_some() {
                        this.failed = Some(e);
                        return Poll::Ready(out(taken, joined));
                    }
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.release();
                    return Poll::Ready(out(taken, joined));
                }
                Poll::Pending => {
                    return match out(taken, joined) {
                        Some(part) => Poll::Ready(Some(part)),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            // Read to its end (the reader stopped when told it ended).
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A bare upstream: answers each request with `answer`; `close`: closes
    /// the connection after each answer (without saying so). Counts the
    /// connections it accepted.
    async fn upstream(answer: &'static [u8], close: bool) -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // One request: its head and a body of content-length.
                        let mut chunk = [0u8; 4096];
                        let n = match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if buf.len() < end + 4 + len {
                            continue;
                        }
                        buf.drain(..end + 4 + len);
                        if s.write_all(answer).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// Posts `{}` to `addr`'s `/v1/x` (over h2c when `h2`).
    async fn send_to(client: &Client, addr: &str, h2: bool) -> Result<(Parts, Answer), BoxError> {
        let (path, body) = (Uri::from_static("/v1/x"), Bytes::from_static(b"{}"));
        let mut spare = HeaderMap::new();
        if h2 {
            client.post_h2(addr, path, &body, None, &mut spare).await
        } else {
            client.post(addr, path, &body, None, &mut spare).await
        }
    }

    /// Posts as [`send_to`] and reads the answer: its head and its parts.
    async fn read(client: &Client, addr: &str, h2: bool) -> (Parts, Vec<Bytes>) {
        let (parts, mut body) = send_to(client, addr, h2).await.unwrap();
        let mut frames = Vec::new();
        while let Some(f) = body.frame().await {
            frames.push(f.unwrap().into_data().unwrap());
        }
        (parts, frames)
    }

    async fn post(client: &Client, addr: &str) -> (u16, Vec<Bytes>) {
        let (parts, frames) = read(client, addr, false).await;
        (parts.status.as_u16(), frames)
    }

    /// The connections an upstream accepted for five posts, all answered.
    async fn connections_for_five_posts(close: bool) -> usize {
        let (addr, accepted) = upstream(OK, close).await;
        let client = Client::new(Duration::from_secs(5), 8);
        for _ in 0..5 {
            let (status, frames) = post(&client, &addr).await;
            assert_eq!((status, frames.concat()), (200, b"ok".to_vec()));
        }
        accepted.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn kept_connections_are_reused() {
        assert_eq!(connections_for_five_posts(false).await, 1);
    }

    /// An upstream that closed a kept connection: the request goes on a new
    /// one, and the caller sees nothing of it.
    #[tokio::test]
    async fn a_closed_kept_connection_is_replaced() {
        assert_eq!(connections_for_five_posts(true).await, 5);
    }

    /// Parts that came in one read are passed on as one.
    #[tokio::test]
    async fn parts_read_together_are_passed_on_together() {
        let (addr, _) = upstream(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              6\r\ndata: \r\n3\r\na\n\n\r\n9\r\ndata: b\n\n\r\n0\r\n\r\n",
            false,
        )
        .await;
        let client = Client::new(Duration::from_secs(5), 8);
        let (status, frames) = post(&client, &addr).await;
        assert_eq!(status, 200);
        assert_eq!(frames, vec![Bytes::from_static(b"data: a\n\ndata: b\n\n")]);
    }

    /// An answer dropped before its end closes its connection: the next
    /// request opens another.
    #[tokio::test]
    async fn an_answer_dropped_early_is_not_reused() {
        let (addr, accepted) = upstream(OK, false).await;
        let client = Client::new(Duration::from_secs(5), 8);
        let (_, body) = send_to(&client, &addr, false).await.unwrap();
        drop(body);
        let (status, _) = post(&client, &addr).await;
        assert_eq!(status, 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// An upstream answering each request with the number of the
    /// connection it came on (from 0, in the order accepted).
    async fn numbering_upstream() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((s, _)) = l.accept().await {
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        format!("{n}"),
                    ))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc),
                );
                n += 1;
            }
        });
        addr
    }

    /// Threads with runtimes of their own each get back the connections
    /// they opened; a thread with none of its own kept opens one rather
    /// than take another's (whose reads and writes the other thread's
    /// runtime would drive).
    #[test]
    fn kept_connections_go_back_to_the_thread_that_opened_them() {
        let upstream_rt = tokio::runtime::Runtime::new().unwrap();
        let addr = upstream_rt.block_on(numbering_upstream());
        let client = Client::new(Duration::from_secs(5), 8);
        // A thread with a runtime of its own (always running it: its
        // connections are driven there, whoever reads them): posts `n`
        // requests at once for each number sent, and sends back the
        // connections that answered them.
        let worker = |client: &Client| {
            let (ask, mut asked) = tokio::sync::mpsc::unbounded_channel::<usize>();
            let (tell, told) = std::sync::mpsc::channel::<Vec<String>>();
            let (client, addr) = (client.clone(), addr.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    while let Some(n) = asked.recv().await {
                        let posts = (0..n).map(|_| async {
                            let (_, frames) = read(&client, &addr, false).await;
                            String::from_utf8(frames.concat()).unwrap()
                        });
                        let mut answered = futures_util::future::join_all(posts).await;
                        answered.sort();
                        tell.send(answered).unwrap();
                    }
                });
            });
            move |n: usize| {
                ask.send(n).unwrap();
                told.recv().unwrap()
            }
        };
        let (a, b) = (worker(&client), worker(&client));
        assert_eq!(a(1), ["0"]);
        // B has none of its own: it opens one, and keeps it.
        assert_eq!(b(1), ["1"]);
        for _ in 0..3 {
            assert_eq!(a(1), ["0"]);
            assert_eq!(b(1), ["1"]);
        }
        // Two at once: its own, and a new one.
        assert_eq!(b(2), ["1", "2"]);
        assert_eq!(a(1), ["0"], "A's own, not one of B's");
        // A pool kept full by another thread: its oldest makes way for the
        // one coming back (else this thread opened one a request until the
        // other's expired).
        let full = Client::new(Duration::from_secs(5), 1);
        let (c, d) = (worker(&full), worker(&full));
        let first = c(1);
        let own = d(1);
        assert_ne!(own, first);
        for _ in 0..3 {
            assert_eq!(d(1), own);
        }
    }

    /// On a runtime of several workers (one I/O driver for all of them) a
    /// kept connection serves whichever worker asks next.
    #[test]
    fn workers_of_one_runtime_share_kept_connections() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let addr = numbering_upstream().await;
            let client = Client::new(Duration::from_secs(5), 8);
            for _ in 0..8 {
                // A task of its own each time: any worker may run it.
                let (client, addr) = (client.clone(), addr.clone());
                let answered = tokio::spawn(async move {
                    let (_, frames) = read(&client, &addr, false).await;
                    String::from_utf8(frames.concat()).unwrap()
                })
                .await
                .unwrap();
                assert_eq!(answered, "0");
            }
        });
    }

    /// An h2c upstream (HTTP/2 only, prior knowledge): answers `ok` with the
    /// method, path and authority it saw in `x-seen`; `close`: ends each
    /// connection (GOAWAY) after its first answer. Counts the connections
    /// it accepted.
    async fn h2c_upstream(close: bool) -> (String, Arc<AtomicUsize>) {
        use hyper::server::conn::http2 as server;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (done, ended) = tokio::sync::oneshot::channel::<()>();
                let done = Arc::new(Mutex::new(Some(done)));
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let done = done.clone();
                    async move {
                        let seen = format!(
                            "{} {} {} {}",
                            req.method(),
                            req.uri().path(),
                            req.uri().authority().map_or("", |a| a.as_str()),
                            req.headers()[CONTENT_TYPE].to_str().unwrap(),
                        );
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        assert_eq!(&body[..], b"{}");
                        if let Some(d) = done.lock().unwrap().take() {
                            let _ = d.send(());
                        }
                        let mut res =
                            axum::http::Response::new(Full::new(Bytes::from_static(b"ok")));
                        res.headers_mut()
                            .insert("x-seen", HeaderValue::from_str(&seen).unwrap());
                        Ok::<_, std::convert::Infallible>(res)
                    }
                });
                tokio::spawn(async move {
                    let conn = server::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), service);
                    let mut conn = std::pin::pin!(conn);
                    if close {
                        tokio::select! {
                            _ = conn.as_mut() => return,
                            _ = ended => {}
                        }
                        conn.as_mut().graceful_shutdown();
                    }
                    let _ = conn.await;
                });
            }
        });
        (addr, accepted)
    }

    async fn post_h2(client: &Client, addr: &str) -> (Parts, Vec<Bytes>) {
        read(client, addr, true).await
    }

    /// h2c requests, one after another and at once, share one connection;
    /// the upstream sees the method, path, authority and content type.
    #[tokio::test]
    async fn h2c_requests_share_one_connection() {
        let (addr, accepted) = h2c_upstream(false).await;
        let client = Client::new(Duration::from_secs(5), 8);
        let (parts, frames) = post_h2(&client, &addr).await;
        assert_eq!(parts.status, 200);
        assert_eq!(parts.version, axum::http::Version::HTTP_2);
        assert_eq!(
            parts.headers["x-seen"],
            format!("POST /v1/x {addr} application/json").as_str()
        );
        assert_eq!(frames.concat(), b"ok");
        let at_once = (0..8).map(|_| post_h2(&client, &addr));
        for (parts, frames) in futures_util::future::join_all(at_once).await {
            assert_eq!(
                (parts.status.as_u16(), frames.concat()),
                (200, b"ok".to_vec())
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// An h2c upstream that ended the shared connection: the next request
    /// opens another, and the caller sees nothing of it.
    #[tokio::test]
    async fn a_closed_h2c_connection_is_replaced() {
        let (addr, accepted) = h2c_upstream(true).await;
        let client = Client::new(Duration::from_secs(5), 8);
        for _ in 0..3 {
            let (parts, frames) = post_h2(&client, &addr).await;
            assert_eq!(
                (parts.status.as_u16(), frames.concat()),
                (200, b"ok".to_vec())
            );
            // The upstream's GOAWAY reaches the client's connection task
            // (yielding lets it and the I/O driver run; no clock involved).
            for _ in 0..100_000 {
                if client.checkout_h2(&addr).unwrap().is_none() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            assert!(client.checkout_h2(&addr).unwrap().is_none(), "closed");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    /// An HTTP/1.1 server named as an h2c upstream: an error, not a hang.
    #[tokio::test]
    async fn an_http1_server_at_an_h2c_url_is_an_error() {
        let (addr, _) = upstream(OK, false).await;
        let client = Client::new(Duration::from_secs(5), 8);
        let sent = tokio::time::timeout(Duration::from_secs(10), send_to(&client, &addr, true))
            .await
            .expect("answered within the timeout");
        assert!(sent.is_err());
    }

    #[tokio::test]
    async fn nobody_listening_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let client = Client::new(Duration::from_secs(5), 8);
        let e = send_to(&client, &addr, false).await.err().unwrap();
        let io = e.downcast_ref::<std::io::Error>().unwrap();
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
