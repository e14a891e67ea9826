//! Upgraded connections without the HTTP/1 dispatcher's buffers.
//!
//! actix-http's HTTP/1 dispatcher keeps an 8 KiB read and an 8 KiB write buffer for as long as
//! it serves a connection, and a WebSocket is served for its whole life: 16 KiB of an idle
//! session's 18 KiB. With an upgrade service on the server's `HttpService`, the dispatcher hands
//! a request with `Connection: Upgrade` over together with the socket and ends. This service then
//! runs it through the same actix-web application as every other request (routing, auth,
//! limits, `/chat`'s handler and actix-ws unchanged), with the socket as the request's payload,
//! writes the response itself and, for `101 Switching Protocols`, pumps the response body (the
//! WebSocket's outgoing frames) to the socket. Neither direction keeps a buffer while idle: a
//! read takes what the kernel holds into a stack buffer and hands on exactly that many bytes,
//! and a write gathers every batch of frames that is ready into one `write`.

use std::{
    future::poll_fn,
    io,
    net::Shutdown,
    pin::Pin,
    rc::Rc,
    task::{ready, Context, Poll},
    time::Duration,
};

use actix_codec::{Encoder, Framed};
use actix_http::{
    body::{BodySize, BoxBody, MessageBody},
    error::PayloadError,
    h1, ConnectionType, Method, Request, Response, StatusCode,
};
use actix_web::{
    dev::{Payload, Service, ServiceResponse},
    rt::net::TcpStream,
};
use bytes::{Bytes, BytesMut};
use futures_util::{future::LocalBoxFuture, Stream};

use crate::conn::OpenGuard;

/// The largest piece read from an upgraded socket at once (a stack buffer, not kept).
const READ_PIECE: usize = 8 * 1024;

/// The upgrade service: one per worker, holding that worker's instance of the application.
pub struct Upgrade<S> {
    app: Rc<S>,
    /// How long a connection whose WebSocket has ended waits for the client's FIN.
    linger: Duration,
}

impl<S> Upgrade<S> {
    pub fn new(app: S, linger: Duration) -> Self {
        Upgrade {
            app: Rc::new(app),
            linger,
        }
    }
}

impl<S, B> Service<(Request, Framed<TcpStream, h1::Codec>)> for Upgrade<S>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ();
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<(), actix_web::Error>>;

    actix_web::dev::always_ready!();

    fn call(&self, (req, framed): (Request, Framed<TcpStream, h1::Codec>)) -> Self::Future {
        let (app, linger) = (self.app.clone(), self.linger);
        Box::pin(async move {
            // A connection that is gone is nobody's error.
            let _ = serve(app, req, framed, linger).await;
            Ok(())
        })
    }
}

async fn serve<S, B>(
    app: Rc<S>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
    linger: Duration,
) -> io::Result<()>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    // The connection counts as open for as long as it is served here.
    let open = req.conn_data::<Rc<OpenGuard>>().cloned();
    let parts = framed.into_parts();
    let (mut codec, read_buf) = (parts.codec, parts.read_buf);
    let tcp = Rc::new(parts.io);
    // A WebSocket handshake reads its frames from the socket; any other request that asked for
    // an upgrade is answered as a plain one, without a body, and the connection closed.
    let req = if req.method() == Method::GET {
        // What the client sent behind the request head; the dispatcher's buffer is let go.
        let leftover = (!read_buf.is_empty()).then(|| Bytes::copy_from_slice(&read_buf));
        let payload = SocketPayload {
            tcp: tcp.clone(),
            leftover,
        };
        let boxed: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(payload);
        req.replace_payload(Payload::from(boxed)).0
    } else {
        req
    };
    drop(read_buf);
    drop(parts.write_buf);

    let res: Response<BoxBody> = match app.call(req).await {
        Ok(res) => res.map_into_boxed_body().into(),
        Err(e) => e.into(),
    };
    let (mut head, body) = res.into_parts();
    let mut out = BytesMut::new();
    if head.status() == StatusCode::SWITCHING_PROTOCOLS {
        codec.encode(h1::Message::Item((head, BodySize::None)), &mut out)?;
        write_all(&tcp, &out).await?;
        drop(out);
        actix_web::rt::spawn(pump(tcp, body, open, linger));
        return Ok(());
    }
    head.head_mut().set_connection_type(ConnectionType::Close);
    codec.encode(h1::Message::Item((head, body.size())), &mut out)?;
    let mut body = std::pin::pin!(body);
    while let Some(Ok(chunk)) = poll_fn(|cx| body.as_mut().poll_next(cx)).await {
        codec.encode(h1::Message::Chunk(Some(chunk)), &mut out)?;
        write_all(&tcp, &out).await?;
        out.clear();
    }
    codec.encode(h1::Message::Chunk(None), &mut out)?;
    write_all(&tcp, &out).await?;
    close(&tcp, linger).await;
    Ok(())
}

/// The most a connection gathers from its body into one write.
const WRITE_BATCH: usize = 64 * 1024;

/// Writes the WebSocket's outgoing frames (the 101 response's body) to the socket until the
/// session ends it or the socket fails, then closes the connection. Each wake-up takes every
/// piece of the body that is ready (up to [`WRITE_BATCH`]) into one write, as the dispatcher's
/// write buffer did; the gathering buffer lives only for that write.
async fn pump(
    tcp: Rc<TcpStream>,
    mut body: BoxBody,
    open: Option<Rc<OpenGuard>>,
    linger: Duration,
) {
    let mut ended = false;
    while !ended {
        let Some(Ok(first)) = poll_fn(|cx| Pin::new(&mut body).poll_next(cx)).await else {
            break;
        };
        let mut batch: Option<BytesMut> = None;
        while batch.as_ref().map_or(first.len(), BytesMut::len) < WRITE_BATCH {
            match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_next(cx))).await {
                Poll::Ready(Some(Ok(more))) => batch
                    .get_or_insert_with(|| BytesMut::from(&first[..]))
                    .extend_from_slice(&more),
                Poll::Ready(_) => {
                    ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        let frames = batch.as_deref().unwrap_or(&first);
        if write_all(&tcp, frames).await.is_err() {
            break;
        }
    }
    // The session's end of the body goes (with it the user's session place, and actix-ws's
    // reading side learns that the connection is over).
    drop(body);
    close(&tcp, linger).await;
    drop(open);
}

/// Sends FIN after what was written, then reads and drops what the client still sends until it
/// closes its side (at most `linger`): closing a socket with unread input would send RST, and
/// the client could lose the close frame it has not read yet.
async fn close(tcp: &TcpStream, linger: Duration) {
    let socket = socket2::SockRef::from(tcp);
    let _ = socket.shutdown(Shutdown::Write);
    let _ = actix_web::rt::time::timeout(linger, async {
        let mut scratch = vec![0; 1024];
        loop {
            if tcp.readable().await.is_err() {
                return;
            }
            match tcp.try_read(&mut scratch) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
    // Anyone still reading (the session) sees the end.
    let _ = socket.shutdown(Shutdown::Both);
}

async fn write_all(tcp: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        tcp.writable().await?;
        match tcp.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The socket as a request payload: each read hands on exactly the bytes the kernel had (up to
/// [`READ_PIECE`]); nothing is buffered between reads.
struct SocketPayload {
    tcp: Rc<TcpStream>,
    leftover: Option<Bytes>,
}

impl Stream for SocketPayload {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(bytes) = this.leftover.take() {
            return Poll::Ready(Some(Ok(bytes)));
        }
        loop {
            if let Err(e) = ready!(this.tcp.poll_read_ready(cx)) {
                return Poll::Ready(Some(Err(PayloadError::Io(e))));
            }
            let mut piece = [0u8; READ_PIECE];
            match this.tcp.try_read(&mut piece) {
                Ok(0) => return Poll::Ready(None),
                Ok(n) => return Poll::Ready(Some(Ok(Bytes::copy_from_slice(&piece[..n])))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Some(Err(PayloadError::Io(e)))),
            }
        }
    }
}
