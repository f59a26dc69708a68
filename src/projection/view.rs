//! The published side of the projection: one immutable, ready-encoded [`ClientView`] per client.
//!
//! A view holds the exact stats response body (`spec/stats-api.md`), so the common request is a
//! lookup and a cheap clone of bytes; a zone filter copies the zones' runs out of that body. A
//! client's [`Layout`] (its rows in answer order, each row's JSON up to the number encoded once)
//! is kept until a row is added, so publishing a client writes only its totals.

use std::{
    ops::Range,
    sync::{Arc, OnceLock},
};

use bytes::Bytes;

use super::{
    FastMap, Row,
    names::{Counter, CounterId, Interner},
};

/// One client's published state: immutable, replaced whole when a batch changes it.
#[derive(Debug)]
pub struct ClientView {
    /// Every (zone, type) this client ever had, sorted by zone then type in byte order; shared
    /// by the client's views until a row is added.
    layout: Arc<Layout>,
    /// The total of each row of `layout`, zeros included.
    totals: Vec<u64>,
    /// `{"data":[...]}` with one row per non-zero counter, in the order of `layout`.
    body: Bytes,
    /// Per zone of `layout.zone_names`: where its rows sit in `body` (a contiguous run, commas between
    /// rows included), empty when none of them is non-zero.
    zone_runs: Vec<Range<u32>>,
    /// Newest event time applied to this client, in milliseconds since the Unix epoch.
    as_of_ms: Option<i64>,
    /// `as_of_ms` as RFC 3339 text, formatted once per publish rather than once per request.
    as_of_rfc3339: Option<Bytes>,
    /// The rows with their names, made on first use (by the scrape-time gauges), not per publish.
    rows: OnceLock<Vec<Row>>,
}

/// A client's rows in answer order, and its zones.
#[derive(Debug, Default)]
pub(super) struct Layout {
    /// Per row: its zone (an index into `zone_names`), its type name, and its JSON up to the total.
    rows: Vec<LayoutRow>,
    /// The distinct zones, in order.
    zone_names: Vec<Arc<str>>,
    /// Zone name -> index into `zone_names`.
    zone_index: FastMap<Arc<str>, u32>,
}

/// One row of a [`Layout`].
#[derive(Debug)]
struct LayoutRow {
    counter: CounterId,
    zone: u32,
    permit_type: Arc<str>,
    /// `{"type":"..","zone":"..","total":"`: everything of the row before the number.
    prefix: Box<[u8]>,
}

const BODY_START: &[u8] = br#"{"data":["#;
const BODY_END: &[u8] = b"]}";
const EMPTY_BODY: &[u8] = br#"{"data":[]}"#;
const ROW_END: &[u8] = br#""}"#;

impl ClientView {
    /// Every counter of this client, zeros included, sorted by zone then type.
    pub fn counters(&self) -> &[Row] {
        self.rows.get_or_init(|| {
            self.layout
                .rows
                .iter()
                .zip(&self.totals)
                .map(|(row, &total)| Row {
                    zone: Arc::clone(&self.layout.zone_names[row.zone as usize]),
                    permit_type: Arc::clone(&row.permit_type),
                    total,
                })
                .collect()
        })
    }

    /// Newest event time applied to this client, in milliseconds since the Unix epoch.
    pub fn as_of_ms(&self) -> Option<i64> {
        self.as_of_ms
    }

    /// [`Self::as_of_ms`] as RFC 3339 text (UTC, e.g. `2026-11-29T03:30:44.25Z`): the
    /// `X-Stats-As-Of` header, ready to hand out without formatting or copying.
    pub fn as_of_rfc3339(&self) -> Option<Bytes> {
        self.as_of_rfc3339.clone()
    }

    /// The stats response body: every zone when `zones` is `None`, else only the named zones
    /// (exact match; unknown names and duplicates add nothing). Rows stay sorted by zone, then type.
    pub fn body(&self, zones: Option<&[&str]>) -> Bytes {
        let Some(zones) = zones else {
            return self.body.clone();
        };
        // Zone indexes follow the answer's order, so sorting them sorts the runs.
        let mut picked: Vec<u32> = Vec::with_capacity(zones.len());
        for zone in zones {
            if let Some(&index) = self.layout.zone_index.get(*zone)
                && !self.zone_runs[index as usize].is_empty()
            {
                picked.push(index);
            }
        }
        match picked.len() {
            0 => return Bytes::from_static(EMPTY_BODY),
            1 => {}
            _ => {
                picked.sort_unstable();
                picked.dedup();
            }
        }
        let runs = picked.iter().map(|&i| {
            let run = &self.zone_runs[i as usize];
            run.start as usize..run.end as usize
        });
        let len: usize = runs.clone().map(|run| run.len() + 1).sum();
        let mut out = Vec::with_capacity(BODY_START.len() + len + BODY_END.len());
        out.extend_from_slice(BODY_START);
        for (i, run) in runs.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&self.body[run]);
        }
        out.extend_from_slice(BODY_END);
        Bytes::from(out)
    }

    /// Encodes the client's current totals along its layout.
    pub(super) fn build(layout: Arc<Layout>, counters: &[Counter], as_of_ms: Option<i64>) -> Self {
        let totals: Vec<u64> = layout
            .rows
            .iter()
            .map(|row| counters[row.counter as usize].total)
            .collect();
        let mut zone_runs = vec![0..0; layout.zone_names.len()];
        let mut body = Vec::with_capacity(
            BODY_START.len()
                + BODY_END.len()
                + layout
                    .rows
                    .iter()
                    .zip(&totals)
                    .filter(|(_, total)| **total > 0)
                    .map(|(row, _)| row.prefix.len() + 24)
                    .sum::<usize>(),
        );
        body.extend_from_slice(BODY_START);
        let mut digits = itoa::Buffer::new();
        for (row, &total) in layout.rows.iter().zip(&totals) {
            if total == 0 {
                continue;
            }
            if body.len() > BODY_START.len() {
                body.push(b',');
            }
            let start = body.len() as u32;
            body.extend_from_slice(&row.prefix);
            body.extend_from_slice(digits.format(total).as_bytes());
            body.extend_from_slice(ROW_END);
            // Rows are sorted by zone, so each zone's rows form one run.
            let run = &mut zone_runs[row.zone as usize];
            if run.start == run.end {
                *run = start..body.len() as u32;
            } else {
                run.end = body.len() as u32;
            }
        }
        body.extend_from_slice(BODY_END);
        Self {
            layout,
            totals,
            body: Bytes::from(body),
            zone_runs,
            as_of_ms,
            as_of_rfc3339: as_of_ms.and_then(rfc3339),
            rows: OnceLock::new(),
        }
    }
}

impl Layout {
    /// The layout of `ids`: sorted by zone then type in byte order, each row's JSON prefix encoded
    /// once.
    pub(super) fn new(
        ids: &[CounterId],
        counters: &[Counter],
        zones: &Interner,
        types: &Interner,
    ) -> Self {
        let mut ids = ids.to_vec();
        ids.sort_unstable_by(|&a, &b| {
            let (a, b) = (&counters[a as usize], &counters[b as usize]);
            (
                zones.name(a.zone).as_bytes(),
                types.name(a.permit_type).as_bytes(),
            )
                .cmp(&(
                    zones.name(b.zone).as_bytes(),
                    types.name(b.permit_type).as_bytes(),
                ))
        });
        let mut layout = Self::default();
        for id in ids {
            let counter = &counters[id as usize];
            let zone_name = zones.name(counter.zone);
            let permit_type = types.name(counter.permit_type);
            if layout.zone_names.last() != Some(zone_name) {
                let index = layout.zone_names.len() as u32;
                layout.zone_names.push(Arc::clone(zone_name));
                layout.zone_index.insert(Arc::clone(zone_name), index);
            }
            let mut prefix = Vec::with_capacity(32 + zone_name.len() + permit_type.len());
            prefix.extend_from_slice(br#"{"type":"#);
            write_json_string(&mut prefix, permit_type);
            prefix.extend_from_slice(br#","zone":"#);
            write_json_string(&mut prefix, zone_name);
            prefix.extend_from_slice(br#","total":""#);
            layout.rows.push(LayoutRow {
                counter: id,
                zone: layout.zone_names.len() as u32 - 1,
                permit_type: Arc::clone(permit_type),
                prefix: prefix.into_boxed_slice(),
            });
        }
        layout
    }
}

/// `ms` since the Unix epoch as RFC 3339 text (UTC), or `None` outside what it can write.
fn rfc3339(ms: i64) -> Option<Bytes> {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    let text = at
        .format(&time::format_description::well_known::Rfc3339)
        .ok()?;
    Some(Bytes::from(text))
}

/// `value` as a JSON string, quotes included.
fn write_json_string(out: &mut Vec<u8>, value: &str) {
    // serde_json escapes exactly as JSON requires; writing into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

#[cfg(test)]
mod tests {
    use crate::projection::{
        Projection,
        tests::{counts, created, deleted, row, updated},
    };

    #[test]
    fn bodies_are_exact_and_filtered_by_zone() {
        let p = Projection::new();
        p.apply(&created("1", "zone1", "standard"));
        p.apply(&created("2", "zone1", "temp"));
        p.apply(&created("3", "Lot \"2\"", "temp"));
        p.apply(&created("4", "gone", "temp"));
        p.apply(&deleted("4"));
        let view = p.view("C").expect("client has a view");
        assert_eq!(
            view.body(None),
            &br#"{"data":[{"type":"temp","zone":"Lot \"2\"","total":"1"},{"type":"standard","zone":"zone1","total":"1"},{"type":"temp","zone":"zone1","total":"1"}]}"#[..]
        );
        assert_eq!(
            view.body(Some(&["zone1", "nope", "Lot \"2\"", "zone1"])),
            view.body(None)
        );
        assert_eq!(
            view.body(Some(&["zone1"])),
            &br#"{"data":[{"type":"standard","zone":"zone1","total":"1"},{"type":"temp","zone":"zone1","total":"1"}]}"#[..]
        );
        assert_eq!(view.body(Some(&["gone"])), &br#"{"data":[]}"#[..]);
        // The emptied counter stays, at zero, for the gauges.
        assert!(
            view.counters()
                .iter()
                .any(|r| &*r.zone == "gone" && r.total == 0)
        );
        let parsed: serde_json::Value =
            serde_json::from_slice(&view.body(None)).expect("body is JSON");
        assert_eq!(parsed["data"][0]["zone"], "Lot \"2\"");
    }

    #[test]
    fn a_view_keeps_rows_sorted_when_rows_are_added_later() {
        let p = Projection::new();
        p.apply(&created("1", "b", "temp"));
        p.apply(&created("2", "c", "temp"));
        p.apply(&created("3", "a", "x"));
        p.apply(&updated("3", Some("b"), Some("a")));
        assert_eq!(
            counts(&p),
            vec![row("b", "a", 1), row("b", "temp", 1), row("c", "temp", 1)]
        );
        let view = p.view("C").expect("view");
        assert_eq!(
            view.body(Some(&["c", "b"])),
            view.body(None),
            "runs joined in answer order"
        );
        assert_eq!(
            view.counters().len(),
            4,
            "the emptied (a, x) row stays at zero"
        );
    }

    #[test]
    fn as_of_is_rfc3339_text() {
        let p = Projection::new();
        let mut e = created("a", "z", "t");
        e.occurred_at_ms = Some(1_795_923_044_250);
        p.apply(&e);
        let view = p.view("C").expect("view");
        assert_eq!(
            view.as_of_rfc3339().as_deref(),
            Some(&b"2026-11-29T03:30:44.25Z"[..])
        );
        assert_eq!(Projection::new().view("C").map(|v| v.as_of_ms()), None);
    }
}
