//! Client frames as the session wants them: continuation frames joined into whole messages
//! under a size limit, and every way a client can break the protocol as a typed [`FrameError`]
//! carrying its close code.

use actix_ws::{CloseReason, Item, Message, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

/// Close codes the gateway sends (RFC 6455 section 7.4.1, and 1012 from the IANA registry).
pub mod close_code {
    /// The client said goodbye and the gateway answers in kind.
    pub const NORMAL: u16 = 1000;
    /// The client went silent past the idle timeout.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket framing (reserved bits, bad opcodes, unmasked frames).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message that is not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A client that stops reading, or one killed by an operator or a revocation.
    pub const POLICY: u16 = 1008;
    /// A message larger than `max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// The node shuts down: reconnect (to another node).
    pub const RESTART: u16 = 1012;
}

/// A whole message from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    Text(ByteString),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    Close(Option<CloseReason>),
}

/// How a client broke the protocol, or that its connection is gone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("message exceeds max_frame_bytes={limit}")]
    TooBig { limit: usize },
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection itself failed (reset, cut): nobody is left to tell.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
}

impl FrameError {
    /// The close code to send, or `None` when the connection is gone.
    pub(crate) fn close_code(&self) -> Option<u16> {
        match self {
            FrameError::TooBig { .. } => Some(close_code::TOO_BIG),
            FrameError::InvalidUtf8 => Some(close_code::INVALID_DATA),
            FrameError::Protocol(_) => Some(close_code::PROTOCOL_ERROR),
            FrameError::ConnectionLost(_) => None,
        }
    }

    fn of(e: ProtocolError, limit: usize) -> Self {
        match e {
            ProtocolError::Overflow => FrameError::TooBig { limit },
            ProtocolError::Io(io) => {
                let utf8 = io
                    .get_ref()
                    .is_some_and(|inner| inner.is::<std::str::Utf8Error>());
                if utf8 {
                    FrameError::InvalidUtf8
                } else if io.kind() == std::io::ErrorKind::InvalidData {
                    // The decoder's only other InvalidData: a frame with reserved bits set.
                    FrameError::Protocol(io.to_string())
                } else {
                    FrameError::ConnectionLost(io.to_string())
                }
            }
            other => FrameError::Protocol(other.to_string()),
        }
    }
}

/// Joins continuation frames, at most `limit` bytes a message.
pub(crate) struct Assembler {
    limit: usize,
    /// A fragmented message under way: whether it is text, and its bytes so far.
    partial: Option<(bool, BytesMut)>,
}

impl Assembler {
    pub(crate) fn new(limit: usize) -> Self {
        Assembler {
            limit,
            partial: None,
        }
    }

    /// Takes one frame; answers a whole message when one is complete.
    pub(crate) fn push(
        &mut self,
        frame: Result<Message, ProtocolError>,
    ) -> Result<Option<Incoming>, FrameError> {
        let frame = frame.map_err(|e| FrameError::of(e, self.limit))?;
        Ok(match frame {
            Message::Text(text) => Some(Incoming::Text(text)),
            Message::Binary(bytes) => Some(Incoming::Binary(bytes)),
            Message::Ping(bytes) => Some(Incoming::Ping(bytes)),
            Message::Pong(_) => Some(Incoming::Pong),
            Message::Close(reason) => Some(Incoming::Close(reason)),
            Message::Nop => None,
            Message::Continuation(item) => self.continuation(item)?,
        })
    }

    fn continuation(&mut self, item: Item) -> Result<Option<Incoming>, FrameError> {
        let unexpected = |what: &str| Err(FrameError::Protocol(format!("unexpected {what}")));
        match item {
            Item::FirstText(_) | Item::FirstBinary(_) if self.partial.is_some() => {
                unexpected("new fragmented message before the last one ended")
            }
            Item::FirstText(bytes) => self.start(true, bytes),
            Item::FirstBinary(bytes) => self.start(false, bytes),
            Item::Continue(bytes) => {
                let Some((_, buf)) = &mut self.partial else {
                    return unexpected("continuation frame");
                };
                Self::append(buf, &bytes, self.limit)?;
                Ok(None)
            }
            Item::Last(bytes) => {
                let Some((text, mut buf)) = self.partial.take() else {
                    return unexpected("last continuation frame");
                };
                Self::append(&mut buf, &bytes, self.limit)?;
                let bytes = buf.freeze();
                if !text {
                    return Ok(Some(Incoming::Binary(bytes)));
                }
                ByteString::try_from(bytes)
                    .map(|t| Some(Incoming::Text(t)))
                    .map_err(|_| FrameError::InvalidUtf8)
            }
        }
    }

    fn start(&mut self, text: bool, bytes: Bytes) -> Result<Option<Incoming>, FrameError> {
        let mut buf = BytesMut::new();
        Self::append(&mut buf, &bytes, self.limit)?;
        self.partial = Some((text, buf));
        Ok(None)
    }

    fn append(buf: &mut BytesMut, bytes: &[u8], limit: usize) -> Result<(), FrameError> {
        if buf.len() + bytes.len() > limit {
            return Err(FrameError::TooBig { limit });
        }
        buf.extend_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cont(item: Item) -> Result<Message, ProtocolError> {
        Ok(Message::Continuation(item))
    }

    #[test]
    fn fragments_are_joined_within_the_limit() {
        let mut a = Assembler::new(8);
        assert_eq!(a.push(cont(Item::FirstText("ab".into()))), Ok(None));
        assert_eq!(a.push(cont(Item::Continue("cd".into()))), Ok(None));
        assert_eq!(
            a.push(cont(Item::Last("ef".into()))),
            Ok(Some(Incoming::Text("abcdef".into())))
        );
        assert_eq!(a.push(cont(Item::FirstBinary("12345".into()))), Ok(None));
        assert_eq!(
            a.push(cont(Item::Last("6789".into()))),
            Err(FrameError::TooBig { limit: 8 })
        );
    }

    #[test]
    fn broken_fragments_are_typed() {
        let mut a = Assembler::new(8);
        assert!(matches!(
            a.push(cont(Item::Continue("x".into()))),
            Err(FrameError::Protocol(_))
        ));
        a.push(cont(Item::FirstText(Bytes::from_static(&[0xff]))))
            .unwrap();
        assert_eq!(
            a.push(cont(Item::Last(Bytes::from_static(&[0xfe])))),
            Err(FrameError::InvalidUtf8)
        );
    }

    #[test]
    fn decoder_errors_get_their_close_codes() {
        let bad = vec![0xff];
        let utf8 = std::str::from_utf8(&bad).unwrap_err();
        let io = |e: std::io::Error| ProtocolError::Io(e);
        let cases = [
            (ProtocolError::Overflow, Some(1009)),
            (
                io(std::io::Error::new(std::io::ErrorKind::InvalidData, utf8)),
                Some(1007),
            ),
            (
                io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "Received a frame with non-zero reserved bits",
                )),
                Some(1002),
            ),
            (ProtocolError::UnmaskedFrame, Some(1002)),
            (io(std::io::ErrorKind::ConnectionReset.into()), None),
        ];
        for (e, code) in cases {
            let what = format!("{e:?}");
            assert_eq!(FrameError::of(e, 8).close_code(), code, "{what}");
        }
    }
}

/// Fuzz target `ws_frames`: raw bytes from a client go through the WebSocket decoder actix-ws
/// runs (masked frames, at most `LIMIT` bytes each), the [`Assembler`] and the JSON decoder,
/// as a session reads them. Nothing may panic; an error ends the connection, as it would.
#[cfg(test)]
mod fuzz {
    use actix_codec::Decoder;
    use actix_http::ws::{Codec, Frame};

    use super::*;

    const LIMIT: usize = 4096;

    /// What actix-ws's `MessageStream` does with each decoded frame.
    fn message(frame: Frame) -> Result<Message, ProtocolError> {
        Ok(match frame {
            Frame::Text(bytes) => ByteString::try_from(bytes)
                .map(Message::Text)
                .map_err(|e| {
                    ProtocolError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
                })?,
            Frame::Binary(bytes) => Message::Binary(bytes),
            Frame::Ping(bytes) => Message::Ping(bytes),
            Frame::Pong(bytes) => Message::Pong(bytes),
            Frame::Close(reason) => Message::Close(reason),
            Frame::Continuation(item) => Message::Continuation(item),
        })
    }

    #[test]
    fn fuzz_ws_frames() {
        ai_gateway_fuzz::fuzz("ws_frames", |input| {
            let mut codec = Codec::new().max_size(LIMIT);
            let mut assembler = Assembler::new(LIMIT);
            let mut buf = BytesMut::from(input);
            loop {
                let frame = match codec.decode(&mut buf) {
                    Ok(Some(frame)) => message(frame),
                    Ok(None) => return,
                    Err(e) => Err(e),
                };
                match assembler.push(frame) {
                    Ok(Some(Incoming::Text(text))) => {
                        assert!(text.len() <= LIMIT);
                        let _ = ai_gateway_proto::decode_client_frame(&text);
                    }
                    Ok(Some(Incoming::Close(_))) => return,
                    Ok(_) => {}
                    Err(e) => {
                        let _ = e.close_code();
                        return;
                    }
                }
            }
        });
    }
}
