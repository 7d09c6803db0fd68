//! The HTTP side of a test: an axum server on a free loopback port, and a real HTTP/1 client.

use std::future::IntoFuture;
use std::net::SocketAddr;

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::wait::bounded;

/// Serves `app` on a free loopback port.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("app addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// Serves `app` on a free loopback port until the returned sender is used (or dropped), then
/// shuts down gracefully: the returned task ends once the requests in flight have finished.
pub async fn serve_until_stopped(
    app: Router,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("app addr");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .into_future(),
    );
    (addr, stop_tx, server)
}

/// A real HTTP/1 client.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

/// A response, read to its end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> HttpClient {
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        bounded(&format!("GET {path}"), self.try_get(path))
            .await
            .unwrap_or_else(|e| panic!("GET {path} failed: {e}"))
    }

    /// `GET path` again until the answer is not `502`, at most [`BOUND`](crate::BOUND) and
    /// 100,000 times: after a backend comes back, the pool's reconnect backoff answers `502`
    /// at once until its step ends and one connect probes the backend (within one backoff
    /// step). The answer, and the `502`s before it.
    pub async fn get_when_back(&self, path: &str) -> (Reply, usize) {
        bounded(&format!("GET {path} when the backend is back"), async {
            let mut failed = 0;
            loop {
                let reply = self
                    .try_get(path)
                    .await
                    .unwrap_or_else(|e| panic!("GET {path} failed: {e}"));
                if reply.status != StatusCode::BAD_GATEWAY || failed >= 100_000 {
                    return (reply, failed);
                }
                failed += 1;
                tokio::task::yield_now().await;
            }
        })
        .await
    }

    /// Starts `GET path` on its own task (to hold it, or to drop it mid-request).
    pub fn spawn_get(&self, path: &str) -> JoinHandle<Reply> {
        let (client, path) = (self.clone(), path.to_string());
        tokio::spawn(async move { client.get(&path).await })
    }

    /// Like [`spawn_get`](Self::spawn_get), for requests that may fail at the HTTP level.
    pub fn spawn_try_get(&self, path: &str) -> JoinHandle<Result<Reply, String>> {
        let (client, path) = (self.clone(), path.to_string());
        tokio::spawn(async move { client.try_get(&path).await })
    }

    /// `paths`, requested all at once: every reply, in order, and how long the storm took. A
    /// request that fails at the HTTP level panics.
    pub async fn storm(
        &self,
        paths: impl IntoIterator<Item = String>,
    ) -> (Vec<Reply>, std::time::Duration) {
        let start = std::time::Instant::now();
        let tasks: Vec<_> = paths.into_iter().map(|p| self.spawn_try_get(&p)).collect();
        let mut replies = Vec::with_capacity(tasks.len());
        for task in tasks {
            let reply = bounded("a storm request", task)
                .await
                .expect("request task")
                .unwrap_or_else(|e| panic!("the request failed at the HTTP level: {e}"));
            replies.push(reply);
        }
        (replies, start.elapsed())
    }

    pub async fn try_get(&self, path: &str) -> Result<Reply, String> {
        let (parts, body) = self
            .try_request(Method::GET, path, Bytes::new())
            .await?
            .into_parts();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Sends `method path` with `body` and reads the response to its end; the body as bytes.
    pub async fn try_request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<http::Response<Bytes>, String> {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let res = self.client.request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(http::Response::from_parts(parts, body))
    }
}

/// A response, read to its end, body as bytes.
#[derive(Debug)]
pub struct BytesReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A real HTTP/1 client with methods and byte bodies: [`HttpClient::try_request`], the body
/// kept as bytes.
#[derive(Clone)]
pub struct BytesClient(HttpClient);

impl BytesClient {
    pub fn new(addr: SocketAddr) -> BytesClient {
        BytesClient(HttpClient::new(addr))
    }

    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<BytesReply, String> {
        let (parts, body) = self.0.try_request(method, path, body).await?.into_parts();
        Ok(BytesReply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn send(&self, method: Method, path: &str, body: Bytes) -> BytesReply {
        let what = format!("{method} {path}");
        bounded(&what, self.try_send(method.clone(), path, body))
            .await
            .unwrap_or_else(|e| panic!("{what} failed: {e}"))
    }

    pub async fn get(&self, path: &str) -> BytesReply {
        self.send(Method::GET, path, Bytes::new()).await
    }

    pub async fn put(&self, path: &str, body: impl Into<Bytes>) -> BytesReply {
        self.send(Method::PUT, path, body.into()).await
    }

    pub async fn delete(&self, path: &str) -> BytesReply {
        self.send(Method::DELETE, path, Bytes::new()).await
    }
}
