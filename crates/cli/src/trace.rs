//! `apf trace`: the host's `tracing` events of a run (named after KVM's
//! tracepoints), kept in memory while it runs and printed after it, filtered, with
//! the faulting instruction of each stage-2 abort disassembled.

use apf_host::sync::lock;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use yaxpeax_arch::{Decoder, U8Reader};
use yaxpeax_arm::armv8::a64::InstDecoder;

/// One recorded event.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Nanoseconds since the recorder started.
    pub at_ns: u128,
    /// The event's name (`async_pf_not_present`, ...) or, for unnamed events, its
    /// message.
    pub name: String,
    /// Its fields, in order, without the message.
    pub fields: Vec<(&'static str, Value)>,
}

/// A field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A number.
    U64(u64),
    /// A flag.
    Bool(bool),
    /// Anything else, as text.
    Text(String),
}

impl Record {
    /// The numeric field `key`.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.fields.iter().find_map(|(k, v)| match v {
            Value::U64(n) if *k == key => Some(*n),
            _ => None,
        })
    }
}

#[derive(Default)]
struct Fields {
    message: Option<String>,
    fields: Vec<(&'static str, Value)>,
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.name(), Value::U64(value)));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        let v = u64::try_from(value).map_or_else(|_| Value::Text(value.to_string()), Value::U64);
        self.fields.push((field.name(), v));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name(), Value::Bool(value)));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_string());
        } else {
            self.fields
                .push((field.name(), Value::Text(value.to_string())));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = Some(format!("{value:?}"));
        } else {
            self.fields
                .push((field.name(), Value::Text(format!("{value:?}"))));
        }
    }
}

/// A `tracing` layer that keeps apf's events.
#[derive(Debug, Clone)]
pub struct Recorder {
    start: Instant,
    records: Arc<Mutex<Vec<Record>>>,
}

impl Recorder {
    /// Starts recording for the whole process (every vCPU thread): call once.
    pub fn install() -> Result<Recorder, tracing::subscriber::SetGlobalDefaultError> {
        let recorder = Recorder {
            start: Instant::now(),
            records: Arc::new(Mutex::new(Vec::new())),
        };
        let subscriber = tracing_subscriber::registry().with(recorder.clone());
        tracing::subscriber::set_global_default(subscriber)?;
        Ok(recorder)
    }

    /// The events so far.
    pub fn take(&self) -> Vec<Record> {
        std::mem::take(&mut lock(&self.records))
    }
}

impl<S: Subscriber> Layer<S> for Recorder {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !meta.target().starts_with("apf") {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let name = if meta.name().starts_with("event ") {
            f.message.unwrap_or_else(|| meta.name().to_string())
        } else {
            meta.name().to_string()
        };
        let record = Record {
            at_ns: self.start.elapsed().as_nanos(),
            name,
            fields: f.fields,
        };
        lock(&self.records).push(record);
    }
}

/// Which events to print.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this vCPU's.
    pub vcpu: Option<u64>,
    /// Only events of this token, and the stage-2 aborts on its page.
    pub token: Option<u64>,
    /// Only events with one of these names (all when empty).
    pub events: Vec<String>,
}

impl Filter {
    /// The records that pass, in order.
    pub fn apply<'a>(&self, records: &'a [Record]) -> Vec<&'a Record> {
        let token_gfns: BTreeSet<u64> = match self.token {
            Some(t) => records
                .iter()
                .filter(|r| r.u64("token") == Some(t))
                .filter_map(|r| r.u64("gfn"))
                .collect(),
            None => BTreeSet::new(),
        };
        records
            .iter()
            .filter(|r| self.vcpu.is_none_or(|v| r.u64("vcpu") == Some(v)))
            .filter(|r| self.events.is_empty() || self.events.contains(&r.name))
            .filter(|r| {
                self.token.is_none_or(|t| {
                    r.u64("token") == Some(t)
                        || (r.name == "stage2_abort"
                            && r.u64("gfn").is_some_and(|g| token_gfns.contains(&g)))
                })
            })
            .collect()
    }
}

/// An instruction word as assembly, or why not.
pub fn disassemble(word: u32) -> String {
    let bytes = word.to_le_bytes();
    match InstDecoder::default().decode(&mut U8Reader::new(&bytes)) {
        Ok(insn) => insn.to_string(),
        Err(e) => format!("({e})"),
    }
}

/// One line per record: time, vCPU, name, fields; a stage-2 abort also shows its
/// instruction.
pub fn render(records: &[&Record]) -> String {
    let mut out = String::new();
    for r in records {
        #[allow(clippy::cast_precision_loss)] // microseconds of a short run
        let ms = r.at_ns as f64 / 1e6;
        let _ = write!(out, "{ms:>11.3} ms  ");
        if let Some(v) = r.u64("vcpu") {
            let _ = write!(out, "vcpu{v:<2} ");
        }
        let _ = write!(out, "{:<24}", r.name);
        for (k, v) in &r.fields {
            match (*k, v) {
                ("vcpu" | "insn", _) => {}
                ("gfn" | "gpa" | "pc" | "token", Value::U64(n)) => {
                    let _ = write!(out, " {k}={n:#x}");
                }
                (_, Value::U64(n)) => {
                    let _ = write!(out, " {k}={n}");
                }
                (_, Value::Bool(b)) => {
                    let _ = write!(out, " {k}={b}");
                }
                (_, Value::Text(t)) => {
                    let _ = write!(out, " {k}={t}");
                }
            }
        }
        if let Some(word) = r.u64("insn").and_then(|w| u32::try_from(w).ok()) {
            let _ = write!(out, "  [{word:08x}  {}]", disassemble(word));
        }
        out.push('\n');
    }
    out
}

/// Where each asynchronous fault's time went, from the events of every fault
/// whose page came in: not-present → page in (when the fetch finished on its
/// thread: the completion's time less its `waited_ns`), page in → page-ready sent
/// (the PPI pending: how long the vCPU took to notice the completion), page-ready →
/// the guest's retry (its next stage-2 exit on that page; none when the retry's
/// TLB refill finds the page resident and is resolved in the access). A stage-2
/// exit that the vCPU follows with a new fetch decision on the same page is a new
/// fault (the page was evicted again meanwhile), not the retry.
pub fn fault_latencies(records: &[Record]) -> String {
    #[derive(Default)]
    struct Fault {
        gfn: u64,
        not_present: u128,
        completed: Option<u128>,
        ready: Option<u128>,
    }
    let mut open: Vec<((u64, u64), Fault)> = Vec::new();
    let (mut fetch, mut notify, mut wake) = (Vec::new(), Vec::new(), Vec::new());
    // (vCPU, gfn, time since page-ready) of a stage-2 exit that is the retry
    // unless the vCPU's next event decides a fetch for the same page.
    let mut retry: Vec<(u64, Option<u64>, u128)> = Vec::new();
    for r in records {
        let (Some(vcpu), token) = (r.u64("vcpu"), r.u64("token")) else {
            continue;
        };
        if let Some(i) = retry.iter().position(|&(v, ..)| v == vcpu) {
            let (_, gfn, took) = retry.swap_remove(i);
            if !(r.name == "try_async_get_page" && r.u64("gfn") == gfn) {
                wake.push(took);
            }
        }
        let key = |t: u64| (vcpu, t);
        match (r.name.as_str(), token) {
            ("async_pf_not_present", Some(t)) => {
                open.retain(|(k, _)| *k != key(t));
                let gfn = r.u64("gfn").unwrap_or(u64::MAX);
                open.push((
                    key(t),
                    Fault {
                        gfn,
                        not_present: r.at_ns,
                        ..Fault::default()
                    },
                ));
            }
            ("async_pf_completed", Some(t)) => {
                if let Some((_, f)) = open.iter_mut().find(|(k, _)| *k == key(t)) {
                    let waited = u128::from(r.u64("waited_ns").unwrap_or(0));
                    let page_in = r.at_ns.saturating_sub(waited).max(f.not_present);
                    f.completed = Some(page_in);
                    fetch.push(page_in - f.not_present);
                }
            }
            ("async_pf_ready", Some(t)) => {
                if let Some((_, f)) = open.iter_mut().find(|(k, _)| *k == key(t))
                    && let Some(done) = f.completed
                {
                    f.ready = Some(r.at_ns);
                    notify.push(r.at_ns.saturating_sub(done));
                }
            }
            ("stage2_abort", None) => {
                let gfn = r.u64("gfn");
                if let Some(i) = open
                    .iter()
                    .position(|(k, f)| k.0 == vcpu && Some(f.gfn) == gfn && f.ready.is_some())
                {
                    let (_, f) = open.swap_remove(i);
                    retry.push((vcpu, gfn, r.at_ns - f.ready.unwrap_or(r.at_ns)));
                }
            }
            _ => {}
        }
    }
    wake.extend(retry.into_iter().map(|(.., took)| took));
    let line = |what: &str, mut v: Vec<u128>| {
        v.sort_unstable();
        let q = |p: usize| {
            v.get((v.len() * p / 100).min(v.len().saturating_sub(1)))
                .copied()
        };
        // Nanoseconds, shown in µs to 0.1.
        let us = |ns: u128| ns as f64 / 1000.0;
        match (q(50), q(90), q(99)) {
            (Some(a), Some(b), Some(c)) => {
                format!(
                    "  {what:<28} {:>6} faults: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs\n",
                    v.len(),
                    us(a),
                    us(b),
                    us(c)
                )
            }
            _ => format!("  {what:<28}      0 faults\n"),
        }
    };
    let mut out = String::from("asynchronous faults, where the time went:\n");
    out.push_str(&line("not-present → page in", fetch));
    out.push_str(&line("page in → page-ready sent", notify));
    out.push_str(&line("page-ready → guest retries", wake));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, fields: &[(&'static str, u64)]) -> Record {
        Record {
            at_ns: 1_500_000,
            name: name.into(),
            fields: fields.iter().map(|&(k, v)| (k, Value::U64(v))).collect(),
        }
    }

    #[test]
    fn fault_latencies_follow_each_token_to_its_retry() {
        let at = |us: u128, name: &str, fields: &[(&'static str, u64)]| Record {
            at_ns: us * 1000,
            ..rec(name, fields)
        };
        let records = vec![
            at(100, "stage2_abort", &[("vcpu", 0), ("gfn", 7)]),
            at(
                110,
                "async_pf_not_present",
                &[("vcpu", 0), ("gfn", 7), ("token", 0x1000)],
            ),
            at(
                120,
                "async_pf_not_present",
                &[("vcpu", 1), ("gfn", 9), ("token", 0x1001)],
            ),
            // The fetch finished at 1100 µs; the vCPU noticed it 10 µs later.
            at(
                1110,
                "async_pf_completed",
                &[
                    ("vcpu", 0),
                    ("gfn", 7),
                    ("token", 0x1000),
                    ("waited_ns", 10_000),
                ],
            ),
            at(1130, "async_pf_ready", &[("vcpu", 0), ("token", 0x1000)]),
            at(1200, "stage2_abort", &[("vcpu", 1), ("gfn", 7)]),
            at(1430, "stage2_abort", &[("vcpu", 0), ("gfn", 7)]),
            // vCPU 1's page 9 came in and was evicted again before its process
            // ran: the next exit on it starts a new fault, it is not the retry.
            at(
                2000,
                "async_pf_completed",
                &[("vcpu", 1), ("gfn", 9), ("token", 0x1001), ("waited_ns", 0)],
            ),
            at(2010, "async_pf_ready", &[("vcpu", 1), ("token", 0x1001)]),
            at(900_000, "stage2_abort", &[("vcpu", 1), ("gfn", 9)]),
            at(900_001, "try_async_get_page", &[("vcpu", 1), ("gfn", 9)]),
        ];
        let text = fault_latencies(&records);
        assert!(
            text.contains("not-present → page in             2 faults: p50 1880.0 µs"),
            "{text}"
        );
        assert!(
            text.contains("page in → page-ready sent         2 faults: p50 30.0 µs"),
            "{text}"
        );
        assert!(
            text.contains("page-ready → guest retries        1 faults: p50 300.0 µs"),
            "{text}"
        );
    }

    #[test]
    fn disassembles_the_guest_s_instructions() {
        assert_eq!(disassemble(0xf9400001), "ldr x1, [x0]");
        assert_eq!(disassemble(0xd4000002), "hvc #0x0");
    }

    #[test]
    fn filters_by_vcpu_name_and_token_with_the_token_s_aborts() {
        let records = vec![
            rec(
                "stage2_abort",
                &[
                    ("vcpu", 0),
                    ("gfn", 0x40100),
                    ("pc", 0x40080000),
                    ("insn", 0xf9400001),
                ],
            ),
            rec(
                "async_pf_not_present",
                &[("vcpu", 0), ("gfn", 0x40100), ("token", 0x1000)],
            ),
            rec("stage2_abort", &[("vcpu", 1), ("gfn", 0x40200)]),
            rec(
                "async_pf_not_present",
                &[("vcpu", 1), ("gfn", 0x40200), ("token", 0x2001)],
            ),
            rec("async_pf_ready", &[("vcpu", 0), ("token", 0x1000)]),
        ];
        let names = |f: &Filter| -> Vec<String> {
            f.apply(&records)
                .iter()
                .map(|r| format!("{}@{}", r.name, r.u64("vcpu").unwrap()))
                .collect()
        };
        let vcpu1 = Filter {
            vcpu: Some(1),
            ..Filter::default()
        };
        assert_eq!(names(&vcpu1), ["stage2_abort@1", "async_pf_not_present@1"]);
        let token = Filter {
            token: Some(0x1000),
            ..Filter::default()
        };
        assert_eq!(
            names(&token),
            [
                "stage2_abort@0",
                "async_pf_not_present@0",
                "async_pf_ready@0"
            ]
        );
        let ready = Filter {
            events: vec!["async_pf_ready".into()],
            ..Filter::default()
        };
        assert_eq!(names(&ready), ["async_pf_ready@0"]);
        let text = render(&token.apply(&records));
        assert!(text.contains("ldr x1, [x0]"), "{text}");
        assert!(text.contains("token=0x1000"), "{text}");
        assert!(text.starts_with("      1.500 ms  vcpu0"), "{text}");
    }

    #[test]
    fn the_recorder_keeps_apf_events_from_every_thread() {
        let recorder = Recorder {
            start: Instant::now(),
            records: Arc::new(Mutex::new(Vec::new())),
        };
        let subscriber = tracing_subscriber::registry().with(recorder.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(name: "async_pf_ready", target: "apf", vcpu = 3u64, token = 7u64);
            tracing::trace!(target: "other", "ignored");
            tracing::debug!(target: "apf_host::sdei", event = 5u64, "sdei_complete");
        });
        let got = recorder.take();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].name, "async_pf_ready");
        assert_eq!(
            (got[0].u64("vcpu"), got[0].u64("token")),
            (Some(3), Some(7))
        );
        assert_eq!(got[1].name, "sdei_complete");
        assert_eq!(got[1].u64("event"), Some(5));
    }
}
