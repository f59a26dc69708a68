//! The `/metrics` page: the recorder's families, the header of any recorded family that has no
//! series yet, the live-permit gauges read from the projection now, and librdkafka's newest
//! statistics.
//!
//! The permit gauges are written here rather than set on recorder gauges at scrape time: their
//! `zone` and `type` labels are whatever the events carried, and the exporter's label sanitiser
//! would mangle a backslash in them (see [`LabelValue`]); reading them from the projection also
//! costs ingest nothing.

use std::fmt::Write as _;

use super::{
    catalogue::{LabelValue, PERMITS, header},
    kafka,
    recorder::Metrics,
};
use crate::projection::Projection;

impl Metrics {
    /// The `/metrics` page: the recorder's metrics, then the live-permit gauges read from the
    /// projection now (a counter that emptied stays, at 0), then librdkafka's newest statistics.
    pub fn render(&self, projection: &Projection) -> String {
        let mut out = self.render_recorded();
        header(&mut out, PERMITS);
        for (client, view) in &projection.views() {
            for row in view.counters() {
                let _ = writeln!(
                    out,
                    "{PERMITS}{{client=\"{}\",zone=\"{}\",type=\"{}\"}} {}",
                    LabelValue(client),
                    LabelValue(&row.zone),
                    LabelValue(&row.permit_type),
                    row.total
                );
            }
        }
        kafka::render(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::{Change, PermitEvent},
        telemetry::{
            InstallError,
            catalogue::{FAMILIES, FamilyKind},
            install, test_metrics as metrics,
        },
    };

    #[test]
    fn permit_gauges_escape_labels_and_fall_to_zero() {
        let projection = Projection::new();
        let mut event = PermitEvent {
            client: "OC-TOMA".into(),
            reference_id: "a".into(),
            revision: None,
            occurred_at_ms: None,
            change: Change::Created {
                zone: "Lot \"1\"\\".into(),
                permit_type: "temp".into(),
            },
        };
        projection.apply(&event);
        let page = metrics().render(&projection);
        assert!(page.contains(
            r#"permit_stats_permits{client="OC-TOMA",zone="Lot \"1\"\\",type="temp"} 1"#
        ));
        event.change = Change::Deleted;
        projection.apply(&event);
        let page = metrics().render(&projection);
        assert!(page.contains(
            r#"permit_stats_permits{client="OC-TOMA",zone="Lot \"1\"\\",type="temp"} 0"#
        ));
    }

    #[test]
    fn every_family_has_help_and_type_before_anything_happened() {
        let page = metrics().render(&Projection::new());
        for family in FAMILIES {
            assert!(
                page.contains(&format!("# HELP {} ", family.name)),
                "{} has no HELP",
                family.name
            );
            assert!(
                page.contains(&format!(
                    "# TYPE {} {}\n",
                    family.name,
                    family.kind.as_str()
                )),
                "{} has no TYPE",
                family.name
            );
            assert_eq!(
                page.matches(&format!("# TYPE {} ", family.name)).count(),
                1,
                "{} has two headers",
                family.name
            );
        }
        assert!(page.contains("permit_stats_ready 0\n") || page.contains("permit_stats_ready 1\n"));
        assert!(page.contains(r#"permit_stats_http_requests_total{route="stats",status="200"}"#));
        assert!(page.contains(
            r#"permit_stats_http_request_duration_seconds_bucket{route="stats",le="0.0001"}"#
        ));
        assert!(FAMILIES.iter().any(|f| f.kind == FamilyKind::Histogram));
    }

    #[test]
    fn a_family_registered_later_gets_the_recorders_header_instead_of_ours() {
        // Another test of this process may have registered it already: either way, one header.
        let metrics = metrics();
        let before = metrics.render(&Projection::new());
        assert!(before.contains("# TYPE permit_stats_dead_letter_failures_total counter\n"));
        let _ = ::metrics::counter!(crate::telemetry::DEAD_LETTER_FAILURES);
        let after = metrics.render(&Projection::new());
        assert!(after.contains("\npermit_stats_dead_letter_failures_total "));
        assert_eq!(
            after
                .matches("# TYPE permit_stats_dead_letter_failures_total ")
                .count(),
            1
        );
    }

    #[test]
    fn a_second_install_is_refused() {
        let _installed = metrics();
        assert!(matches!(install(), Err(InstallError::AlreadyInstalled)));
    }
}
