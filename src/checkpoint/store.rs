//! Where checkpoint objects live: a local directory (the default a user starts with) or an object
//! store (S3, GCS, Azure: what replicas on several machines share), behind the one small API the
//! checkpoints need (`put`, `get`, `list`, `delete`), over the `object_store` crate.
//!
//! Every write is one whole object that a reader sees entirely or not at all: the local directory
//! writes a staged file, fsyncs it and renames it into place (and fsyncs the directory, so that a
//! crash cannot leave an empty newest checkpoint behind after the older ones were deleted); an
//! object store takes one PUT. Names are relative paths of `[A-Za-z0-9._-]` segments (Kafka topic
//! names are made of those), checked before they reach a file system or a URL.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use object_store::{
    ObjectStore, ObjectStoreExt as _, ObjectStoreScheme, PutPayload, local::LocalFileSystem,
    path::Path,
};
// TLS for object_store's HTTP client (reqwest 0.13) without the aws-lc-rs provider, which needs
// cmake to build: the dependency is there for its `rustls-no-provider` feature alone, and
// `Store::open` installs ring, the provider the rest of the crate already uses.
use reqwest_0_13 as _;
use url::Url;

/// The environment variables an object store reads its credentials and endpoint from, by
/// prefix, the way object_store's `from_env` builders read them.
const ENV_PREFIXES: [&str; 3] = ["AWS_", "GOOGLE_", "AZURE_"];

/// Where checkpoints live: a local directory or an object store, under a prefix.
///
/// Cheap to clone (an `Arc` inside); every clone talks to the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    /// Every name is under this path of the store (empty for a local directory, which is the
    /// root of its own `LocalFileSystem`).
    prefix: Path,
    /// The location as given, without a URL's password or query (for logs and errors).
    location: String,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The location alone: the object store's own Debug shows its whole configuration.
        f.debug_struct("Store")
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

/// Why the store could not be opened, or an operation on it failed. Every message names the
/// location (without secrets) and the object.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The location is not a usable directory or object-store URL, or its store cannot be set up
    /// (a directory that cannot be created, missing cloud settings).
    #[error("cannot open the checkpoint store {location}: {reason}")]
    Open {
        /// The location as given, without secrets.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// A name that is not a relative path of `[A-Za-z0-9._-]` segments.
    #[error(
        "checkpoint store {location}: {name:?} is not a valid object name (relative, \
         `/`-separated segments of letters, digits, `.`, `_` and `-`, none of them `.` or `..`)"
    )]
    Name {
        /// The store's location.
        location: String,
        /// The name refused.
        name: String,
    },
    /// No object of that name.
    #[error("checkpoint store {location}: no object {name}")]
    NotFound {
        /// The store's location.
        location: String,
        /// The object's name.
        name: String,
    },
    /// The store failed an operation (I/O, network, credentials, permissions).
    // The store's reason is in the message rather than a `source`: a log line shows the message
    // alone, and an error chain would show it twice.
    #[error("checkpoint store {location}: cannot {op} {name}: {reason}")]
    Failed {
        /// The store's location.
        location: String,
        /// What was tried: `write`, `read`, `list` or `delete`.
        op: &'static str,
        /// The object's name (the directory's, for `list`).
        name: String,
        /// The store's reason.
        reason: String,
    },
}

impl Store {
    /// Opens the store at `location`: a local directory path (relative or absolute; created if
    /// missing), `file:///abs/dir`, or an object-store URL: `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix` (and the other schemes object_store's
    /// `parse_url` knows). Cloud credentials and endpoints come from the environment the way
    /// object_store's `from_env` builders read them (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, `GOOGLE_*`,
    /// `AZURE_*`, ...).
    pub fn open(location: &str) -> Result<Store, StoreError> {
        Self::open_with_options(location, env_options())
    }

    /// [`Store::open`] with the object-store settings given rather than read from the
    /// environment: `(key, value)` pairs named as the environment variables are (`AWS_REGION`)
    /// or as object_store's config keys are (`aws_region`, `region`); keys the store does not
    /// know are ignored, as `from_env` ignores them. A local directory takes none.
    pub fn open_with_options<I, K, V>(location: &str, options: I) -> Result<Store, StoreError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let shown = redact(location);
        let open_error = |reason: String| StoreError::Open {
            location: shown.clone(),
            reason,
        };
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = if !looks_like_url(location) {
            (
                local(std::path::Path::new(location)).map_err(open_error)?,
                Path::default(),
            )
        } else {
            let url = Url::parse(location)
                .map_err(|e| open_error(format!("not a directory path or a valid URL: {e}")))?;
            if url.scheme() == "file" {
                if url.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(open_error(
                        "a file:// URL names a directory on this machine: file:///abs/dir".into(),
                    ));
                }
                let dir = url
                    .to_file_path()
                    .map_err(|()| open_error("not a local directory path".into()))?;
                (local(&dir).map_err(open_error)?, Path::default())
            } else {
                // (object_store's own message quotes the whole URL, password included.)
                if ObjectStoreScheme::parse(&url).is_err() {
                    return Err(open_error(format!(
                        "not an object-store URL (scheme {:?}): give a directory, \
                         file:///abs/dir, s3://bucket/prefix, gs://bucket/prefix or \
                         az://container/prefix",
                        url.scheme()
                    )));
                }
                // reqwest (in object_store) takes the process' default rustls provider, and
                // panics without one: make it ring. An `Err` means one is installed already.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let (store, prefix) = object_store::parse_url_opts(&url, options)
                    .map_err(|e| open_error(scrub(&e.to_string(), &url)))?;
                (Arc::from(store), prefix)
            }
        };
        Ok(Store {
            inner: Arc::new(Inner {
                store,
                prefix,
                location: shown,
            }),
        })
    }

    /// The location as given, for logs (never a secret: a URL's `user:password@` and query are
    /// left out).
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// Writes one object atomically: a reader never sees part of it (a local directory: a
    /// staged file renamed into place; an object store: one PUT). Replaces an object of the same
    /// name.
    pub async fn put(&self, name: &str, bytes: Bytes) -> Result<(), StoreError> {
        let path = self.path(name)?;
        self.inner
            .store
            .put(&path, PutPayload::from_bytes(bytes))
            .await
            .map(drop)
            .map_err(|e| self.failed("write", name, e))
    }

    /// Reads one whole object.
    pub async fn get(&self, name: &str) -> Result<Bytes, StoreError> {
        let path = self.path(name)?;
        let read = async { self.inner.store.get(&path).await?.bytes().await };
        read.await.map_err(|e| self.failed("read", name, e))
    }

    /// Every object name under `dir` (relative to the store's prefix, e.g.
    /// `opscom.permits.v1/000..-ab.checkpoint`), sorted; `""` lists the whole store. A directory
    /// that does not exist holds nothing.
    pub async fn list(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        let found = self.list_with_times(dir).await?;
        Ok(found.into_iter().map(|(name, _)| name).collect())
    }

    /// [`Self::list`], with the time each object was last written.
    pub async fn list_with_times(
        &self,
        dir: &str,
    ) -> Result<Vec<(String, std::time::SystemTime)>, StoreError> {
        let path = if dir.is_empty() {
            self.inner.prefix.clone()
        } else {
            self.path(dir)?
        };
        let found: Vec<_> = self
            .inner
            .store
            .list(Some(&path))
            .try_collect()
            .await
            .map_err(|e| self.failed("list", dir, e))?;
        let mut names: Vec<(String, std::time::SystemTime)> = found
            .into_iter()
            .filter_map(|meta| {
                let rest = meta.location.prefix_match(&self.inner.prefix)?;
                let parts: Vec<_> = rest.map(|part| part.as_ref().to_owned()).collect();
                Some((parts.join("/"), meta.last_modified.into()))
            })
            .collect();
        names.sort_unstable();
        Ok(names)
    }

    /// Deletes one object; a missing one is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path(name)?;
        match self.inner.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("delete", name, e)),
        }
    }

    /// The store's path of a checked name.
    fn path(&self, name: &str) -> Result<Path, StoreError> {
        let valid = !name.is_empty()
            && name.split('/').all(|segment| {
                !segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            });
        if !valid {
            return Err(StoreError::Name {
                location: self.inner.location.clone(),
                name: name.to_owned(),
            });
        }
        let parts = self.inner.prefix.parts().chain(
            name.split('/')
                .map(|segment| object_store::path::PathPart::from(segment.to_owned())),
        );
        Ok(Path::from_iter(parts))
    }

    fn failed(&self, op: &'static str, name: &str, error: object_store::Error) -> StoreError {
        let location = self.inner.location.clone();
        let name = name.to_owned();
        match error {
            object_store::Error::NotFound { .. } => StoreError::NotFound { location, name },
            other => StoreError::Failed {
                location,
                op,
                name,
                reason: other.to_string(),
            },
        }
    }
}

/// A directory (created if missing) as a store rooted there, fsyncing what it writes.
fn local(dir: &std::path::Path) -> Result<Arc<dyn ObjectStore>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the directory: {e}"))?;
    let store = LocalFileSystem::new_with_prefix(dir).map_err(|e| e.to_string())?;
    Ok(Arc::new(store.with_fsync(true)))
}

/// A URL rather than a path: `scheme://...`, or `file:` (a directory path with `:` in it is
/// still a path).
fn looks_like_url(location: &str) -> bool {
    location.contains("://") || location.starts_with("file:")
}

/// The location for logs: a URL without its password (the whole `user:password@`) and query
/// (where a SAS token could be); a path or a URL without either as given.
fn redact(location: &str) -> String {
    if !looks_like_url(location) {
        return location.to_owned();
    }
    match Url::parse(location) {
        Ok(mut url) if url.password().is_some() || url.query().is_some() => {
            if url.password().is_some() {
                // Either can fail only for URLs that cannot have them, which these do.
                let _ = url.set_username("");
                let _ = url.set_password(None);
            }
            url.set_query(None);
            url.to_string()
        }
        Ok(_) => location.to_owned(),
        // Not a URL: `open` refuses it; show the scheme alone, in case the rest holds a secret.
        Err(_) => match location.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://..."),
            None => "file:...".to_owned(),
        },
    }
}

/// `message` without the URL's password, should the store's message quote the URL.
fn scrub(message: &str, url: &Url) -> String {
    match url.password() {
        Some(password) if !password.is_empty() => message.replace(password, "***"),
        _ => message.to_owned(),
    }
}

/// The object-store settings of the environment, as object_store's `from_env` builders read
/// them: every `AWS_*`, `GOOGLE_*` and `AZURE_*` variable, and the two unprefixed ones they read
/// (`SERVICE_ACCOUNT` for GCS, `MSI_ENDPOINT` for Azure). Each store ignores the keys it does
/// not know.
fn env_options() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)))
        .filter_map(|(key, value)| {
            if ENV_PREFIXES.iter().any(|p| key.starts_with(p)) {
                Some((key, value))
            } else {
                match key.as_str() {
                    "SERVICE_ACCOUNT" => Some(("google_service_account".to_owned(), value)),
                    "MSI_ENDPOINT" => Some(("azure_msi_endpoint".to_owned(), value)),
                    _ => None,
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary one, removed on drop.
    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new() -> Self {
            let path = std::env::temp_dir().join(format!(
                "permit-stats-store-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            Self(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn open(dir: &Dir) -> Store {
        Store::open(dir.0.to_str().expect("a UTF-8 temp path")).expect("opens")
    }

    #[tokio::test]
    async fn put_get_list_delete_in_a_directory_it_creates() {
        let dir = Dir::new();
        let store = open(&dir);
        assert!(dir.0.is_dir(), "the directory is created at open");
        assert_eq!(store.location(), dir.0.to_str().expect("utf-8"));

        let topic = "opscom.permits.v1";
        let names = [
            format!("{topic}/00000000000000000020-bb.checkpoint"),
            format!("{topic}/00000000000000000003-aa.checkpoint"),
            format!("{topic}/nested/deeper/x_y-z.bin"),
            "other.topic/1.checkpoint".to_owned(),
        ];
        for (i, name) in names.iter().enumerate() {
            let body = Bytes::from(vec![i as u8; 1000 * i + 1]);
            store.put(name, body).await.expect("put");
        }
        for (i, name) in names.iter().enumerate() {
            let body = store.get(name).await.expect("get");
            assert_eq!(body, Bytes::from(vec![i as u8; 1000 * i + 1]), "{name}");
        }
        // The file is where an operator would look for it.
        assert!(dir.0.join(topic).join("nested/deeper/x_y-z.bin").is_file());

        let listed = store.list(topic).await.expect("list");
        assert_eq!(
            listed,
            [
                format!("{topic}/00000000000000000003-aa.checkpoint"),
                format!("{topic}/00000000000000000020-bb.checkpoint"),
                format!("{topic}/nested/deeper/x_y-z.bin"),
            ]
        );
        assert_eq!(store.list("").await.expect("list all").len(), 4);
        assert!(store.list("no.such.topic").await.expect("empty").is_empty());

        // A second put replaces the object whole.
        store
            .put(&names[0], Bytes::from_static(b"second"))
            .await
            .expect("put again");
        assert_eq!(store.get(&names[0]).await.expect("get"), "second");

        store.delete(&names[0]).await.expect("delete");
        store
            .delete(&names[0])
            .await
            .expect("deleting a missing one is fine");
        assert!(!store.list(topic).await.expect("list").contains(&names[0]));
        match store.get(&names[0]).await {
            Err(StoreError::NotFound { name, .. }) => assert_eq!(name, names[0]),
            other => panic!("expected NotFound, got {other:?}"),
        }
        let message = store.get(&names[0]).await.expect_err("gone").to_string();
        assert!(message.contains(&names[0]), "{message}");
        assert!(message.contains(store.location()), "{message}");
    }

    #[tokio::test]
    async fn a_second_store_on_the_same_directory_sees_the_objects() {
        let dir = Dir::new();
        open(&dir)
            .put("t/a.checkpoint", Bytes::from_static(b"abc"))
            .await
            .expect("put");
        let url = format!("file://{}", dir.0.display());
        let again = Store::open(&url).expect("file:// URL");
        assert_eq!(again.location(), url);
        assert_eq!(again.list("t").await.expect("list"), ["t/a.checkpoint"]);
        assert_eq!(again.get("t/a.checkpoint").await.expect("get"), "abc");
    }

    #[tokio::test]
    async fn a_relative_path_is_a_directory_under_the_working_one() {
        let name = format!(
            "target/tmp-store-test-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let dir = Dir(std::env::current_dir().expect("cwd").join(&name));
        let store = Store::open(&name).expect("relative path");
        assert_eq!(store.location(), name);
        store
            .put("t/x", Bytes::from_static(b"1"))
            .await
            .expect("put");
        assert!(dir.0.join("t/x").is_file());
    }

    #[tokio::test]
    async fn names_outside_the_rules_are_refused_before_any_io() {
        let dir = Dir::new();
        let store = open(&dir);
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/",
            "../escape",
            "a/./b",
            "a b",
            "a#1",
            "é",
            "a\\b",
        ] {
            match store.put(bad, Bytes::new()).await {
                Err(StoreError::Name { name, .. }) => assert_eq!(name, bad),
                other => panic!("{bad:?}: expected a Name error, got {other:?}"),
            }
        }
        assert!(store.list("").await.expect("list").is_empty());
    }

    #[test]
    fn a_bad_location_fails_at_open_with_a_clear_message() {
        for (location, expected) in [
            ("ftp://host/dir", "not an object-store URL (scheme \"ftp\")"),
            ("file://host/dir", "file:///abs/dir"),
            ("s3://", "cannot open the checkpoint store s3://"),
        ] {
            let message = Store::open_with_options(location, [("", "")])
                .expect_err(location)
                .to_string();
            assert!(message.contains(expected), "{location}: {message}");
        }
        // A directory that cannot be created: below a file.
        let dir = Dir::new();
        std::fs::create_dir_all(&dir.0).expect("dir");
        let file = dir.0.join("file");
        std::fs::write(&file, b"x").expect("file");
        let below = file.join("sub");
        let message = Store::open(below.to_str().expect("utf-8"))
            .expect_err("below a file")
            .to_string();
        assert!(message.contains("cannot create the directory"), "{message}");
    }

    #[test]
    fn a_url_password_and_query_never_reach_the_location() {
        let store = Store::open_with_options(
            "s3://user:hunter2@bucket/prefix?sig=s3cr3t",
            [("aws_region", "us-east-1")],
        )
        .expect("opens: no I/O until used");
        assert_eq!(store.location(), "s3://bucket/prefix");
        assert!(!format!("{store:?}").contains("hunter2"));
        assert_eq!(
            redact("az://container@account/p"),
            "az://container@account/p"
        );
        assert_eq!(redact("gs://bucket/p"), "gs://bucket/p");
        assert_eq!(redact("not a url://x:y@z"), "not a url://...");
    }

    #[test]
    fn object_store_urls_open_without_io() {
        let store = Store::open_with_options(
            "s3://bucket/some/prefix",
            [
                ("AWS_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", "k"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
            ],
        )
        .expect("s3");
        // Half a key pair is refused at open, not at the first write.
        let message = Store::open_with_options("s3://bucket/p", [("AWS_ACCESS_KEY_ID", "k")])
            .expect_err("no secret")
            .to_string();
        assert!(message.contains("Missing SecretAccessKey"), "{message}");
        assert_eq!(store.inner.prefix.as_ref(), "some/prefix");
        assert_eq!(
            store.path("t/x.checkpoint").expect("valid").as_ref(),
            "some/prefix/t/x.checkpoint"
        );
        Store::open_with_options("memory:///", std::iter::empty::<(&str, &str)>()).expect("memory");
    }
}
