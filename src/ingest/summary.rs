//! Rate-limited WARN summaries, so that a stream of bad records (or of failed dead-letter copies)
//! shows at WARN without writing a line per record.
//!
//! Per key (a reason), the first occurrence after a quiet interval is told at once, so an
//! operator sees it immediately; the following ones in the same interval are only counted, and
//! told as one summary (how many, over how long, the last one's coordinates) once the interval is
//! over: by the next occurrence, or by the ingest loop's periodic [`Summaries::for_each_due`],
//! so that the end of a burst is told too. At most one WARN per key per interval. Each occurrence
//! is still logged at DEBUG by the caller.

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

/// The counting state of every key seen so far.
#[derive(Debug)]
pub(super) struct Summaries<K, T> {
    every: Duration,
    by_key: HashMap<K, Window<T>>,
}

/// One key's current interval.
#[derive(Debug)]
struct Window<T> {
    /// When the interval began: at the last WARN about this key.
    started: Instant,
    /// Occurrences since then, not told yet.
    count: u64,
    /// The last of them.
    last: Option<T>,
}

/// What the caller should log about an occurrence just noted.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict<T> {
    /// The first one in an interval: warn about it now.
    Warn,
    /// Counted towards the next summary: DEBUG only.
    Counted,
    /// The interval was over: warn with this summary, which includes the occurrence just noted.
    Summary(Summary<T>),
}

/// Occurrences of one key not told yet.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Summary<T> {
    /// How many.
    pub(super) count: u64,
    /// Over how long: since the previous WARN about the key.
    pub(super) over: Duration,
    /// The last one.
    pub(super) last: T,
}

impl<K: Hash + Eq, T> Summaries<K, T> {
    /// At most one WARN per key every `every`.
    pub(super) fn new(every: Duration) -> Self {
        Self {
            every,
            by_key: HashMap::new(),
        }
    }

    /// Notes one occurrence of `key` (`last` describes it) and says what to log.
    pub(super) fn note(&mut self, key: K, last: T, now: Instant) -> Verdict<T> {
        let Some(window) = self.by_key.get_mut(&key) else {
            self.by_key.insert(
                key,
                Window {
                    started: now,
                    count: 0,
                    last: None,
                },
            );
            return Verdict::Warn;
        };
        if now.saturating_duration_since(window.started) < self.every {
            window.count += 1;
            window.last = Some(last);
            return Verdict::Counted;
        }
        let over = now.saturating_duration_since(window.started);
        let count = std::mem::take(&mut window.count);
        window.started = now;
        window.last = None;
        if count == 0 {
            Verdict::Warn
        } else {
            Verdict::Summary(Summary {
                count: count + 1,
                over,
                last,
            })
        }
    }

    /// Hands every summary whose interval is over (with `all`, every one there is, as at
    /// shutdown) to `tell`, and begins the key's next interval.
    pub(super) fn for_each_due(
        &mut self,
        now: Instant,
        all: bool,
        mut tell: impl FnMut(&K, Summary<T>),
    ) {
        for (key, window) in &mut self.by_key {
            let over = now.saturating_duration_since(window.started);
            if window.count == 0 || (!all && over < self.every) {
                continue;
            }
            let Some(last) = window.last.take() else {
                continue;
            };
            tell(
                key,
                Summary {
                    count: std::mem::take(&mut window.count),
                    over,
                    last,
                },
            );
            window.started = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(10);

    fn due(
        summaries: &mut Summaries<&'static str, i64>,
        now: Instant,
        all: bool,
    ) -> Vec<(&'static str, Summary<i64>)> {
        let mut told = Vec::new();
        summaries.for_each_due(now, all, |key, summary| told.push((*key, summary)));
        told
    }

    #[test]
    fn the_first_of_a_reason_warns_at_once_and_the_rest_are_summed_up_after_the_interval() {
        let t0 = Instant::now();
        let mut summaries = Summaries::new(EVERY);
        assert_eq!(summaries.note("json", 1, t0), Verdict::Warn);
        assert_eq!(summaries.note("zone", 2, t0), Verdict::Warn, "per reason");
        for offset in 3..=5 {
            let at = t0 + Duration::from_secs(offset as u64);
            assert_eq!(summaries.note("json", offset, at), Verdict::Counted);
        }
        assert!(due(&mut summaries, t0 + Duration::from_secs(9), false).is_empty());
        let at = t0 + EVERY;
        assert_eq!(
            due(&mut summaries, at, false),
            vec![(
                "json",
                Summary {
                    count: 3,
                    over: EVERY,
                    last: 5
                }
            )],
            "the reason with nothing counted says nothing"
        );
        // The next interval began with that summary: counted, not warned.
        assert_eq!(
            summaries.note("json", 6, at + Duration::from_secs(1)),
            Verdict::Counted
        );
    }

    #[test]
    fn an_occurrence_after_the_interval_warns_itself_or_carries_the_summary() {
        let t0 = Instant::now();
        let mut summaries = Summaries::new(EVERY);
        assert_eq!(summaries.note("json", 1, t0), Verdict::Warn);
        let later = t0 + EVERY * 3;
        assert_eq!(
            summaries.note("json", 2, later),
            Verdict::Warn,
            "quiet since"
        );
        assert_eq!(summaries.note("json", 3, later), Verdict::Counted);
        let after = later + EVERY;
        assert_eq!(
            summaries.note("json", 4, after),
            Verdict::Summary(Summary {
                count: 2,
                over: EVERY,
                last: 4
            })
        );
        assert!(
            due(&mut summaries, after + EVERY, false).is_empty(),
            "told already"
        );
    }

    #[test]
    fn at_shutdown_every_count_is_told() {
        let t0 = Instant::now();
        let mut summaries = Summaries::new(EVERY);
        assert_eq!(summaries.note("json", 1, t0), Verdict::Warn);
        assert_eq!(summaries.note("json", 2, t0), Verdict::Counted);
        let at = t0 + Duration::from_secs(1);
        assert_eq!(
            due(&mut summaries, at, true),
            vec![(
                "json",
                Summary {
                    count: 1,
                    over: Duration::from_secs(1),
                    last: 2
                }
            )]
        );
        assert!(due(&mut summaries, at, true).is_empty());
    }
}
