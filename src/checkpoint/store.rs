//! TEMPORARY stub (replaced by the object_store implementation).
#![allow(missing_docs, clippy::unused_async)]
use bytes::Bytes;
use std::path::PathBuf;
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    location: String,
}
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(String);
impl Store {
    pub fn open(location: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(location).map_err(|e| StoreError(e.to_string()))?;
        Ok(Self {
            root: location.into(),
            location: location.into(),
        })
    }
    pub fn location(&self) -> &str {
        &self.location
    }
    pub async fn put(&self, name: &str, bytes: Bytes) -> Result<(), StoreError> {
        let path = self.root.join(name);
        std::fs::create_dir_all(path.parent().expect("parent"))
            .map_err(|e| StoreError(e.to_string()))?;
        std::fs::write(path, bytes).map_err(|e| StoreError(e.to_string()))
    }
    pub async fn get(&self, name: &str) -> Result<Bytes, StoreError> {
        std::fs::read(self.root.join(name))
            .map(Bytes::from)
            .map_err(|e| StoreError(e.to_string()))
    }
    pub async fn list(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .list_with_times(dir)
            .await?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }
    pub async fn list_with_times(
        &self,
        dir: &str,
    ) -> Result<Vec<(String, std::time::SystemTime)>, StoreError> {
        let Ok(entries) = std::fs::read_dir(self.root.join(dir)) else {
            return Ok(vec![]);
        };
        let mut out = vec![];
        for e in entries.flatten() {
            let t = e
                .metadata()
                .and_then(|m| m.modified())
                .map_err(|e| StoreError(e.to_string()))?;
            out.push((format!("{dir}/{}", e.file_name().to_string_lossy()), t));
        }
        out.sort();
        Ok(out)
    }
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let _ = std::fs::remove_file(self.root.join(name));
        Ok(())
    }
}
