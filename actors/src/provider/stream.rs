//! The actor that runs one request's provider stream.

use std::sync::Arc;

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use futures_util::future::LocalBoxFuture;

use super::{ChunkSink, Provider, ProviderRequest};

/// One running request. Lives on the session's arbiter; stopping it drops the provider's future.
pub struct ProviderStream {
    job: Option<LocalBoxFuture<'static, ()>>,
}

/// Stops a running stream at once; no chunk is produced after it is handled.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CancelStream;

/// The session's grip on a running stream.
#[derive(Clone)]
pub struct StreamHandle {
    stop: Recipient<CancelStream>,
}

impl StreamHandle {
    pub fn cancel(&self) {
        self.stop.do_send(CancelStream);
    }
}

impl ProviderStream {
    /// Starts `provider` answering `request` on `arbiter` (the session's own).
    pub fn start_on(
        arbiter: &ArbiterHandle,
        provider: Arc<dyn Provider>,
        request: ProviderRequest,
        sink: ChunkSink,
    ) -> StreamHandle {
        let addr = ProviderStream::start_in_arbiter(arbiter, move |_| {
            ProviderStream::answering(provider, request, sink)
        });
        StreamHandle {
            stop: addr.recipient(),
        }
    }

    /// Starts `provider` answering `request` on the current thread, without a hop through the
    /// arbiter's queue.
    pub fn start_here(
        provider: Arc<dyn Provider>,
        request: ProviderRequest,
        sink: ChunkSink,
    ) -> StreamHandle {
        let addr = ProviderStream::answering(provider, request, sink).start();
        StreamHandle {
            stop: addr.recipient(),
        }
    }

    fn answering(provider: Arc<dyn Provider>, request: ProviderRequest, sink: ChunkSink) -> Self {
        let job = async move {
            sink.started(provider.name().into());
            let result = provider.stream(request, sink.clone()).await;
            sink.end(result);
        };
        ProviderStream {
            job: Some(Box::pin(job)),
        }
    }
}

impl Actor for ProviderStream {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(job) = self.job.take() {
            ctx.spawn(job.into_actor(self).map(|(), _, ctx| ctx.stop()));
        }
    }
}

impl Handler<CancelStream> for ProviderStream {
    type Result = ();

    fn handle(&mut self, _: CancelStream, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
