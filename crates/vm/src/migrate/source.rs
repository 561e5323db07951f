//! The source of a migration: runs the VM, serves its memory over NBD, copies
//! it in rounds while it runs (pre-copy), stops it, sends its state, and stays
//! a page server until the destination holds every page.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use apf_abi::Gfn;
use apf_host::vcpu;
use apf_mem::store::{NbdServer, ServerCounters};
use apf_mem::{GuestMemory, GuestRamSource};

use super::control::ControlClient;
use super::wire::{Begin, MigrateMode, PageRuns, Reply, Request, SwitchOver};
use super::work_done;
use crate::boot::read_boot_block;
use crate::config::VmConfig;
use crate::error::{MigrateError, VmError};
use crate::monitor::{Live, Observer};
use crate::run::{
    GUEST_IMAGE, RunOptions, VmRun, WorkloadProgress, build, drive_workloads, finish,
    flat_image_boot, start_vcpus_resumed, with_outcomes, write_boot_block,
};
use crate::snapshot::{GuestKind, ProgressState, Resume, write_stopped};

/// The export name of a source's memory.
pub const EXPORT: &str = "apf-ram";
/// At most this many pre-copy rounds.
const MAX_ROUNDS: u32 = 8;
/// Pre-copy switches over once a round has no more pages than this (4 MiB).
const CONVERGED_PAGES: usize = 1024;

/// Where and how to migrate a running VM.
#[derive(Debug, Clone)]
pub struct MigrateTo {
    /// The destination's `apf listen`: `HOST:PORT`.
    pub addr: String,
    /// When (on the run's timeline) the migration starts.
    pub at: Duration,
    /// How memory moves.
    pub mode: MigrateMode,
    /// Added to every page read the destination makes, on top of the network.
    pub net_latency: Duration,
    /// The port to serve the VM's memory on (0: any free one).
    pub page_server_port: u16,
}

/// One pre-copy round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Pages sent.
    pub pages: u64,
    /// From sending the round to the destination holding it.
    pub took: Duration,
}

/// What the source did.
#[derive(Debug)]
pub struct SourceReport {
    /// How memory moved.
    pub mode: MigrateMode,
    /// Pre-copy rounds, in order.
    pub rounds: Vec<Round>,
    /// When the VM stopped here, on the run's timeline (None: it never did).
    pub stopped_at: Option<Duration>,
    /// From the migration's start to the stop.
    pub precopy_time: Duration,
    /// From the last instruction here to the destination saying it runs (an
    /// upper bound on the time the VM ran nowhere: it includes the reply's
    /// trip back).
    pub downtime: Option<Duration>,
    /// Pages holding data at the stop, and of those, pages the destination
    /// had no current copy of.
    pub held_at_stop: u64,
    /// See `held_at_stop`.
    pub changed_at_stop: u64,
    /// Pages the destination copied before its first instruction.
    pub copied_before_start: u64,
    /// From the migration's start to the destination holding every page.
    pub total_time: Option<Duration>,
    /// Whether the destination said it holds every page (false: its run
    /// ended first, or it was never heard from again).
    pub all_pages_moved: bool,
    /// Pages the destination read on demand and by its copier.
    pub demand_pages: u64,
    /// See `demand_pages`.
    pub copied_pages: u64,
    /// Units of work each process had done at the migration's start.
    pub work_at_start: Vec<u64>,
    /// The page server's counters.
    pub served: ServerCounters,
    /// Control connections reopened after a break.
    pub reconnects: u64,
    /// Why the migration did not happen, if it did not (the VM then ran to
    /// its end here).
    pub abandoned: Option<String>,
    /// The run here: to the stop, or to the end if the migration was abandoned.
    pub run: VmRun,
}

/// A session number for this migration: the same on every reconnection.
fn new_session() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one((std::process::id(), Instant::now()))
}

/// What the pre-copy thread hands back.
struct Precopy {
    rounds: Vec<Round>,
    /// Pages taken from the dirty log and not sent in a round.
    pending: Vec<Gfn>,
    work_at_start: Vec<u64>,
    started: Option<Instant>,
}

/// Runs the built-in guest with `config` and migrates it to `to.addr` at
/// `to.at`. Returns when the destination holds every page (or the migration
/// was abandoned and the run ended here).
pub fn run_migrating(
    config: &VmConfig,
    to: &MigrateTo,
    options: RunOptions,
    observe: Observer<'_>,
) -> Result<SourceReport, VmError> {
    config.validate()?;
    let session = new_session();
    let mut control = ControlClient::connect(&to.addr, session, config.store.reconnect_window())?;
    let built = build(config, GUEST_IMAGE, options.echo_console)?;
    write_boot_block(config, &built)?;
    let ip = control
        .local_ip()
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let server = NbdServer::bind(
        SocketAddr::new(ip, to.page_server_port),
        EXPORT.to_string(),
        Arc::new(GuestRamSource::new(Arc::clone(&built.memory))),
    )
    .map_err(MigrateError::PageServer)?;
    let pages_url = format!("nbd://{}/{EXPORT}", server.local_addr());

    let begin = Instant::now();
    let vcpus = start_vcpus_resumed(
        config,
        &built,
        flat_image_boot(options.engine),
        vcpu::spawn,
        None,
    )?;
    let mut progress = WorkloadProgress::new(config);
    let stop = AtomicBool::new(false);
    let run_over = AtomicBool::new(false);
    let (start_tx, start_rx) = mpsc::channel::<Vec<u64>>();
    let mode = to.mode;
    let memory = &built.memory;
    let (precopy, watched) = std::thread::scope(|scope| {
        let control = &mut control;
        let (stop, run_over) = (&stop, &run_over);
        let worker = scope.spawn(move || {
            precopy(
                control, memory, config, mode, &pages_url, to, start_rx, stop, run_over,
            )
        });
        let mut start_tx = Some(start_tx);
        let mut watcher = |live: &Live<'_>| {
            if live.elapsed >= to.at
                && let Some(tx) = start_tx.take()
            {
                let _ = tx.send(work_done(config, live));
            }
            if stop.load(Ordering::Acquire) {
                return ControlFlow::Break(());
            }
            observe(live)
        };
        let watched = drive_workloads(
            config,
            &built,
            begin,
            options,
            &mut watcher,
            &mut progress,
            None,
        );
        run_over.store(true, Ordering::Release);
        drop(start_tx);
        (worker.join(), watched)
    });
    let precopy = precopy.map_err(|_| VmError::Load("the pre-copy thread panicked".into()))?;
    // Switching only if the run was stopped for it: a guest that powered off
    // meanwhile has nothing to move.
    let switching = stop.load(Ordering::Acquire) && watched.observer_stopped;
    // Before the vCPUs stop: the downtime measured from here is an upper bound.
    let stopped = Instant::now();
    let run = finish(
        &built,
        vcpus,
        begin,
        progress.work_done_at,
        watched.observer_stopped,
    )?;
    let (precopy, abandoned) = match precopy {
        Ok(p) => (p, None),
        Err(e) => (
            Precopy {
                rounds: Vec::new(),
                pending: Vec::new(),
                work_at_start: Vec::new(),
                started: None,
            },
            Some(e),
        ),
    };
    if !switching {
        let run = with_outcomes(config, &built, run, &progress);
        if precopy.started.is_some() {
            // Best effort: a destination that hears it listens again at once.
            let why = abandoned
                .as_ref()
                .map_or_else(|| "the run ended first".to_string(), ToString::to_string);
            let _ = control.call_once(&Request::Abandon { why });
        }
        let why = match abandoned {
            Some(e) => e.to_string(),
            None if precopy.started.is_none() => {
                return Err(MigrateError::EndedFirst {
                    ran: run.wall,
                    at: to.at,
                }
                .into());
            }
            None => "the run ended during pre-copy".to_string(),
        };
        return Ok(SourceReport {
            mode,
            rounds: precopy.rounds,
            stopped_at: None,
            precopy_time: precopy.started.map_or(Duration::ZERO, |s| s.elapsed()),
            downtime: None,
            held_at_stop: 0,
            changed_at_stop: 0,
            copied_before_start: 0,
            total_time: None,
            all_pages_moved: false,
            demand_pages: 0,
            copied_pages: 0,
            work_at_start: precopy.work_at_start,
            served: server.counters(),
            reconnects: control.reconnects,
            abandoned: Some(why),
            run,
        });
    }
    let started = precopy.started.unwrap_or(stopped);
    let base = memory.ram_base().gfn().0;
    let numbers = |gfns: Vec<Gfn>| {
        PageRuns::from_sorted(
            gfns.into_iter()
                .filter_map(|g| u32::try_from(g.0 - base).ok()),
        )
    };
    let held = numbers(memory.touched_pages());
    let changed = if mode == MigrateMode::Postcopy {
        held.clone()
    } else {
        let mut c: Vec<Gfn> = memory.take_dirty_log().iter().collect();
        memory.stop_dirty_log();
        c.extend_from_slice(&precopy.pending);
        c.sort_unstable();
        c.dedup();
        numbers(c)
    };
    let progress_state = ProgressState {
        ended: progress.ended_at.iter().map(Option::is_some).collect(),
        progress: read_boot_block(memory)
            .map(|b| {
                (0..config.processes.len())
                    .map(|i| b.results[i].progress)
                    .collect()
            })
            .unwrap_or_default(),
        work_done: progress.work_done_at.is_some(),
    };
    let switch = SwitchOver {
        taken_at: run.wall,
        console: run.uart.clone(),
        machine: built.machine.save_state(),
        vcpus: run.vcpus.iter().map(|v| (*v.state).clone()).collect(),
        progress: progress_state,
        held,
        changed,
    };
    let (held_at_stop, changed_at_stop) = (switch.held.len(), switch.changed.len());
    let reply = control.call(
        &Request::SwitchOver(Box::new(switch.clone())),
        "the switch-over",
    );
    let copied_before_start = match reply {
        Ok(Reply::Started {
            copied_before_start,
            ..
        }) => copied_before_start,
        // Refused, unreachable, or garbled: whether the destination runs the
        // VM may be unknown, but it must survive somewhere.
        other => {
            let why = match other {
                Ok(r) => format!("unexpected reply {r:?}"),
                Err(e) => e.to_string(),
            };
            let rescue = std::env::temp_dir().join(format!("apf-rescue-{session:016x}"));
            let resume = Resume {
                guest: GuestKind::BuiltIn,
                taken_at: switch.taken_at,
                console: &switch.console,
                machine: &switch.machine,
                vcpus: &switch.vcpus,
                progress: &switch.progress,
            };
            write_stopped(&rescue, config, &resume, memory)?;
            return Err(MigrateError::SwitchOver {
                addr: to.addr.clone(),
                why,
                rescue,
            }
            .into());
        }
    };
    let downtime = stopped.elapsed();
    // The destination may still read pages while the control connection is
    // down: stay while it does.
    let reply = loop {
        let served = server.counters().requests;
        match control.call(&Request::AwaitComplete, "post-copy") {
            Err(MigrateError::Lost { .. }) if server.counters().requests != served => {}
            r => break r?,
        }
    };
    let Reply::Complete {
        all_pages,
        demand,
        copied,
    } = reply
    else {
        return Err(unexpected(&to.addr, &reply));
    };
    control.close();
    let total = started.elapsed();
    let served = server.counters();
    server.shutdown();
    let run = with_outcomes(config, &built, run, &progress);
    Ok(SourceReport {
        mode,
        rounds: precopy.rounds,
        stopped_at: Some(run.wall),
        precopy_time: stopped - started,
        downtime: Some(downtime),
        held_at_stop,
        changed_at_stop,
        copied_before_start,
        total_time: Some(total),
        all_pages_moved: all_pages,
        demand_pages: demand,
        copied_pages: copied,
        work_at_start: precopy.work_at_start,
        served,
        reconnects: control.reconnects,
        abandoned: None,
        run,
    })
}

fn unexpected(addr: &str, reply: &Reply) -> VmError {
    MigrateError::NotApf {
        addr: addr.to_string(),
        what: format!("unexpected reply {reply:?}"),
    }
    .into()
}

/// The migration thread before the stop: waits for the start time, begins the
/// session, runs the pre-copy rounds, then asks the VM to stop.
#[allow(clippy::too_many_arguments)]
fn precopy(
    control: &mut ControlClient,
    memory: &Arc<GuestMemory>,
    config: &VmConfig,
    mode: MigrateMode,
    pages_url: &str,
    to: &MigrateTo,
    start: mpsc::Receiver<Vec<u64>>,
    stop: &AtomicBool,
    run_over: &AtomicBool,
) -> Result<Precopy, MigrateError> {
    let mut out = Precopy {
        rounds: Vec::new(),
        pending: Vec::new(),
        work_at_start: Vec::new(),
        started: None,
    };
    let Ok(work) = start.recv() else {
        // The run ended before the migration time.
        return Ok(out);
    };
    out.work_at_start = work;
    out.started = Some(Instant::now());
    let begin = Begin {
        config: config.clone(),
        guest: GuestKind::BuiltIn,
        mode,
        pages_url: pages_url.to_string(),
        net_latency: to.net_latency,
    };
    match control.call(&Request::Begin(Box::new(begin)), "the start")? {
        Reply::Ready => {}
        other => {
            return Err(MigrateError::NotApf {
                addr: to.addr.clone(),
                what: format!("unexpected reply {other:?}"),
            });
        }
    }
    if mode != MigrateMode::Postcopy {
        // Logging first: a page first written after the scan below is logged.
        memory.start_dirty_log();
        let base = memory.ram_base().gfn().0;
        let mut pages: Vec<Gfn> = memory.touched_pages();
        let mut round = 0u32;
        loop {
            if run_over.load(Ordering::Acquire) {
                memory.stop_dirty_log();
                return Ok(out);
            }
            let runs =
                PageRuns::from_sorted(pages.iter().filter_map(|g| u32::try_from(g.0 - base).ok()));
            let t = Instant::now();
            let sent = runs.len();
            match control.call(&Request::Round { round, pages: runs }, "pre-copy")? {
                Reply::Copied { .. } => {}
                other => {
                    memory.stop_dirty_log();
                    return Err(MigrateError::NotApf {
                        addr: to.addr.clone(),
                        what: format!("unexpected reply {other:?}"),
                    });
                }
            }
            out.rounds.push(Round {
                pages: sent,
                took: t.elapsed(),
            });
            round += 1;
            if mode == MigrateMode::Hybrid || round >= MAX_ROUNDS {
                break;
            }
            let next: Vec<Gfn> = memory.take_dirty_log().iter().collect();
            let converged = next.len() <= CONVERGED_PAGES;
            // Not shrinking: the guest writes as fast as rounds copy.
            let stuck = next.len() as u64 * 10 >= sent * 9 && round > 1;
            if converged || stuck {
                // Copied at the switch-over, with whatever the stop's take adds.
                out.pending = next;
                break;
            }
            pages = next;
        }
    }
    stop.store(true, Ordering::Release);
    Ok(out)
}
