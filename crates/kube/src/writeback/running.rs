//! The task guard of a running write-back pass.

use std::future::Future;

use tokio::task::JoinHandle;

use super::WriteBackOutcome;

/// A running write-back pass of one session, aborted when dropped: when the cluster's runtime
/// stops (the member left the mesh) or another session takes over.
pub(crate) struct Running {
    /// The session whose client and stores the pass uses.
    pub(crate) session: u64,
    handle: JoinHandle<WriteBackOutcome>,
}

impl Running {
    pub(crate) fn spawn(
        session: u64,
        pass: impl Future<Output = WriteBackOutcome> + Send + 'static,
    ) -> Self {
        Self {
            session,
            handle: tokio::spawn(pass),
        }
    }

    /// Waits for the pass to end (not to be called again once it has returned).
    pub(crate) async fn finished(&mut self) -> WriteBackOutcome {
        match (&mut self.handle).await {
            Ok(outcome) => outcome,
            Err(e) => WriteBackOutcome {
                errors: vec![format!("the MCS write-back task failed: {e}")],
                ..WriteBackOutcome::default()
            },
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dropped_pass_is_aborted() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let running = Running::spawn(1, async move {
            // Holds the sender until aborted.
            let _tx = tx;
            std::future::pending::<()>().await;
            WriteBackOutcome::default()
        });
        drop(running);
        assert!(
            rx.await.is_err(),
            "the task was aborted, dropping the sender"
        );
    }
}
