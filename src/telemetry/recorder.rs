//! The Prometheus recorder: installed once by the wiring ([`install`]), with every recorded family
//! described and every label set known up front registered, and the [`Metrics`] handle that
//! renders `/metrics` and keeps the recorder's upkeep running.
//!
//! Registering the known series at install means the first scrape already carries every promised
//! name with its `# HELP` and `# TYPE`, and rates start from a real zero instead of missing the
//! first increment. The installed recorder notes which catalogue families have a series, so the
//! page can write the header of one that has none yet (see [`Source::Recorder`]): the exporter
//! writes `# HELP`/`# TYPE` only along with a series.

use std::{
    fmt,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit, counter,
    describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::catalogue::{
    EVENTS_APPLIED, EVENTS_SKIPPED, FAMILIES, FamilyKind, HTTP_BUCKETS, HTTP_DURATION, HTTP_PRESET,
    HTTP_REQUESTS, LAST_EVENT_TIMESTAMP, READY, RECORDS_REJECTED, Route, Source, header, index_of,
};
use crate::{
    events::InvalidEvent,
    projection::{Kind, SkipReason},
};

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The installed recorder: renders `/metrics` ([`Metrics::render`]) and runs its upkeep. Cheap to
/// clone; every clone reads the same recorder.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    registered: Arc<Registered>,
}

/// Parallel to the catalogue's families: whether the recorder holds a series of each. A family's
/// first registration holds the write lock and a render the read lock, so that a render sees a
/// family's first series and its mark together or neither: never two headers, nor none.
type Registered = RwLock<Box<[bool]>>;

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Why the recorder was not installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A recorder is already installed in this process (by an earlier [`install`] or by other
    /// code): metric handles would go to that one, so a second is refused rather than left unused.
    #[error("a metrics recorder is already installed in this process")]
    AlreadyInstalled,
    /// The exporter refused the latency buckets.
    #[error("the metrics exporter refused the latency buckets")]
    Buckets(#[source] BuildError),
}

/// Installs the process-wide Prometheus recorder, with every family described and every known
/// label set registered, and returns the handle that renders it. Call it once, before anything
/// takes a metric handle (ingest's included): handles taken before it record nowhere.
pub fn install() -> Result<Metrics, InstallError> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), HTTP_BUCKETS)
        .map_err(InstallError::Buckets)?
        .build_recorder();
    let metrics = Metrics {
        handle: recorder.handle(),
        registered: Arc::new(RwLock::new(vec![false; FAMILIES.len()].into())),
    };
    let recorder = Noting {
        inner: recorder,
        registered: Arc::clone(&metrics.registered),
    };
    // Registered on this recorder itself, before it is global, so that a refused install leaves
    // the installed one untouched.
    metrics::with_local_recorder(&recorder, preregister);
    metrics::set_global_recorder(recorder).map_err(|_| InstallError::AlreadyInstalled)?;
    Ok(metrics)
}

impl Metrics {
    /// The recorder's page, followed by the header of each recorded family without a series.
    pub(super) fn render_recorded(&self) -> String {
        let registered = self
            .registered
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out = self.handle.render();
        for (family, _) in FAMILIES
            .iter()
            .zip(registered.iter())
            .filter(|(family, registered)| family.source == Source::Recorder && !**registered)
        {
            header(&mut out, family.name);
        }
        out
    }

    /// Folds histogram samples into their buckets every few seconds, whether or not anyone
    /// scrapes, so that they do not pile up in memory; until `cancel`.
    pub fn spawn_upkeep(&self, cancel: CancellationToken) -> JoinHandle<()> {
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(UPKEEP_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate, and there is nothing to fold yet.
            ticks.tick().await;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    _ = ticks.tick() => handle.run_upkeep(),
                }
            }
        })
    }
}

/// The Prometheus recorder, noting which catalogue families get a series.
#[derive(Debug)]
struct Noting {
    inner: PrometheusRecorder,
    /// Shared with [`Metrics`].
    registered: Arc<Registered>,
}

impl Noting {
    /// Registers a series of family `name` with `register`, marking the family if it is its first.
    fn noting<T>(&self, name: &str, register: impl FnOnce() -> T) -> T {
        let Some(index) = index_of(name) else {
            return register();
        };
        let marked = |registered: &[bool]| registered[index];
        if marked(
            &self
                .registered
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        ) {
            return register();
        }
        let mut registered = self
            .registered
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let handle = register();
        registered[index] = true;
        handle
    }
}

/// Registration is rare (handles are taken once and cached), so the catalogue lookup in
/// [`Noting::noting`] costs nothing on the paths that update metrics.
impl Recorder for Noting {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.noting(key.name(), || self.inner.register_counter(key, metadata))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.noting(key.name(), || self.inner.register_gauge(key, metadata))
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.noting(key.name(), || self.inner.register_histogram(key, metadata))
    }
}

/// Describes every recorded family and creates each series whose labels are known up front.
fn preregister() {
    for family in FAMILIES.iter().filter(|f| f.source == Source::Recorder) {
        match family.kind {
            FamilyKind::Counter => describe_counter!(family.name, family.help),
            FamilyKind::Gauge => describe_gauge!(family.name, family.help),
            FamilyKind::Histogram => describe_histogram!(family.name, family.help),
        }
    }
    // Registering a handle creates the series at zero; dropping it leaves the series in place.
    for kind in Kind::ALL {
        let _ = counter!(EVENTS_APPLIED, "kind" => kind.label());
    }
    for reason in SkipReason::ALL {
        let _ = counter!(EVENTS_SKIPPED, "reason" => reason.label());
    }
    for reason in InvalidEvent::ALL {
        let _ = counter!(RECORDS_REJECTED, "reason" => reason.reason());
    }
    let _ = gauge!(READY);
    let _ = gauge!(LAST_EVENT_TIMESTAMP);
    for &(route, status) in HTTP_PRESET {
        let _ = counter!(HTTP_REQUESTS, "route" => route.label(), "status" => status);
    }
    for route in Route::ALL {
        let _ = histogram!(HTTP_DURATION, "route" => route.label());
    }
}
