//! The fake OpenAI-compatible upstream, run in this process on a thread of its own (it is an
//! actix-web server and needs an actix system).

use std::{net::SocketAddr, thread};

use fake_upstream::{FakeOptions, FakeUpstream};
use tokio::sync::oneshot;

/// A fake upstream on `127.0.0.1:0`; stops when dropped.
pub struct LocalUpstream {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl LocalUpstream {
    pub fn start(workers: usize) -> std::io::Result<LocalUpstream> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        thread::Builder::new()
            .name("fake-upstream".into())
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    let options = FakeOptions {
                        workers,
                        ..FakeOptions::default()
                    };
                    match FakeUpstream::start_with(([127, 0, 0, 1], 0).into(), options).await {
                        Ok(fake) => {
                            let _ = addr_tx.send(Ok(fake.addr()));
                            let _ = stopped.await;
                            fake.stop().await;
                        }
                        Err(e) => {
                            let _ = addr_tx.send(Err(e));
                        }
                    }
                })
            })?;
        let addr = addr_rx
            .recv()
            .map_err(|_| std::io::Error::other("fake upstream thread died"))??;
        Ok(LocalUpstream { addr, _stop: stop })
    }

    /// `http://ADDR/v1`, what the gateway's OpenAI provider is given as its base URL.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}
