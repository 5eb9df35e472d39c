//! A minimal HTTP/1.1 endpoint for `/metrics` (Prometheus text) and `/status` (JSON).
//!
//! Both processes expose read-only GETs only, so a full web framework would be dead weight:
//! each connection reads one request head and answers from a handler.

use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A response: status code, content type, body.
pub type Response = (u16, &'static str, String);

/// Serves GET requests on `listener` with `handler(path)` until the task is dropped.
pub async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send,
{
    let handler = Arc::new(handler);
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read until the end of the request head (GETs carry no body), at most 4 KiB
            // within HTTP_HEAD_TIMEOUT: a client that trickles or idles is dropped.
            let read_head = async {
                while n < buf.len() {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return false,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                true
            };
            if !matches!(
                tokio::time::timeout(crate::HTTP_HEAD_TIMEOUT, read_head).await,
                Ok(true)
            ) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let mut parts = head.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or("/").to_string(),
            );
            let (code, ctype, body) = if method == "GET" {
                handler(path.split('?').next().unwrap_or("/").to_string()).await
            } else {
                (405, "text/plain", "only GET\n".to_string())
            };
            let reason = match code {
                200 => "OK",
                404 => "Not Found",
                405 => "Method Not Allowed",
                _ => "Error",
            };
            let resp = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders a prometheus registry in the text format.
pub fn render(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder;
    let mut out = vec![];
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding cannot fail");
    String::from_utf8(out).expect("prometheus text is UTF-8")
}
