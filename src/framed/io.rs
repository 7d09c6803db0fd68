//! `Stream` and `Sink` for [`PooledFramed`]: `Framed`'s, each operation counted.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_sink::Sink;
use tokio_util::codec::{Decoder, Encoder};

use crate::framed::PooledFramed;

/// Reply frames: each one decoded takes one off the replies expected.
impl<C: Decoder, M> Stream for PooledFramed<C, M> {
    type Item = Result<C::Item, C::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_next(cx);
        match &poll {
            Poll::Ready(Some(Ok(_))) => this.replies.received(),
            Poll::Ready(Some(Err(_))) => this.codec_failed(),
            Poll::Ready(None) | Poll::Pending => {}
        }
        this.sync();
        poll
    }
}

/// Request frames: each one sent expects one reply frame (or what `expect_replies` said).
impl<C: Encoder<I>, M, I> Sink<I> for PooledFramed<C, M> {
    type Error = C::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: I) -> Result<(), Self::Error> {
        let this = self.get_mut();
        // Counted even if encoding fails: the frame may be half in the write buffer.
        this.replies.sent();
        let result = Pin::new(&mut this.inner).start_send(item);
        if result.is_err() {
            this.codec_failed();
        }
        this.sync();
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}
