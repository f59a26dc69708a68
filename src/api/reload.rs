//! Reloading files the API reads at start (the token file, the TLS certificate and key) on
//! SIGHUP and when they change on disk: one mechanism for both.
//!
//! [`spawn`] calls a [`Reload`] on SIGHUP and whenever a poll (every second by default) sees one of
//! its files change size, modification time or inode ([`Stamps`]). Each reload builds the new
//! value aside and swaps it in whole; one that fails keeps the old value and says why in the log.
//! Polling was chosen over inotify (the `notify` crate): one `stat` a second costs nothing, and it
//! also sees what inotify on the file misses: an editor or a Kubernetes ConfigMap or Secret
//! replacing the file by a rename or a symlink swap, and files on network filesystems.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What a file looked like on disk when it was last read; a change of any part means it was
/// written or replaced since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    device: u64,
    inode: u64,
}

impl FileStamp {
    /// The file's stamp; `None` when it cannot be read (missing, no permission).
    fn of(path: &Path) -> Option<Self> {
        // `metadata` follows symlinks, so a swapped link target counts as a change.
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let (device, inode) = {
            use std::os::unix::fs::MetadataExt as _;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (device, inode) = (0, 0);
        Some(Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            device,
            inode,
        })
    }
}

/// The stamps of a few files as they were when last read.
#[derive(Debug)]
pub(crate) struct Stamps {
    paths: Vec<PathBuf>,
    seen: Vec<Option<FileStamp>>,
}

impl Stamps {
    /// Stamps `paths` as they are now.
    pub(crate) fn new(paths: Vec<PathBuf>) -> Self {
        let seen = paths.iter().map(|p| FileStamp::of(p)).collect();
        Self { paths, seen }
    }

    /// Whether any of the files looks different on disk from when it was last stamped.
    pub(crate) fn changed(&self) -> bool {
        self.paths
            .iter()
            .zip(&self.seen)
            .any(|(path, seen)| FileStamp::of(path) != *seen)
    }

    /// Stamps the files again. Call it before reading them, so that a write landing during the
    /// read is seen as a change by the next poll and read again.
    pub(crate) fn mark(&mut self) {
        for (path, seen) in self.paths.iter().zip(&mut self.seen) {
            *seen = FileStamp::of(path);
        }
    }
}

/// Something [`spawn`] keeps in step with files on disk.
pub(crate) trait Reload: Send + 'static {
    /// What is reloaded, for the logs ("token file", "TLS certificate").
    const WHAT: &'static str;

    /// Whether the files changed since the last reload.
    fn changed(&self) -> bool;

    /// Reads the files again and swaps the new value in, or keeps the old one; logs either way.
    fn reload_and_log(&mut self, trigger: &'static str);
}

/// Reloads `watched` on SIGHUP and, when `poll` is given, whenever a poll at that interval sees
/// its files changed; until `cancel`. Without anything to watch (a demo without a token file)
/// SIGHUP is still caught, so that it does not end the process, and only logged.
///
/// Each call listens for SIGHUP on its own (tokio hands a signal to every listener), so the token
/// file and the certificate reload independently: a bad one does not hold the other back.
pub(crate) fn spawn<R: Reload>(
    mut watched: Option<R>,
    poll: Option<Duration>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    #[cfg(unix)]
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            warn!(
                what = R::WHAT,
                "cannot listen for SIGHUP; reloading only on change: {e}"
            );
            None
        }
    };
    let mut ticks = poll.filter(|_| watched.is_some()).map(|every| {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    tokio::spawn(async move {
        loop {
            #[cfg(unix)]
            let hangup_received = async {
                match &mut hangup {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup_received = std::future::pending::<Option<()>>();
            let tick = async {
                match &mut ticks {
                    Some(ticks) => ticks.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => break,
                Some(()) = hangup_received => match &mut watched {
                    Some(watched) => watched.reload_and_log("SIGHUP"),
                    None => info!(what = R::WHAT, "SIGHUP: nothing to reload"),
                },
                _ = tick => {
                    if let Some(watched) = watched.as_mut().filter(|w| w.changed()) {
                        watched.reload_and_log("file changed");
                    }
                }
            }
        }
    })
}
