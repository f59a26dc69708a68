//! Why ingest could not do something: the one error type of the stage.
//!
//! Two kinds share it. Those that stop ingest (a client that cannot be created, a thread that
//! cannot start or went away) are its outcome, and the wiring adds context to them; their cause
//! is a [`source`](std::error::Error::source), so a `{:#}` chain prints it once. Those that ingest
//! waits out or logs (no metadata yet, watermarks unreadable, the dead-letter scan unfinished)
//! are shown on their own, in `waiting_for` and in log fields, so their message carries the
//! cause. No message carries a record's payload or a credential: only topic, partition and the
//! client's own error.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// What went wrong in ingest.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A thread of the stage could not be started.
    #[error("cannot start the {thread} thread")]
    Spawn {
        /// Which thread: `ingest`, `apply` or `embedded-broker`.
        thread: &'static str,
        /// The operating system's refusal.
        source: std::io::Error,
    },
    /// The consumer could not be created (e.g. an invalid configuration).
    #[error("cannot create the Kafka consumer")]
    Consumer(#[source] KafkaError),
    /// The dead-letter producer could not be created.
    #[error("cannot create the dead-letter producer")]
    DeadLetterProducer(#[source] KafkaError),
    /// The apply thread ended while ingest still had batches for it.
    #[error("the apply thread stopped")]
    ApplyThreadGone,
    /// The broker did not answer a metadata request, or answered with an error.
    #[error("broker unreachable or metadata failed: {0}")]
    Metadata(KafkaError),
    /// The topic is not in the broker's metadata.
    #[error("topic {topic} is not in the metadata")]
    TopicMissing {
        /// The topic asked for.
        topic: String,
    },
    /// The broker's metadata carries an error for the topic (e.g. it does not exist).
    #[error("topic {topic}: {code}")]
    Topic {
        /// The topic asked for.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
    /// A partition's low and high watermarks could not be read.
    #[error("cannot read the watermarks of partition {partition}: {error}")]
    Watermarks {
        /// The partition.
        partition: i32,
        /// The client's error.
        error: KafkaError,
    },
    /// A partition could not be added to the list to assign.
    #[error("cannot add partition {partition} to the assignment: {error}")]
    AddPartition {
        /// The partition.
        partition: i32,
        /// The client's error.
        error: KafkaError,
    },
    /// The consumer refused the assignment.
    #[error("cannot assign partitions: {0}")]
    Assign(KafkaError),
    /// The consumer that reads the dead-letter topic at start could not be created.
    #[error("cannot create the dead-letter scan's consumer: {0}")]
    ScanConsumer(KafkaError),
    /// Reading the dead-letter topic at start did not finish in time (or shutdown came first).
    #[error("not done within {seconds} s")]
    ScanUnfinished {
        /// The deadline, in seconds.
        seconds: u64,
    },
    /// librdkafka's mock cluster could not be created.
    #[error("cannot start the embedded broker")]
    EmbeddedBroker(#[source] KafkaError),
    /// The embedded broker's thread ended before it said whether the broker started.
    #[error("the embedded broker's thread ended early")]
    EmbeddedBrokerGone,
}
