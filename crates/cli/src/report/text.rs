//! The report as text: the run's first lines, the tables, side by side with
//! ratios. Everything here reads a [`RunReport`], nothing else.

use super::{Quantiles, RunReport, StoreReport};
use crate::table::{Table, count, secs};
use apf_vm::config::VmConfig;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One line about the VM a report is for.
pub fn describe(c: &VmConfig, store: &StoreReport) -> String {
    format!(
        "{} vCPU{} · {} RAM in a {} host budget · store: {}, queue depth {} · seed {}",
        c.vcpus,
        if c.vcpus == 1 { "" } else { "s" },
        c.ram,
        c.budget,
        store.description,
        store.queue_depth,
        c.seed
    )
}

pub fn ending(r: &RunReport) -> String {
    let how = match r.end {
        "system_off" => "the guest powered off",
        "system_reset" => "the guest asked for a reset",
        "kernel_panic" => "the guest kernel panicked",
        "stopped" => "stopped",
        _ => "timed out",
    };
    let done = r
        .work_done_s
        .map_or(String::new(), |t| format!("; work done at {}", secs(t)));
    let bad = r.processes.iter().filter(|p| !p.checksum_ok).count();
    let sums = if bad == 0 {
        format!("all {} checksums correct", r.processes.len())
    } else {
        format!("{bad} of {} checksums WRONG", r.processes.len())
    };
    let killed = match r.killed.len() {
        0 => String::new(),
        1 => "; 1 process KILLED".into(),
        n => format!("; {n} processes KILLED"),
    };
    let lost = match r.lost_pages {
        0 => String::new(),
        1 => "; 1 page LOST".into(),
        n => format!("; {} pages LOST", count(n)),
    };
    let inv = r
        .invariant_violation
        .as_ref()
        .map_or(String::new(), |e| format!("; MEMORY INVARIANT BROKEN: {e}"));
    format!(
        "{how} after {}{done}; {sums}{killed}{lost}{inv}",
        secs(r.wall_s)
    )
}

/// A line per killed process, and one if the store refused pages so that the
/// budget was overrun, each starting with `indent`.
pub fn killed_lines(r: &RunReport, indent: &str) -> String {
    let mut out = String::new();
    let m = &r.memory;
    if m.over_budget_frames > 0 {
        let _ = writeln!(
            out,
            "{indent}over budget: up to {} frames for a budget of {} ({} taken beyond it): {}",
            count(m.frames_peak),
            count(m.budget_pages),
            count(m.over_budget_frames),
            m.over_budget_reason
                .as_deref()
                .unwrap_or("the store refused pages")
        );
    }
    for k in &r.killed {
        let progress = r
            .processes
            .iter()
            .find(|p| p.index == k.index)
            .map_or(0, |p| p.progress);
        let _ = writeln!(
            out,
            "{indent}killed: process {} {} (vcpu {}) after {} units of work: {}",
            k.index,
            k.name,
            k.vcpu,
            count(progress),
            k.reason
        );
    }
    out
}

fn nonzero(map: &BTreeMap<&'static str, u64>) -> String {
    let parts: Vec<String> = map
        .iter()
        .filter(|&(_, &n)| n > 0)
        .map(|(k, n)| format!("{k} {}", count(*n)))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn quantiles(q: &Quantiles) -> String {
    format!("p50 ≤{}, p90 ≤{}, p99 ≤{}", us(q.p50), us(q.p90), us(q.p99))
}

fn us(n: u64) -> String {
    if n >= 1000 {
        #[allow(clippy::cast_precision_loss)] // latencies are far below 2^52 µs
        let ms = n as f64 / 1000.0;
        format!("{ms:.0}ms")
    } else {
        format!("{n}µs")
    }
}

/// The full text report of one run.
pub fn render_run(r: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: {}", r.label, describe(&r.config, &r.store));
    let _ = writeln!(out, "  {}", ending(r));
    out.push_str(&killed_lines(r, "  "));
    out.push('\n');

    let mut t = Table::new(&[
        "process", "vcpu", "work", "done", "state", "ended", "work/s", "checksum",
    ]);
    for p in &r.processes {
        t.row(vec![
            format!("{} {}", p.index, p.name),
            p.vcpu.to_string(),
            if p.work == 0 {
                "until end".into()
            } else {
                count(p.work)
            },
            count(p.progress),
            p.state.to_string(),
            p.ended_s.map_or("-".into(), secs),
            count_f(p.work_per_s),
            if p.checksum_ok {
                "ok".into()
            } else {
                "WRONG".into()
            },
        ]);
    }
    out.push_str(&t.render());

    let mut t = Table::new(&[
        "vcpu",
        "guest",
        "idle",
        "blocktime",
        "host",
        "instructions",
        "faults async",
        "sync",
        "halted",
    ]);
    for v in &r.vcpus {
        t.row(vec![
            v.index.to_string(),
            secs(v.guest_s),
            secs(v.idle_s),
            secs(v.blocktime_s),
            secs(v.host_s),
            count(v.instructions),
            count(v.faults["async"]),
            count(v.faults["sync"]),
            count(v.faults["halted"]),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render());

    let m = &r.memory;
    let _ = writeln!(out);
    let _ = writeln!(out, "  APF:        {}", nonzero(&r.vcpu_sum(|v| &v.apf)));
    let _ = writeln!(
        out,
        "  fallbacks:  {}",
        nonzero(&r.vcpu_sum(|v| &v.fallbacks))
    );
    let _ = writeln!(out, "  exits:      {}", nonzero(&r.vcpu_sum(|v| &v.exits)));
    let _ = writeln!(out, "  mem faults: {}", nonzero(&m.faults));
    let _ = writeln!(
        out,
        "  store I/O:  {} pages read ({}/s), {} written, {} clean dropped, {} errors, at most {} in flight",
        count(m.pages_read),
        count_f(m.page_ins_per_s),
        count(m.pages_written),
        count(m.dropped_clean),
        count(m.io_errors),
        m.max_in_flight
    );
    let _ = writeln!(
        out,
        "  latency:    read {}; write {}",
        quantiles(&m.read_latency_us),
        quantiles(&m.write_latency_us)
    );
    let _ = writeln!(
        out,
        "  resident:   {} of {} budget pages ({} pages of RAM)",
        count(m.frames_used),
        count(m.budget_pages),
        count(m.ram_pages)
    );
    for line in &r.at_timeout {
        let _ = writeln!(out, "  at the timeout, {line}");
    }
    if !r.guest_module.is_empty() {
        let mut t = Table::new(&["guest module", "count"]);
        for (name, value) in &r.guest_module {
            t.row(vec![name.clone(), count(*value)]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // rounded, non-negative, small
pub fn count_f(x: f64) -> String {
    if x < 100.0 {
        format!("{x:.1}")
    } else {
        count(x.round() as u64)
    }
}

fn ratio(off: f64, on: f64) -> String {
    if off > 0.0 {
        format!("{:.2}×", on / off)
    } else if on > 0.0 {
        "new".into()
    } else {
        "-".into()
    }
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn ratio_n(off: u64, on: u64) -> String {
    ratio(off as f64, on as f64)
}

/// Two runs of the same configuration side by side, with ratios `b / a`.
pub fn render_side_by_side(a: &RunReport, b: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", describe(&b.config, &b.store));
    for r in [a, b] {
        let _ = writeln!(out, "  {}: {}", r.label, ending(r));
        out.push_str(&killed_lines(r, "    "));
    }
    out.push('\n');
    let ratio_head = format!("{} / {}", short(&b.label), short(&a.label));
    let mut t = Table::new(&["", &a.label, &b.label, &ratio_head]);
    for (pa, pb) in a.processes.iter().zip(&b.processes) {
        let who = format!("{} {} (vcpu {})", pa.index, pa.name, pa.vcpu);
        if pa.work > 0 {
            let (ea, eb) = (
                pa.ended_s.unwrap_or(a.wall_s),
                pb.ended_s.unwrap_or(b.wall_s),
            );
            t.row(vec![
                format!("{who} time"),
                secs(ea),
                secs(eb),
                ratio(ea, eb),
            ]);
        } else {
            t.row(vec![
                format!("{who} work"),
                count(pa.progress),
                count(pb.progress),
                ratio_n(pa.progress, pb.progress),
            ]);
        }
        t.row(vec![
            format!("{who} work/s"),
            count_f(pa.work_per_s),
            count_f(pb.work_per_s),
            ratio(pa.work_per_s, pb.work_per_s),
        ]);
    }
    for (va, vb) in a.vcpus.iter().zip(&b.vcpus) {
        t.row(vec![
            format!("vcpu {} blocktime", va.index),
            secs(va.blocktime_s),
            secs(vb.blocktime_s),
            ratio(va.blocktime_s, vb.blocktime_s),
        ]);
        t.row(vec![
            format!("vcpu {} guest time", va.index),
            secs(va.guest_s),
            secs(vb.guest_s),
            ratio(va.guest_s, vb.guest_s),
        ]);
    }
    let sum = |r: &RunReport, key: &str| r.vcpus.iter().map(|v| v.faults[key]).sum::<u64>();
    for (label, key) in [
        ("faults async", "async"),
        ("faults sync", "sync"),
        ("faults halted", "halted"),
    ] {
        let (x, y) = (sum(a, key), sum(b, key));
        t.row(vec![label.into(), count(x), count(y), ratio_n(x, y)]);
    }
    let (ma, mb) = (&a.memory, &b.memory);
    t.row(vec![
        "pages read".into(),
        count(ma.pages_read),
        count(mb.pages_read),
        ratio_n(ma.pages_read, mb.pages_read),
    ]);
    t.row(vec![
        "read latency p50".into(),
        us(ma.read_latency_us.p50),
        us(mb.read_latency_us.p50),
        ratio_n(ma.read_latency_us.p50, mb.read_latency_us.p50),
    ]);
    t.row(vec![
        "wall".into(),
        secs(a.wall_s),
        secs(b.wall_s),
        ratio(a.wall_s, b.wall_s),
    ]);
    out.push_str(&t.render());
    out.push_str(&guest_module_side_by_side(a, b, &ratio_head));
    let fb = nonzero(&b.vcpu_sum(|v| &v.fallbacks));
    let _ = writeln!(out, "\n  {} fallbacks to synchronous faults: {fb}", b.label);
    out
}

/// The guest module's counters of two runs side by side, in `b`'s order then
/// any only `a` has (a blank line and a table; nothing when neither has any).
fn guest_module_side_by_side(a: &RunReport, b: &RunReport, ratio_head: &str) -> String {
    let mut names: Vec<&str> = b.guest_module.iter().map(|(n, _)| n.as_str()).collect();
    for (name, _) in &a.guest_module {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return String::new();
    }
    let value = |r: &RunReport, name: &str| {
        r.guest_module
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, v)| v)
    };
    let mut t = Table::new(&["guest module", &a.label, &b.label, ratio_head]);
    for name in names {
        let (x, y) = (value(a, name), value(b, name));
        t.row(vec![
            name.to_string(),
            x.map_or("-".into(), count),
            y.map_or("-".into(), count),
            match (x, y) {
                (Some(x), Some(y)) => ratio_n(x, y),
                _ => "-".into(),
            },
        ]);
    }
    format!("\n{}", t.render())
}

fn short(label: &str) -> &str {
    label.strip_prefix("APF ").unwrap_or(label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testing;

    #[test]
    fn a_killed_process_is_named_first_and_in_the_json() {
        let (config, run) = testing::quick_run();
        let clean = RunReport::new("APF on", &config, &run);
        assert!(clean.killed.is_empty() && clean.lost_pages == 0);
        assert!(!render_run(&clean).contains("killed:"));

        let r = testing::killed_scan("APF on");
        assert!(
            r.checksums_ok,
            "the scan's checksum is right for its progress"
        );
        assert_eq!(r.lost_pages, 1);
        let reason = "external abort on a data read (ESR 0x92000010)";
        let text = render_run(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].ends_with("all 2 checksums correct; 1 process KILLED; 1 page LOST"),
            "{text}"
        );
        assert_eq!(
            lines[2],
            format!(
                "  killed: process 0 scan (vcpu 0) after {} units of work: {reason}",
                count(r.processes[0].progress)
            ),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["killed"],
            serde_json::json!([{
                "index": 0, "name": "scan", "vcpu": 0, "reason": reason, "esr": "0x92000010",
                "signal": null
            }])
        );
        assert_eq!(json["lost_pages"], 1);
        assert_eq!(json["processes"][0]["state"], "killed");

        let both = render_side_by_side(&clean, &r);
        let lines: Vec<&str> = both.lines().collect();
        assert!(lines[2].starts_with("  APF on: "), "{both}");
        assert!(
            lines[3].starts_with("    killed: process 0 scan (vcpu 0)"),
            "{both}"
        );
    }

    #[test]
    fn guest_module_counters_show_only_when_present_in_order() {
        let (config, run) = testing::quick_run();
        let plain = RunReport::new("APF off", &config, &run);
        assert!(!render_run(&plain).contains("guest module"));
        assert!(!render_side_by_side(&plain, &plain).contains("guest module"));
        assert_eq!(
            serde_json::to_value(&plain).unwrap()["guest_module"],
            serde_json::json!({})
        );

        let with = |label: &str, counters: &[(&str, u64)]| RunReport {
            label: label.into(),
            guest_module: counters.iter().map(|&(n, v)| (n.to_string(), v)).collect(),
            ..plain.clone()
        };
        let on = with(
            "APF on",
            &[
                ("page_ready", 1_200),
                ("not_present", 1_250),
                ("wake_all", 1),
            ],
        );
        let text = render_run(&on);
        let table: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.contains("guest module"))
            .collect();
        assert_eq!(table.len(), 4, "{text}");
        assert!(table[1].starts_with("   page_ready") && table[1].ends_with(" 1,200"));
        assert!(table[2].starts_with("   not_present") && table[2].ends_with(" 1,250"));
        let json = serde_json::to_string(&on).unwrap();
        let tail = &json[json.find("\"guest_module\"").unwrap()..];
        assert!(
            tail.starts_with(
                "\"guest_module\":{\"page_ready\":1200,\"not_present\":1250,\"wake_all\":1}"
            ),
            "the guest's order, not sorted: {tail}"
        );

        let off = with("APF off", &[("not_present", 0), ("fallbacks", 4)]);
        let both = render_side_by_side(&off, &on);
        let rows: Vec<&str> = both
            .lines()
            .skip_while(|l| !l.contains("guest module"))
            .take_while(|l| !l.is_empty())
            .collect();
        let cells = |row: &str| row.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(rows.len(), 5, "{both}");
        assert_eq!(cells(rows[1]), ["page_ready", "-", "1,200", "-"]);
        assert_eq!(cells(rows[2]), ["not_present", "0", "1,250", "new"]);
        assert_eq!(cells(rows[4]), ["fallbacks", "4", "-", "-"]);
    }

    #[test]
    fn ratios_and_latencies_read_well() {
        assert_eq!(ratio(2.0, 5.0), "2.50×");
        assert_eq!(ratio(0.0, 5.0), "new");
        assert_eq!(ratio(0.0, 0.0), "-");
        assert_eq!(us(512), "512µs");
        assert_eq!(us(2048), "2ms");
        assert_eq!(count_f(12.345), "12.3");
        assert_eq!(short("APF on"), "on");
    }
}
