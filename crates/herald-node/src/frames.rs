//! Reading client WebSocket frames with a buffer that starts empty.
//!
//! fastwebsockets performs the upgrade and formats the frames Herald writes, but its reader
//! allocates an 8 KiB buffer per connection up front, which was most of an idle connection's
//! memory. This reader grows its buffer only as large as the frames that arrive, gives it back
//! after a large message, and is cancel-safe (nothing is consumed until a whole frame is in).
//! Server side only: client frames must be masked (RFC 6455 §5.1).

use bytes::{Buf, BytesMut};
use fastwebsockets::OpCode;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// A complete message or control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Text(BytesMut),
    Binary(BytesMut),
    Ping(BytesMut),
    Pong,
    /// The close code, if the client sent one.
    Close(Option<u16>),
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The connection ended (EOF or an IO error).
    Closed,
    /// A message over the limit; close with 1009.
    TooBig(usize),
    /// Text that is not UTF-8; close with 1007.
    BadUtf8,
    /// Anything else RFC 6455 forbids; close with 1002.
    Protocol(&'static str),
}

/// Smallest read; a `pusher:subscribe` with presence data fits.
const READ_CHUNK: usize = 2048;

pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max_message: usize,
    /// A fragmented message being assembled: its opcode and the bytes so far.
    partial: Option<Box<(OpCode, BytesMut)>>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R, max_message: usize) -> Self {
        FrameReader {
            io,
            buf: BytesMut::new(),
            max_message,
            partial: None,
        }
    }

    /// The stream, for writing (the task reads and writes one stream, never at once).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    /// Reads until `buf` holds at least `n` bytes.
    ///
    /// A connection spends its life waiting here for a frame that may never come, so the wait
    /// holds no buffer: while `buf` is empty, bytes are read into the stack and copied into a
    /// buffer of their own size in the same poll (nothing is lost if the wait is cancelled).
    /// Only the rest of a frame already begun is read into reserved space.
    async fn fill(&mut self, n: usize) -> Result<(), ReadError> {
        while self.buf.len() < n {
            let read = if self.buf.is_empty() {
                std::future::poll_fn(|cx| {
                    let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
                    let mut rb = ReadBuf::uninit(&mut chunk);
                    match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) => {
                            self.buf.extend_from_slice(rb.filled());
                            Poll::Ready(Ok(rb.filled().len()))
                        }
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        Poll::Pending => Poll::Pending,
                    }
                })
                .await
            } else {
                self.buf.reserve((n - self.buf.len()).max(READ_CHUNK));
                self.io.read_buf(&mut self.buf).await
            };
            match read {
                Ok(0) | Err(_) => return Err(ReadError::Closed),
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// The next message. Cancel-safe.
    pub async fn next(&mut self) -> Result<Message, ReadError> {
        loop {
            self.fill(2).await?;
            let (b0, b1) = (self.buf[0], self.buf[1]);
            let fin = b0 & 0x80 != 0;
            if b0 & 0x70 != 0 {
                return Err(ReadError::Protocol("reserved bits set"));
            }
            let opcode =
                OpCode::try_from(b0 & 0x0f).map_err(|_| ReadError::Protocol("unknown opcode"))?;
            if b1 & 0x80 == 0 {
                return Err(ReadError::Protocol("client frames must be masked"));
            }
            let (len_bytes, short) = match b1 & 0x7f {
                126 => (2, None),
                127 => (8, None),
                n => (0, Some(n as usize)),
            };
            let header = 2 + len_bytes + 4;
            self.fill(header).await?;
            let len = match short {
                Some(n) => n,
                None if len_bytes == 2 => u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize,
                None => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.buf[2..10]);
                    usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX)
                }
            };
            let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
            if control && (!fin || len > 125) {
                return Err(ReadError::Protocol("invalid control frame"));
            }
            let so_far = self.partial.as_ref().map(|p| p.1.len()).unwrap_or(0);
            if !control && so_far.saturating_add(len) > self.max_message {
                // Read a moderately oversized frame to its end before refusing it, so the close
                // frame is not lost to a TCP reset over unread data; refuse huge ones at once.
                if len <= (self.max_message * 8).max(256 * 1024) {
                    self.fill(header + len).await?;
                    self.buf.advance(header + len);
                    self.buf = BytesMut::new();
                }
                return Err(ReadError::TooBig(so_far.saturating_add(len)));
            }
            self.fill(header + len).await?;
            let mask = [
                self.buf[header - 4],
                self.buf[header - 3],
                self.buf[header - 2],
                self.buf[header - 1],
            ];
            self.buf.advance(header);
            let mut payload = self.buf.split_to(len);
            fastwebsockets::unmask(&mut payload, mask);
            if self.buf.is_empty() {
                // Most connections say little and then idle: hold no buffer between frames.
                self.buf = BytesMut::new();
            }
            match opcode {
                OpCode::Ping => return Ok(Message::Ping(payload)),
                OpCode::Pong => return Ok(Message::Pong),
                OpCode::Close => return close_message(&payload),
                OpCode::Text | OpCode::Binary => {
                    if self.partial.is_some() {
                        return Err(ReadError::Protocol("new message inside a fragmented one"));
                    }
                    if !fin {
                        self.partial = Some(Box::new((opcode, payload)));
                        continue;
                    }
                    return finish(opcode, payload);
                }
                OpCode::Continuation => {
                    let Some((first, mut data)) = self.partial.take().map(|p| *p) else {
                        return Err(ReadError::Protocol("continuation without a message"));
                    };
                    data.extend_from_slice(&payload);
                    if !fin {
                        self.partial = Some(Box::new((first, data)));
                        continue;
                    }
                    return finish(first, data);
                }
            }
        }
    }
}

/// A client's close frame: empty, or a code RFC 6455 §7.4 allows on the wire followed by a
/// UTF-8 reason.
fn close_message(payload: &[u8]) -> Result<Message, ReadError> {
    match payload {
        [] => Ok(Message::Close(None)),
        [_] => Err(ReadError::Protocol("close frame with a one-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // 1004-1006 and 1015 are reserved or must never be sent; below 1000 and from 5000
            // are not close codes; 1016-2999 are unassigned.
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(ReadError::Protocol("invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(ReadError::BadUtf8);
            }
            Ok(Message::Close(Some(code)))
        }
    }
}

fn finish(opcode: OpCode, payload: BytesMut) -> Result<Message, ReadError> {
    if opcode == OpCode::Text {
        if std::str::from_utf8(&payload).is_err() {
            return Err(ReadError::BadUtf8);
        }
        Ok(Message::Text(payload))
    } else {
        Ok(Message::Binary(payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<Message, ReadError>> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        // Trickle the bytes in small pieces so frames straddle reads.
        tokio::spawn(async move {
            for chunk in bytes.chunks(7) {
                client.write_all(chunk).await.expect("write");
            }
        });
        let mut r = FrameReader::new(server, max);
        let mut out = Vec::new();
        loop {
            let m = r.next().await;
            let stop = m.is_err();
            out.push(m);
            if stop {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer_and_loses_nothing_when_cancelled() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut r = FrameReader::new(server, 1 << 20);
        // Waiting for a frame that does not come (and giving up, as the connection's wait
        // does on every wake) holds no buffer.
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), r.next()).await;
        assert!(waited.is_err());
        assert_eq!(r.buf.capacity(), 0);
        // Half a frame arrives, the wait is cancelled, the rest arrives: one whole message.
        let whole = frame(true, 0x1, &[b'x'; 3000]);
        client.write_all(&whole[..1500]).await.expect("write");
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), r.next()).await;
        assert!(waited.is_err(), "half a frame is not a message");
        client.write_all(&whole[1500..]).await.expect("write");
        assert_eq!(
            r.next().await,
            Ok(Message::Text(BytesMut::from(&[b'x'; 3000][..])))
        );
        // Read to its end, the frame leaves nothing behind.
        assert_eq!(r.buf.capacity(), 0);
    }

    #[tokio::test]
    async fn messages_fragments_and_control_frames() {
        let big = vec![b'a'; 70_000];
        let mut input = frame(true, 1, b"{\"event\":\"pusher:ping\"}");
        input.extend(frame(false, 1, b"{\"a\":"));
        input.extend(frame(true, 9, b"hi")); // ping between fragments
        input.extend(frame(true, 0, b"1}"));
        input.extend(frame(true, 2, &[0, 1, 2]));
        input.extend(frame(true, 1, &big));
        input.extend(frame(true, 10, b""));
        input.extend(frame(true, 8, &1000u16.to_be_bytes()));
        let got = read_all(input, 100_000).await;
        assert_eq!(
            got[0],
            Ok(Message::Text(BytesMut::from(
                &b"{\"event\":\"pusher:ping\"}"[..]
            )))
        );
        assert_eq!(got[1], Ok(Message::Ping(BytesMut::from(&b"hi"[..]))));
        assert_eq!(got[2], Ok(Message::Text(BytesMut::from(&b"{\"a\":1}"[..]))));
        assert_eq!(
            got[3],
            Ok(Message::Binary(BytesMut::from(&[0u8, 1, 2][..])))
        );
        assert_eq!(got[4], Ok(Message::Text(BytesMut::from(&big[..]))));
        assert_eq!(got[5], Ok(Message::Pong));
        assert_eq!(got[6], Ok(Message::Close(Some(1000))));
        assert_eq!(got[7], Err(ReadError::Closed));
    }

    #[tokio::test]
    async fn protocol_violations() {
        let cases: Vec<(Vec<u8>, ReadError)> = vec![
            (frame(true, 1, &vec![b'x'; 2000]), ReadError::TooBig(2000)),
            (frame(true, 1, &[0xff, 0xfe]), ReadError::BadUtf8),
            (
                vec![0x81, 0x02, b'h', b'i'],
                ReadError::Protocol("client frames must be masked"),
            ),
            (
                vec![0xc1, 0x80, 0, 0, 0, 0],
                ReadError::Protocol("reserved bits set"),
            ),
            (
                frame(true, 0, b"x"),
                ReadError::Protocol("continuation without a message"),
            ),
            (
                frame(false, 9, b"x"),
                ReadError::Protocol("invalid control frame"),
            ),
            (frame(true, 3, b"x"), ReadError::Protocol("unknown opcode")),
            (
                [frame(false, 1, b"a"), frame(true, 1, b"b")].concat(),
                ReadError::Protocol("new message inside a fragmented one"),
            ),
            (
                [frame(false, 1, &[b'a'; 600]), frame(true, 0, &[b'a'; 600])].concat(),
                ReadError::TooBig(1200),
            ),
        ];
        for (input, want) in cases {
            let got = read_all(input, 1000).await;
            assert_eq!(got.last(), Some(&Err(want)));
        }
    }

    #[tokio::test]
    async fn close_frames_with_forbidden_codes_are_protocol_errors() {
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 2000, 5000, 65535] {
            let got = read_all(frame(true, 8, &code.to_be_bytes()), 1000).await;
            assert_eq!(
                got[0],
                Err(ReadError::Protocol("invalid close code")),
                "code {code}"
            );
        }
        let got = read_all(frame(true, 8, &[3]), 1000).await;
        assert_eq!(
            got[0],
            Err(ReadError::Protocol("close frame with a one-byte payload"))
        );
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(
            read_all(frame(true, 8, &bad_reason), 1000).await[0],
            Err(ReadError::BadUtf8)
        );
        for code in [1000u16, 1001, 1003, 1011, 3000, 4999] {
            let mut p = code.to_be_bytes().to_vec();
            p.extend_from_slice(b"bye");
            assert_eq!(
                read_all(frame(true, 8, &p), 1000).await[0],
                Ok(Message::Close(Some(code)))
            );
        }
        assert_eq!(
            read_all(frame(true, 8, b""), 1000).await[0],
            Ok(Message::Close(None))
        );
    }

    #[tokio::test]
    async fn buffer_is_released_after_a_large_message() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client
            .write_all(&frame(true, 1, &vec![b'a'; 50_000]))
            .await
            .expect("write");
        let mut r = FrameReader::new(server, 100_000);
        assert!(matches!(r.next().await, Ok(Message::Text(_))));
        assert_eq!(r.buf.capacity(), 0);
    }
}
