//! Fault injection, switchable at run time.

use tokio::sync::watch;

/// How the server misbehaves, for failure tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Behave normally.
    #[default]
    None,
    /// Accept connections and read requests but never answer. Hung requests stay pending
    /// until the fault is lifted, then their connections are closed unanswered; open watch
    /// streams send nothing while the fault lasts.
    Hang,
    /// Answer every new request with this HTTP code, as a `Status` (e.g. 503, 500, 429).
    /// Open watch streams are unaffected.
    Status(u16),
}

/// The shared switches: the current fault, and a generation bumped to end all watches.
#[derive(Debug)]
pub(crate) struct FaultControl {
    fault: watch::Sender<Fault>,
    drops: watch::Sender<u64>,
}

impl FaultControl {
    pub fn new() -> Self {
        Self {
            fault: watch::Sender::new(Fault::None),
            drops: watch::Sender::new(0),
        }
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    pub fn current(&self) -> Fault {
        *self.fault.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Fault> {
        self.fault.subscribe()
    }

    /// Ends every open watch stream (they see the change and finish cleanly).
    pub fn drop_watches(&self) {
        self.drops.send_modify(|g| *g += 1);
    }

    pub fn drops(&self) -> watch::Receiver<u64> {
        self.drops.subscribe()
    }
}
