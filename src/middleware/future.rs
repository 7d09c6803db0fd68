//! [`ResponseFuture`]: checks out (eager mode), then runs the inner service.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum_core::response::{IntoResponse, Response};
use http::Request;
use pin_project_lite::pin_project;
use tokio_util::sync::ReusableBoxFuture;
use tower_service::Service;

use crate::clean::scope;
use crate::error::TcpPoolError;
use crate::middleware::slot::Slot;
use crate::pool::{TcpConnection, TcpPool};

/// bb8's checkout is an `async fn`, whose future type cannot be named on stable Rust, so it
/// is boxed; the boxes are recycled (up to [`SPARES_PER_THREAD`] per thread, enough for as
/// many checkouts as wait at once there), so a steady stream of requests allocates none.
/// A thread-local cannot be generic: the checkout yields an unmarked connection, given its
/// pool's marker when it goes into the request ([`insert_slot`]).
type Checkout = ReusableBoxFuture<'static, Result<TcpConnection, TcpPoolError>>;

/// The most finished checkout boxes a thread keeps for reuse (a few hundred bytes each).
const SPARES_PER_THREAD: usize = 64;

thread_local! {
    static SPARE_CHECKOUTS: RefCell<Vec<Checkout>> = const { RefCell::new(Vec::new()) };
}

fn start_checkout(pool: TcpPool) -> Checkout {
    let future = async move { pool.get().await };
    let spare = SPARE_CHECKOUTS
        .try_with(|spares| spares.try_borrow_mut().ok().and_then(|mut s| s.pop()))
        .ok()
        .flatten();
    match spare {
        Some(mut spare) => {
            spare.set(future);
            spare
        }
        None => ReusableBoxFuture::new(future),
    }
}

/// Puts a connection checked out for a pool of marker `M` into its slot.
fn insert_slot<M: 'static, B>(req: &mut Request<B>, conn: TcpConnection) {
    req.extensions_mut()
        .insert(Slot::<M>::Ready(conn.with_marker()));
}

/// [`insert_slot`], with leak detection on: the connection is lent to this request.
fn insert_slot_lent<M: 'static, B>(req: &mut Request<B>, conn: TcpConnection) {
    conn.lent_to(req.method(), req.uri());
    insert_slot::<M, B>(req, conn);
}

/// Keeps a finished checkout's box for a later request on this thread.
fn recycle(checkout: Checkout) {
    let _ = SPARE_CHECKOUTS.try_with(|spares| {
        if let Ok(mut spares) = spares.try_borrow_mut() {
            if spares.len() < SPARES_PER_THREAD {
                spares.push(checkout);
            }
        }
    });
}

pin_project! {
    /// The response future of [`TcpPoolService`](crate::TcpPoolService).
    ///
    /// In eager mode it first checks a connection out (answering `503`/`502` itself if that
    /// fails), then calls the inner service with the connection in the request's extensions.
    /// In lazy mode it is the inner service's future. Whatever the inner future still holds
    /// when it is dropped, unfinished or after answering, is dropped as abandoned.
    ///
    /// ```
    /// use axum_tcp_pool::{ResponseFuture, TcpPoolService};
    /// use tower::Service;
    ///
    /// fn assert_future<S, B>(_: &ResponseFuture<S, B>)
    /// where
    ///     S: Service<http::Request<B>>,
    ///     S::Response: axum::response::IntoResponse,
    /// {}
    /// ```
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
    }

    impl<S, ReqBody> PinnedDrop for ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        fn drop(this: Pin<&mut Self>) {
            let mut state = this.project().state;
            // Dropped before the inner service answered: the request was cancelled, and any
            // connection it used may be in the middle of an exchange.
            if let StateProj::Inner { .. } = state.as_mut().project() {
                scope::abandon(|| state.set(State::Done));
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    #[project_replace = StateReplace]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Checkout {
            checkout: Checkout,
            // `insert_slot::<M>` (or `insert_slot_lent`) for the layer's marker (keeps `M` out
            // of this type).
            insert: fn(&mut Request<ReqBody>, TcpConnection),
            inner: S,
            req: Request<ReqBody>,
        },
        Inner {
            #[pin]
            future: S::Future,
        },
        Done,
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    /// Checks out from `pool` (unmarked), for a layer of marker `M`.
    pub(crate) fn checkout<M: 'static>(pool: TcpPool, inner: S, req: Request<ReqBody>) -> Self {
        // Chosen here, so that with leak detection off the response path tests nothing.
        let insert = match pool.leak_detection() {
            true => insert_slot_lent::<M, ReqBody>,
            false => insert_slot::<M, ReqBody>,
        };
        let checkout = start_checkout(pool);
        ResponseFuture {
            state: State::Checkout {
                checkout,
                insert,
                inner,
                req,
            },
        }
    }

    pub(crate) fn inner(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Inner { future },
        }
    }
}

impl<S, ReqBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
    S::Response: IntoResponse,
{
    type Output = Result<Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Checkout { checkout, .. } => {
                    let result = ready!(checkout.poll(cx));
                    let StateReplace::Checkout {
                        checkout,
                        insert,
                        mut inner,
                        mut req,
                    } = state.as_mut().project_replace(State::Done)
                    else {
                        unreachable!("matched Checkout above");
                    };
                    recycle(checkout);
                    match result {
                        Ok(conn) => {
                            insert(&mut req, conn);
                            let future = inner.call(req);
                            state.set(State::Inner { future });
                        }
                        Err(err) => return Poll::Ready(Ok(err.into_response())),
                    }
                }
                StateProj::Inner { future } => {
                    let result = ready!(future.poll(cx));
                    // Answered, but it may still hold work that did not finish: a timeout
                    // layer inside this one keeps the handler it gave up on. What finished
                    // dropped its connections while it ran; what is dropped now did not.
                    scope::abandon(|| state.set(State::Done));
                    return Poll::Ready(result.map(IntoResponse::into_response));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}
