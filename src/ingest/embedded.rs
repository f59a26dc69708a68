//! The embedded broker: librdkafka's mock cluster, so that `permit-stats serve` works out of the
//! box with no Kafka configured.
//!
//! It speaks the Kafka protocol on a loopback port, so the service (and any other librdkafka
//! client, such as `permit-stats produce`) talks to it exactly as to a real cluster. It is no
//! evidence about real Kafka, and it keeps only a few MiB per partition: good for a demo and a
//! first look, not for production. The cluster is `!Send`, so one thread owns it from start to
//! stop; [`EmbeddedBroker`] owns that thread and joins it when dropped.

use std::{
    sync::mpsc,
    thread::{self, JoinHandle},
};

use rdkafka::{error::KafkaError, mocking::MockCluster};

use super::IngestError;

/// A running embedded broker; dropping it stops it.
#[derive(Debug)]
pub(crate) struct EmbeddedBroker {
    bootstrap: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts a one-broker mock cluster with `topic` created with `partitions` partitions.
    pub(crate) fn start(topic: &str, partitions: i32) -> Result<Self, IngestError> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, KafkaError>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let topic = topic.to_owned();
        let thread = thread::Builder::new()
            .name("embedded-broker".into())
            .spawn(move || {
                let cluster = MockCluster::new(1).and_then(|cluster| {
                    cluster.create_topic(&topic, partitions, 1)?;
                    Ok(cluster)
                });
                match cluster {
                    Ok(cluster) => {
                        let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                        // Owns the cluster until told to stop (or the owner is gone).
                        let _ = stop_rx.recv();
                        drop(cluster);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|source| IngestError::Spawn {
                thread: "embedded-broker",
                source,
            })?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| IngestError::EmbeddedBrokerGone)?
            .map_err(IngestError::EmbeddedBroker)?;
        Ok(Self {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The bootstrap address, e.g. `127.0.0.1:40123`.
    pub(crate) fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
