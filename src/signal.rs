//! SIGTERM / SIGINT handling (Ctrl-C where there are no unix signals).

use std::fmt;
use std::io;

use tokio::runtime::Handle;

use crate::task::{catch_panics, Task};
use crate::{ConfigError, Error, SecondSignal, Shutdown};

/// A signal that asks for a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGTERM (unix).
    Terminate,
    /// SIGINT, or Ctrl-C.
    Interrupt,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
        })
    }
}

/// Registered signal streams: installed when created, so no signal is missed after.
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    async fn recv(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                Some(()) = self.terminate.recv() => Signal::Terminate,
                Some(()) = self.interrupt.recv() => Signal::Interrupt,
                else => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => Signal::Interrupt,
                Err(_) => std::future::pending().await,
            }
        }
    }
}

impl Shutdown {
    /// Triggers this shutdown on SIGTERM or SIGINT (Ctrl-C on other platforms).
    ///
    /// The handlers are installed before this returns, so a signal that arrives right
    /// after is not missed (and no longer kills the process). A second signal during the
    /// shutdown does what [`Builder::on_second_signal`](crate::Builder::on_second_signal)
    /// says. The listening task ends when the shutdown is done. A second call installs
    /// nothing more: each signal is handled, and logged, once.
    ///
    /// # Errors
    /// [`Error::Config`] outside a tokio runtime; [`Error::Signal`] if the handlers cannot
    /// be installed.
    pub fn trigger_on_signals(&self) -> Result<(), Error> {
        let handle = Handle::try_current().map_err(|_| Error::Config(ConfigError::NoRuntime))?;
        let _guard = handle.enter();
        let signals = Signals::new().map_err(Error::Signal)?;
        if !self.install_signals() {
            return Ok(());
        }
        let shutdown = self.clone();
        handle.spawn(async move {
            let listening = listen(shutdown.clone(), signals);
            catch_panics(Task::Signals, shutdown.counters(), listening).await;
        });
        Ok(())
    }
}

/// Triggers `shutdown` on the first signal; each later one escalates or is logged.
async fn listen(shutdown: Shutdown, mut signals: Signals) {
    let done = shutdown.wait();
    tokio::pin!(done);
    let first = tokio::select! {
        signal = signals.recv() => signal,
        _ = &mut done => return,
    };
    shutdown.trigger_by(Some(&first));
    loop {
        let again = tokio::select! {
            signal = signals.recv() => signal,
            _ = &mut done => return,
        };
        match shutdown.second_signal() {
            SecondSignal::Escalate => {
                tracing::warn!(signal = %again, "second signal: escalating, force-closing now");
                shutdown.escalate();
            }
            SecondSignal::Ignore => {
                tracing::info!(signal = %again, "signal received: shutdown already under way");
            }
        }
    }
}
