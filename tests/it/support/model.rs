//! The reference model of the five rules of `spec/events.md` ("What the projection does with each
//! event"): a `HashMap` of (client, reference id) that follows the rules literally, event by
//! event. Every test that needs the expected answer computes it here, never with the crate's
//! projection: the property tests compare the projection with it event by event, the Kafka tests
//! compare the running binary's answers with it byte for byte.
//!
//! It reads both event types the tests make, the crate's validated [`events::PermitEvent`] and the
//! wire's [`pb::PermitEvent`], through [`ModelEvent`], a plain borrowed copy of the fields the
//! rules look at.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
};

use permit_stats::events::{self, pb};

/// What one event changes, as the rules see it.
#[derive(Debug, Clone, Copy)]
pub enum ModelChange<'a> {
    /// Rule 1.
    Created {
        /// The zone.
        zone: &'a str,
        /// The permit type.
        permit_type: &'a str,
    },
    /// Rules 2 and 3.
    Updated {
        /// The zone, when the update carries one.
        zone: Option<&'a str>,
        /// The type, when the update carries one.
        permit_type: Option<&'a str>,
    },
    /// Rule 4.
    Deleted,
}

/// The fields of an event the rules look at.
#[derive(Debug, Clone, Copy)]
pub struct ModelEvent<'a> {
    /// The client code.
    pub client: &'a str,
    /// The permit's id within its client.
    pub reference_id: &'a str,
    /// 0 = no revision.
    pub revision: u64,
    /// When it happened, in milliseconds since the Unix epoch.
    pub occurred_at_ms: Option<i64>,
    /// The change.
    pub change: ModelChange<'a>,
}

impl<'a> From<&'a events::PermitEvent> for ModelEvent<'a> {
    fn from(event: &'a events::PermitEvent) -> Self {
        let change = match &event.change {
            events::Change::Created { zone, permit_type } => {
                ModelChange::Created { zone, permit_type }
            }
            events::Change::Updated { zone, permit_type } => ModelChange::Updated {
                zone: zone.as_deref(),
                permit_type: permit_type.as_deref(),
            },
            events::Change::Deleted => ModelChange::Deleted,
        };
        Self {
            client: &event.client,
            reference_id: &event.reference_id,
            revision: event.revision.unwrap_or(0),
            occurred_at_ms: event.occurred_at_ms,
            change,
        }
    }
}

impl<'a> From<&'a pb::PermitEvent> for ModelEvent<'a> {
    fn from(event: &'a pb::PermitEvent) -> Self {
        use pb::permit_event::Change;
        let change = match event
            .change
            .as_ref()
            .expect("generated events have a change")
        {
            Change::Created(c) => ModelChange::Created {
                zone: &c.zone,
                permit_type: &c.permit_type,
            },
            Change::Updated(u) => ModelChange::Updated {
                zone: u.zone.as_deref(),
                permit_type: u.permit_type.as_deref(),
            },
            Change::Deleted(_) => ModelChange::Deleted,
        };
        Self {
            client: &event.client,
            reference_id: &event.reference_id,
            revision: event.revision,
            occurred_at_ms: event
                .occurred_at
                .as_ref()
                .map(|at| at.seconds * 1000 + i64::from(at.nanos) / 1_000_000),
            change,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelPermit {
    live: bool,
    zone: String,
    permit_type: String,
    /// 0 = no revision stored.
    revision: u64,
}

/// What the rules say one event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelOutcome {
    /// Rule 1.
    Created,
    /// Rule 2, or rule 3 with zone and type.
    Updated,
    /// A delete of a live permit.
    Deleted,
    /// Rule 3 without both fields.
    OrphanUpdate,
    /// Rule 4.
    OrphanDelete,
    /// Rule 5.
    Stale,
}

impl ModelOutcome {
    /// The label of the event counters of `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
            Self::OrphanUpdate => "orphan_update",
            Self::OrphanDelete => "orphan_delete",
            Self::Stale => "stale_revision",
        }
    }
}

/// (zone, type, total), sorted by zone bytes then type bytes, zeros left out.
pub type Rows = Vec<(String, String, u64)>;

/// The five rules, literally, over a `HashMap` of (client, reference id).
#[derive(Debug, Default, Clone)]
pub struct Model {
    permits: HashMap<(String, String), ModelPermit>,
    /// Newest `occurred_at` (ms) among the events applied to each client.
    pub as_of_ms: HashMap<String, i64>,
    /// Outcomes so far, by the label of the event counters of `/metrics`.
    pub outcomes: HashMap<&'static str, u64>,
}

impl Model {
    /// Applies one valid event.
    pub fn apply<'a>(&mut self, event: impl Into<ModelEvent<'a>>) -> ModelOutcome {
        let event = event.into();
        let key = (event.client.to_owned(), event.reference_id.to_owned());
        let stored = self.permits.get(&key).cloned();
        // Rule 5 (checked first): both carry a revision and the event's is not greater: stale.
        if let Some(s) = &stored
            && event.revision != 0
            && s.revision != 0
            && event.revision <= s.revision
        {
            return self.count(ModelOutcome::Stale);
        }
        let live = stored.as_ref().filter(|s| s.live);
        let (next, outcome) = match event.change {
            // Rule 1: live with exactly these fields, whatever it was.
            ModelChange::Created { zone, permit_type } => (
                Some((zone.to_owned(), permit_type.to_owned())),
                ModelOutcome::Created,
            ),
            ModelChange::Updated { zone, permit_type } => match live {
                // Rule 2: merge the present fields into the live permit.
                Some(s) => (
                    Some((
                        zone.map_or_else(|| s.zone.clone(), str::to_owned),
                        permit_type.map_or_else(|| s.permit_type.clone(), str::to_owned),
                    )),
                    ModelOutcome::Updated,
                ),
                // Rule 3: unknown or deleted: a create when it carries zone and type.
                None => match (zone, permit_type) {
                    (Some(z), Some(t)) => {
                        (Some((z.to_owned(), t.to_owned())), ModelOutcome::Updated)
                    }
                    _ => return self.count(ModelOutcome::OrphanUpdate),
                },
            },
            ModelChange::Deleted => match live {
                Some(_) => (None, ModelOutcome::Deleted),
                // Rule 4.
                None => return self.count(ModelOutcome::OrphanDelete),
            },
        };
        // Rule 5: an applied event with a revision stores it, one without keeps the stored one.
        let revision = if event.revision != 0 {
            event.revision
        } else {
            stored.as_ref().map_or(0, |s| s.revision)
        };
        let state = match next {
            Some((zone, permit_type)) => ModelPermit {
                live: true,
                zone,
                permit_type,
                revision,
            },
            // A delete of a live permit leaves a tombstone with the revision.
            None => {
                let s = stored.expect("a delete applies only to a live permit");
                ModelPermit {
                    live: false,
                    revision,
                    ..s
                }
            }
        };
        self.permits.insert(key, state);
        if let Some(ms) = event.occurred_at_ms {
            let entry = self.as_of_ms.entry(event.client.to_owned()).or_insert(ms);
            *entry = (*entry).max(ms);
        }
        self.count(outcome)
    }

    fn count(&mut self, outcome: ModelOutcome) -> ModelOutcome {
        *self.outcomes.entry(outcome.label()).or_default() += 1;
        outcome
    }

    /// Whether the permit is live.
    pub fn is_live(&self, client: &str, id: &str) -> bool {
        self.permits
            .get(&(client.to_owned(), id.to_owned()))
            .is_some_and(|p| p.live)
    }

    /// Live permits of every client.
    pub fn live_permits(&self) -> usize {
        self.permits.values().filter(|p| p.live).count()
    }

    /// The non-zero counters of one client, sorted by zone then type in byte order (`String`'s
    /// `Ord` is byte order, the projection's); only the given zones when `zones` is `Some`.
    pub fn rows(&self, client: &str, zones: Option<&[&str]>) -> Rows {
        let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
        for ((c, _), p) in &self.permits {
            if c == client && p.live && zones.is_none_or(|z| z.contains(&p.zone.as_str())) {
                *counts
                    .entry((p.zone.clone(), p.permit_type.clone()))
                    .or_default() += 1;
            }
        }
        counts.into_iter().map(|((z, t), n)| (z, t, n)).collect()
    }

    /// The exact response body the stats request must answer: the vendor's key order, the total
    /// as a string.
    pub fn body(&self, client: &str, zones: Option<&[&str]>) -> String {
        let mut out = String::from("{\"data\":[");
        for (i, (zone, permit_type, total)) in self.rows(client, zones).iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write!(
                out,
                "{{\"type\":{},\"zone\":{},\"total\":\"{total}\"}}",
                json_string(permit_type),
                json_string(zone)
            )
            .expect("writing to a String");
        }
        out.push_str("]}");
        out
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}
