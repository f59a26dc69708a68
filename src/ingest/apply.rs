//! The apply thread, and the decoded batch the ingest thread hands it.
//!
//! The records cannot leave the thread that polled them, so the ingest thread decodes a batch
//! into one owned buffer and sends it here; this thread applies and publishes it as one step,
//! so that applying one batch overlaps with polling and decoding the next (see BENCHMARKS.md,
//! "What each change bought"). One batch is in flight at most, and buffers go back and forth,
//! so a steady replay allocates nothing per batch. The thread is owned by [`Applier`], which
//! joins it when dropped.

use std::{
    ops::Range,
    sync::{Arc, mpsc},
    thread,
};

use crate::{
    events::{EventRef, PermitEvent},
    projection::{Projection, Tally},
};

use super::IngestError;

/// One batch's events, decoded, with their strings copied into one buffer so that the batch can
/// go to the apply thread (the records cannot leave the thread that polled them), and the offsets
/// it takes each partition to once applied.
#[derive(Default)]
pub(super) struct DecodedBatch {
    text: String,
    events: Vec<PermitEvent<Range<u32>>>,
    next_offsets: Vec<(i32, i64)>,
}

impl DecodedBatch {
    /// Adds one decoded event, copying its strings into the batch's buffer.
    // Called per record from tracker.rs, another module (and so perhaps another codegen unit)
    // since the split: the hint keeps it inlinable there, as it was within one module.
    #[inline]
    pub(super) fn push(&mut self, event: EventRef<'_>) {
        let text = &mut self.text;
        self.events.push(event.map_strings(|s| {
            let start = text.len() as u32;
            text.push_str(s);
            start..text.len() as u32
        }));
    }

    /// Notes that the record at `offset` of `partition` is in the batch.
    #[inline]
    pub(super) fn taken(&mut self, partition: i32, offset: i64) {
        match self.next_offsets.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, next)) => *next = (*next).max(offset + 1),
            None => self.next_offsets.push((partition, offset + 1)),
        }
    }

    /// The events, borrowing their strings from the batch.
    fn borrowed(&self) -> Vec<EventRef<'_>> {
        let text = |range: &Range<u32>| &self.text[range.start as usize..range.end as usize];
        self.events
            .iter()
            .map(|event| event.map_strings(text))
            .collect()
    }

    fn clear(&mut self) {
        self.text.clear();
        self.events.clear();
        self.next_offsets.clear();
    }
}

/// What the apply thread did with a batch.
pub(super) struct Applied {
    pub(super) tally: Tally,
    pub(super) next_offsets: Vec<(i32, i64)>,
}

/// The apply thread and its two channels: batches to apply, and applied ones (with their
/// buffers) back.
pub(super) struct Applier {
    batches: Option<mpsc::SyncSender<DecodedBatch>>,
    results: mpsc::Receiver<(Tally, DecodedBatch)>,
    thread: Option<thread::JoinHandle<()>>,
    /// Whether a batch is being applied, which the consumer's position already counts.
    pub(super) in_flight: bool,
    spare: Option<DecodedBatch>,
}

impl Applier {
    pub(super) fn start(projection: Arc<Projection>) -> Result<Self, IngestError> {
        let (batches, jobs) = mpsc::sync_channel::<DecodedBatch>(1);
        let (done, results) = mpsc::sync_channel(1);
        let thread = thread::Builder::new().name("apply".into()).spawn(move || {
            for decoded in jobs {
                let mut batch = projection.batch();
                batch.apply_all(&decoded.borrowed());
                let tally = batch.finish();
                if done.send((tally, decoded)).is_err() {
                    break;
                }
            }
        });
        let thread = thread.map_err(|source| IngestError::Spawn {
            thread: "apply",
            source,
        })?;
        Ok(Self {
            batches: Some(batches),
            results,
            thread: Some(thread),
            in_flight: false,
            spare: None,
        })
    }

    /// An empty batch, reusing the buffers of one already applied.
    pub(super) fn spare(&mut self) -> DecodedBatch {
        let mut batch = self.spare.take().unwrap_or_default();
        batch.clear();
        batch
    }

    /// Hands a batch to the apply thread; the caller has waited for the one before.
    pub(super) fn send(&mut self, batch: DecodedBatch) -> Result<(), IngestError> {
        self.batches
            .as_ref()
            .and_then(|batches| batches.send(batch).ok())
            .ok_or(IngestError::ApplyThreadGone)?;
        self.in_flight = true;
        Ok(())
    }

    /// Waits for the batch in flight, if there is one.
    pub(super) fn wait(&mut self) -> Result<Option<Applied>, IngestError> {
        if !self.in_flight {
            return Ok(None);
        }
        let (tally, mut batch) = self
            .results
            .recv()
            .map_err(|_| IngestError::ApplyThreadGone)?;
        self.in_flight = false;
        let next_offsets = std::mem::take(&mut batch.next_offsets);
        self.spare = Some(batch);
        Ok(Some(Applied {
            tally,
            next_offsets,
        }))
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        // Closing the channel ends the thread once the batch in flight (if any) is applied.
        self.batches = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
