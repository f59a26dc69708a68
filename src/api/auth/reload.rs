//! The reload of the token file on SIGHUP or when it changes on disk, through the API's one
//! reload mechanism (`api/reload.rs`).
//!
//! [`spawn_reload`] re-reads the file on SIGHUP and when a poll (every second by default) sees its
//! size, modification time or inode change. The new set is built aside and swapped in whole through the
//! `ArcSwap`, so a request sees the old set or the new one, never a mix; a file that does not
//! parse keeps the old set and says why in the log.

use std::{path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{TokenFileError, Tokens};
use crate::api::reload::{self, Reload, Stamps};

/// Keeps a shared token set in step with the token file.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    tokens: Arc<ArcSwap<Tokens>>,
    stamps: Stamps,
}

impl Reloader {
    /// Watches `path`, whose contents `tokens` holds now.
    pub fn new(path: PathBuf, tokens: Arc<ArcSwap<Tokens>>) -> Self {
        let stamps = Stamps::new(vec![path.clone()]);
        Self {
            path,
            tokens,
            stamps,
        }
    }

    /// Whether the file looks different on disk from when it was last read.
    pub fn changed(&self) -> bool {
        self.stamps.changed()
    }

    /// Reads the file again and swaps the new set in whole, keeping the in-memory tokens; on an
    /// error the current set stays. Returns the number of tokens now accepted.
    pub fn reload(&mut self) -> Result<usize, TokenFileError> {
        self.stamps.mark();
        let mut fresh = Tokens::load(&self.path)?;
        // Only this reloader stores into `tokens`, so nothing can slip in between this load
        // and the store below.
        fresh.keep_pinned(&self.tokens.load());
        let count = fresh.len();
        self.tokens.store(Arc::new(fresh));
        Ok(count)
    }
}

impl Reload for Reloader {
    const WHAT: &'static str = "token file";

    fn changed(&self) -> bool {
        Reloader::changed(self)
    }

    fn reload_and_log(&mut self, trigger: &'static str) {
        let path = self.path.display().to_string();
        match self.reload() {
            Ok(tokens) => info!(%path, trigger, tokens, "token file reloaded"),
            Err(e) => warn!(
                %path,
                trigger,
                error = %e,
                "token file not reloaded; keeping the previous tokens"
            ),
        }
    }
}

/// Reloads `tokens` from `path` on SIGHUP and, when `poll` is given, whenever a poll at that
/// interval sees the file changed; until `cancel`. Without a path (a demo without a token file)
/// SIGHUP is still caught, so that it does not end the process, and only logged.
pub fn spawn_reload(
    path: Option<PathBuf>,
    tokens: Arc<ArcSwap<Tokens>>,
    poll: Option<Duration>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    reload::spawn(path.map(|path| Reloader::new(path, tokens)), poll, cancel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::{entry_for, generate};

    fn entry(token: &str, client: &str, name: &str) -> String {
        entry_for(token, client, name).expect("serializable")
    }

    /// A token file in a fresh directory of its own, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "permit-stats-auth-{}-{name}-{}",
                std::process::id(),
                generate()
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let file = Self(dir.join("tokens.toml"));
            file.write(text);
            file
        }

        /// Replaces the file the way careful tools do: write aside, then rename over it.
        fn write(&self, text: &str) {
            let aside = self.0.with_extension("tmp");
            std::fs::write(&aside, text).expect("write token file");
            std::fs::rename(&aside, &self.0).expect("rename token file");
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    #[test]
    fn a_reload_replaces_the_set_keeps_the_demo_token_and_survives_a_bad_file() {
        let (old, new, demo) = (generate(), generate(), generate());
        let file = TempFile::new("reload", &entry(&old, "C", "old"));
        let mut tokens = Tokens::load(&file.0).expect("valid file");
        tokens.add(&demo, "C", "demo");
        let shared = Arc::new(ArcSwap::from_pointee(tokens));
        let mut reloader = Reloader::new(file.0.clone(), Arc::clone(&shared));
        assert!(!reloader.changed());

        file.write(&entry(&new, "C", "new"));
        assert!(reloader.changed(), "a rename over the file is a change");
        assert_eq!(reloader.reload().expect("valid file"), 2);
        assert!(!reloader.changed());
        let now = shared.load();
        assert_eq!(
            now.authorize_stats(&old, "C"),
            None,
            "removed from the file"
        );
        assert_eq!(now.authorize_stats(&new, "C"), Some("new"));
        assert_eq!(now.authorize_stats(&demo, "C"), Some("demo"));

        file.write(&format!("{}\n[[tokens]\n", entry(&old, "C", "old")));
        assert!(matches!(
            reloader.reload(),
            Err(TokenFileError::Parse { .. })
        ));
        let kept = shared.load();
        assert_eq!(kept.authorize_stats(&new, "C"), Some("new"), "old set kept");
        assert_eq!(kept.authorize_stats(&old, "C"), None);
        assert_eq!(kept.authorize_stats(&demo, "C"), Some("demo"));
        assert!(
            !reloader.changed(),
            "a bad file is not retried until it changes"
        );

        drop(file);
        assert!(reloader.changed(), "a removed file is a change");
        assert!(matches!(
            reloader.reload(),
            Err(TokenFileError::Read { .. })
        ));
        assert_eq!(shared.load().authorize_stats(&new, "C"), Some("new"));
    }

    #[test]
    fn readers_see_the_old_set_or_the_new_one_never_a_mix() {
        let a: Vec<String> = (0..20).map(|_| generate()).collect();
        let b: Vec<String> = (0..20).map(|_| generate()).collect();
        let file_of =
            |tokens: &[String]| -> String { tokens.iter().map(|t| entry(t, "C", "t")).collect() };
        let (file_a, file_b) = (file_of(&a), file_of(&b));
        let file = TempFile::new("atomic", &file_a);
        let shared = Arc::new(ArcSwap::from_pointee(
            Tokens::load(&file.0).expect("valid file"),
        ));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (shared, stop, a, b) =
                    (Arc::clone(&shared), Arc::clone(&stop), a.clone(), b.clone());
                std::thread::spawn(move || {
                    let mut seen = [0usize; 2];
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let set = shared.load();
                        let in_a = a.iter().filter(|t| set.authorize_stats(t, "C").is_some());
                        let in_b = b.iter().filter(|t| set.authorize_stats(t, "C").is_some());
                        match (in_a.count(), in_b.count()) {
                            (20, 0) => seen[0] += 1,
                            (0, 20) => seen[1] += 1,
                            mix => panic!("a reader saw a mix of two token files: {mix:?}"),
                        }
                    }
                    seen
                })
            })
            .collect();
        let mut reloader = Reloader::new(file.0.clone(), Arc::clone(&shared));
        for round in 0..200 {
            file.write(if round % 2 == 0 { &file_b } else { &file_a });
            reloader.reload().expect("valid file");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for reader in readers {
            let seen = reader.join().expect("reader saw no mix");
            assert!(seen[0] + seen[1] > 0, "the reader ran");
        }
    }
}
