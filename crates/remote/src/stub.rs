//! A loopback HTTP server for tests, answering as a handler says: the
//! engines' documented answers, and the faults the client must survive.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
};

use serde_json::Value;

/// A request as the handler sees it.
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header lines, lower case.
    pub headers: Vec<String>,
    /// The JSON body, Null for none.
    pub body: Value,
}

impl Request {
    pub fn has_header(&self, line: &str) -> bool {
        self.headers.iter().any(|h| h == line)
    }
}

pub enum Reply {
    /// Status line (e.g. "200 OK"), extra header lines ("retry-after: 1"), and a body.
    Full { status: &'static str, headers: String, body: String },
    /// A 200 whose body stops after `sent` of its announced bytes.
    Cut { body: String, sent: usize },
}

impl Reply {
    pub fn ok(body: impl ToString) -> Self {
        Reply::Full { status: "200 OK", headers: String::new(), body: body.to_string() }
    }

    pub fn status(status: &'static str, body: impl ToString) -> Self {
        Reply::Full { status, headers: String::new(), body: body.to_string() }
    }
}

/// Serve `handler` on a free loopback port, one thread per connection;
/// returns `http://127.0.0.1:PORT`.
pub fn serve(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handler = std::sync::Arc::new(handler);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let (stream, handler) = (stream.unwrap(), handler.clone());
            std::thread::spawn(move || answer(stream, &*handler));
        }
    });
    url
}

fn answer(mut stream: TcpStream, handler: &dyn Fn(&Request) -> Reply) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let (mut request_line, mut headers) = (String::new(), Vec::new());
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        headers.push(line.trim().to_ascii_lowercase());
    }
    let length = headers.iter().find_map(|h| h.strip_prefix("content-length: ")).map_or(0, |n| n.parse().unwrap());
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    let mut parts = request_line.split_whitespace();
    let request = Request {
        method: parts.next().unwrap_or_default().to_string(),
        path: parts.next().unwrap_or_default().to_string(),
        headers,
        body: if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() },
    };
    let text = match handler(&request) {
        Reply::Full { status, headers, body } => {
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
                body.len()
            )
        }
        Reply::Cut { body, sent } => format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
            body.len(),
            &body[..sent]
        ),
    };
    let _ = stream.write_all(text.as_bytes());
}
