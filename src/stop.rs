//! Stop flags: a `watch::Receiver<bool>` that turns true once to stop a task (graceful shutdown,
//! leadership lost, a listener draining).

use tokio::sync::watch;

/// Turns true when the watched flag is (or becomes) true; never if the sender is gone.
pub(crate) async fn flag_set(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}
