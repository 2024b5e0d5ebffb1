//! The records thread: one [`Client`] (its own connection to the queue file, read-only in
//! practice; WAL lets it read while the daemon writes) that answers the HTTP handlers' calls
//! one at a time, off the async runtime and off the job loop.

use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::{Client, Config, Error, Result};

type Call = Box<dyn FnOnce(&mut Client) + Send>;

/// A handle to the records thread (cheap to clone).
#[derive(Clone)]
pub(super) struct Records {
    calls: mpsc::Sender<Call>,
}

impl Records {
    /// Starts the thread, which opens the queue at its first call.
    pub(super) fn start(config: Config) -> Result<Records> {
        let (calls, rx) = mpsc::channel::<Call>();
        std::thread::Builder::new()
            .name("procyard-http-records".into())
            .spawn(move || {
                let mut client = Client::new(config);
                for call in rx {
                    call(&mut client);
                }
            })
            .map_err(|source| Error::Os { action: "start the http records thread", source })?;
        Ok(Records { calls })
    }

    /// Runs `f` with the client on the records thread and returns what it returned.
    pub(super) async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let call: Call = Box::new(move |c| {
            let _ = tx.send(f(c));
        });
        let gone = || Error::Refused { message: "the http records thread has stopped".into() };
        self.calls.send(call).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}
