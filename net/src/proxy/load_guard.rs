//! The router's load bookkeeping for one proxied request, tied to the upstream response
//! body as it flows to the client.
//!
//! [`RequestLoad`] holds the request id the router charged when it routed. The response
//! body is wrapped in a [`MeteredBody`]: its first data frame marks the prefill done (for
//! a stream that is the first token; for a whole answer, its arrival), its end finishes the
//! request. Dropping it before the end (the client went away, or the upstream stream broke)
//! finishes the request too, counted as cancelled or failed; dropping the upstream body
//! closes that connection, so the engine sees its client go and cancels the request. So
//! every routed request leaves the load exactly once, however it ends.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use kvroute_core::route::{RequestId, Router};

use super::ProxyMetrics;

/// How a proxied request ended, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Completed,
    Cancelled,
    Failed,
}

/// A routed request's load: finished exactly once.
pub struct RequestLoad {
    router: Arc<Router>,
    metrics: Arc<ProxyMetrics>,
    request: Option<RequestId>,
    prefill_marked: bool,
    ending: Option<Ending>,
}

impl RequestLoad {
    pub fn new(router: Arc<Router>, metrics: Arc<ProxyMetrics>, request: Option<RequestId>) -> RequestLoad {
        RequestLoad { router, metrics, request, prefill_marked: false, ending: None }
    }

    fn prefill_done(&mut self) {
        if !self.prefill_marked {
            self.prefill_marked = true;
            if let Some(request) = self.request {
                self.router.prefill_done(request);
            }
        }
    }

    fn end(&mut self, ending: Ending) {
        if self.ending.is_none() {
            self.ending = Some(ending);
            if let Some(request) = self.request {
                self.router.finish(request);
            }
            let counter = match ending {
                Ending::Completed => &self.metrics.completed,
                Ending::Cancelled => &self.metrics.cancelled,
                Ending::Failed => &self.metrics.upstream_broken,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Released without a response to the client (the attempt failed and the proxy retries
    /// elsewhere or gives up): not counted as an ending.
    pub fn release_failed_attempt(mut self) {
        if let Some(request) = self.request.take() {
            self.router.finish(request);
        }
        self.ending = Some(Ending::Failed);
    }
}

impl Drop for RequestLoad {
    fn drop(&mut self) {
        self.end(Ending::Cancelled);
    }
}

/// An upstream body passed through to the client with its request's load bookkeeping.
pub struct MeteredBody<B> {
    inner: B,
    load: RequestLoad,
}

impl<B> MeteredBody<B> {
    pub fn new(inner: B, load: RequestLoad) -> MeteredBody<B> {
        MeteredBody { inner, load }
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if frame.is_data() {
                    this.load.prefill_done();
                }
                // A body of known length ends with its last frame: the server sees
                // `is_end_stream` and never polls for the end, so this is the end.
                if this.inner.is_end_stream() {
                    this.load.end(Ending::Completed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.load.end(Ending::Failed);
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                this.load.prefill_done();
                this.load.end(Ending::Completed);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
