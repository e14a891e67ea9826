//! **forward**: a TCP forwarder that does nothing but copy bytes, on one thread. Pinned where the
//! gateway runs, with the overhead scenario's direct side pointed at it, it measures what the
//! extra hop through that core costs any forwarder: the floor under "added first chunk"
//! (scripts/bench-floor).

use tokio::net::{TcpListener, TcpStream};

use crate::client::BenchError;

/// Accepts on `listen` and copies every connection both ways to `to`, until killed.
pub async fn run(listen: &str, to: &str) -> Result<(), BenchError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| BenchError::Io(format!("cannot listen on {listen}: {e}")))?;
    eprintln!("[forward] {listen} -> {to}");
    loop {
        let (mut inbound, _) = listener
            .accept()
            .await
            .map_err(|e| BenchError::Io(format!("accept: {e}")))?;
        let to = to.to_owned();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(&to).await else {
                return;
            };
            // As the gateway does: no Nagle delay on either side.
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
    }
}
