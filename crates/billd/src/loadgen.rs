//! A minimal HTTP/1.1 keep-alive client for the benchmarks.
//!
//! The benchmarks run the load generator and billd on the same two cores, so
//! whatever the client spends is taken from the server being measured. A
//! general client (reqwest) parses the URL, builds a header map and picks a
//! pooled connection for every request; this one writes request bytes built
//! in advance and parses only the status line and `Content-Length` of the
//! answer, like `wrk` does. It still speaks real HTTP/1.1 over TCP and
//! checks every answer.

use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most headers an answer may carry (billd sends a handful).
const MAX_HEADERS: usize = 32;

/// Builds the bytes of a `POST` with a body, ready to be written as is.
pub fn post_request(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("POST {path} HTTP/1.1\r\nhost: {addr}\r\n");
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// One keep-alive connection; requests on it are sent one at a time.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    /// Bytes read and not yet consumed (`buf[..filled]`).
    buf: Vec<u8>,
    filled: usize,
    /// False once the server said it closes the connection.
    reusable: bool,
}

/// What the client keeps of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status code.
    pub status: u16,
}

impl Connection {
    /// Connects to `addr` (Nagle off, as the request is one write).
    pub async fn open(addr: SocketAddr) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buf: vec![0; 4096],
            filled: 0,
            reusable: true,
        })
    }

    /// Whether another request may be sent on this connection.
    pub fn is_reusable(&self) -> bool {
        self.reusable
    }

    /// Writes `request` (built by [`post_request`]) and reads its answer.
    pub async fn send(&mut self, request: &[u8]) -> std::io::Result<Answer> {
        self.stream.write_all(request).await?;
        loop {
            if let Some((answer, used)) = self.parse()? {
                self.buf.copy_within(used..self.filled, 0);
                self.filled -= used;
                return Ok(answer);
            }
            if self.filled == self.buf.len() {
                let grown = self.buf.len() * 2;
                self.buf.resize(grown, 0);
            }
            let n = self.stream.read(&mut self.buf[self.filled..]).await?;
            if n == 0 {
                self.reusable = false;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection before answering",
                ));
            }
            self.filled += n;
        }
    }

    /// A whole answer at the start of the buffer, with the bytes it spans;
    /// `None` while more bytes are needed.
    fn parse(&mut self) -> std::io::Result<Option<(Answer, usize)>> {
        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(&self.buf[..self.filled]) {
            Ok(httparse::Status::Complete(head)) => head,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(invalid(&format!("malformed HTTP answer: {e}"))),
        };
        let status = response.code.ok_or_else(|| invalid("no status code"))?;
        let mut length = None;
        for header in response.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                let text = std::str::from_utf8(header.value)
                    .map_err(|_| invalid("Content-Length is not ASCII"))?;
                length = Some(
                    text.trim()
                        .parse::<usize>()
                        .map_err(|_| invalid("Content-Length is not a number"))?,
                );
            } else if header.name.eq_ignore_ascii_case("connection")
                && header.value.eq_ignore_ascii_case(b"close")
            {
                self.reusable = false;
            }
        }
        let length = length.ok_or_else(|| invalid("an answer without Content-Length"))?;
        if self.filled < head + length {
            return Ok(None);
        }
        Ok(Some((Answer { status }, head + length)))
    }
}

/// Idle keep-alive connections to one address, opened on demand.
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<Connection>>,
}

impl Pool {
    /// An empty pool for `addr`.
    pub fn new(addr: SocketAddr) -> Pool {
        Pool {
            addr,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `request` on an idle connection (or a new one) and returns the
    /// connection to the pool when it may be reused.
    pub async fn send(&self, request: &[u8]) -> std::io::Result<Answer> {
        let idle = self.idle.lock().map(|mut idle| idle.pop()).ok().flatten();
        let mut connection = match idle {
            Some(connection) => connection,
            None => Connection::open(self.addr).await?,
        };
        let answer = connection.send(request).await?;
        if connection.is_reusable() {
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(connection);
            }
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers each request with the given raw bytes, split
    /// into single-byte writes to exercise partial reads.
    async fn serve(answers: Vec<&'static [u8]>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 65536];
            for answer in answers {
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = socket.read(&mut buf).await.unwrap();
                    seen.extend_from_slice(&buf[..n]);
                }
                for byte in answer {
                    socket.write_all(&[*byte]).await.unwrap();
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn answers_are_read_whole_and_the_connection_is_reused() {
        let addr = serve(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\nconnection: close\r\n\r\nno",
        ])
        .await;
        let mut connection = Connection::open(addr).await.unwrap();
        let request = post_request(addr, "/x", &[("a", "b")], b"{}");
        assert_eq!(connection.send(&request).await.unwrap().status, 200);
        assert!(connection.is_reusable());
        assert_eq!(connection.send(&request).await.unwrap().status, 503);
        assert!(!connection.is_reusable());
        assert_eq!(connection.filled, 0, "nothing left over");
    }

    #[tokio::test]
    async fn an_answer_without_a_length_is_an_error() {
        let addr = serve(vec![b"HTTP/1.1 200 OK\r\n\r\n"]).await;
        let mut connection = Connection::open(addr).await.unwrap();
        let request = post_request(addr, "/x", &[], b"");
        let err = connection.send(&request).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_request_carries_its_headers_and_length() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let request = post_request(addr, "/p", &[("x-a", "1")], b"body");
        assert_eq!(
            request,
            b"POST /p HTTP/1.1\r\nhost: 127.0.0.1:9\r\nx-a: 1\r\ncontent-length: 4\r\n\r\nbody"
        );
    }
}
