//! The destination of a migration (`apf listen`): takes a source's VM over the
//! control stream, copies its pages over NBD into a local mirror (in rounds
//! before the switch-over, then in the background), resumes it at the
//! switch-over, and runs it to its end. Demand faults read pages the mirror
//! does not hold yet from the source; APF hides those reads as it hides any.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use apf_abi::Gfn;
use apf_mem::GuestMemory;
use apf_mem::store::{
    CowStore, Latency, LatencyStore, Mirror, MirrorCounts, MirrorOrigin, MirrorStore, Slot, Store,
    read_slots,
};

use super::wire::{
    Begin, FrameError, MigrateMode, PageRuns, Reply, Request, SwitchOver, read_frame, write_frame,
};
use super::work_done;
use crate::config::{ByteSize, StoreKind, VmConfig};
use crate::error::{MigrateError, VmError};
use crate::monitor::{Live, Observer};
use crate::run::{Built, RunOptions, VmRun, build_machine_over};
use crate::snapshot::{GuestKind, Resume, prefetch_pages, run_resumed, start_resumed};
use crate::store::{connect_nbd, open_store};

/// A session that began and then went quiet for this long may be replaced by
/// a new source (longer than any source retries a broken connection).
const TAKEOVER_GRACE: Duration = Duration::from_secs(15);
/// How long a new connection has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Pages the background copier asks for at once (it looks for pages the
/// guest brought in meanwhile between batches).
const COPY_BATCH: usize = 1024;

/// How `apf listen` takes a migration.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Offer APF to the resumed guest (default: as the source did).
    pub apf: Option<bool>,
    /// Host memory for the resumed guest (default: as the source had).
    pub budget: Option<ByteSize>,
    /// Reach the source's page server here (`HOST:PORT`) instead of where it
    /// says it is: for a NAT, a tunnel, or a test's proxy.
    pub pages_via: Option<String>,
}

/// What a destination did with the migration it took.
#[derive(Debug)]
pub struct Landed {
    /// How memory moved.
    pub mode: MigrateMode,
    /// The configuration the VM ran with here.
    pub config: VmConfig,
    /// Added to every page read.
    pub net_latency: Duration,
    /// Pre-copy rounds copied, and their pages.
    pub rounds: u32,
    /// See `rounds`.
    pub round_pages: u64,
    /// How long the VM had run at the source.
    pub taken_at: Duration,
    /// From the switch-over's arrival to the first instruction here.
    pub setup: Duration,
    /// Pages copied between the switch-over's arrival and the first instruction.
    pub copied_before_start: u64,
    /// From the first instruction here to the mirror holding every page.
    pub complete_after: Option<Duration>,
    /// Units of work each process had done when the mirror was complete.
    pub work_at_complete: Option<Vec<u64>>,
    /// The mirror's counts at the end.
    pub mirror: MirrorCounts,
    /// Pages the source held that never arrived (its page server was gone
    /// for longer than the reconnect window), by page number from RAM's start.
    pub lost_pages: Vec<u64>,
    /// Why the copier failed, if it did (not when the run merely ended first).
    pub copy_error: Option<String>,
    /// Control connections taken over by a reconnection.
    pub resumed_connections: u64,
    /// The run here, whose processes' outcomes span both hosts.
    pub run: VmRun,
}

/// The source's pages: the mirror, and a connection of its own for copying so
/// that demand reads never queue behind the copier.
#[derive(Debug)]
struct Transfer {
    mirror: Arc<Mirror>,
    copier: Box<dyn Store>,
    timeout: Duration,
}

impl Transfer {
    /// Copies `pages` from the source into the mirror (again, if it held them).
    fn copy(&self, pages: &[u32]) -> Result<u64, String> {
        let slots: Vec<Slot> = pages.iter().map(|&p| Slot(p)).collect();
        let mut n = 0;
        read_slots(&*self.copier, &slots, self.timeout, |slot, page| {
            n += 1;
            self.mirror.put(slot.0, page, MirrorOrigin::Copy)
        })
        .map_err(|e| e.to_string())?;
        Ok(n)
    }
}

/// Everything built at Begin, handed to the main thread at the switch-over.
struct Prepared {
    config: VmConfig,
    mode: MigrateMode,
    guest: GuestKind,
    net_latency: Duration,
    built: Built,
    transfer: Arc<Transfer>,
}

/// Where the session is.
enum Phase {
    /// No source yet.
    Waiting,
    /// A source began; rounds may come.
    Begun {
        session: u64,
        prepared: Box<Prepared>,
        rounds: u32,
        round_pages: u64,
    },
    /// The main thread is starting the VM.
    Switching { session: u64 },
    /// The VM runs here.
    Running {
        session: u64,
        setup: Duration,
        copied_before_start: u64,
    },
    /// The copier is done (or the run ended first).
    Done {
        session: u64,
        setup: Duration,
        copied_before_start: u64,
        all_pages: bool,
        counts: MirrorCounts,
    },
}

impl Phase {
    fn session(&self) -> Option<u64> {
        match self {
            Phase::Waiting => None,
            Phase::Begun { session, .. }
            | Phase::Switching { session }
            | Phase::Running { session, .. }
            | Phase::Done { session, .. } => Some(*session),
        }
    }
}

/// What the connection threads and the main thread share.
struct Shared {
    phase: Mutex<Phase>,
    changed: Condvar,
    options: ListenOptions,
    switch: Mutex<mpsc::Sender<Switch>>,
    /// The reply to AwaitComplete has been written.
    complete_sent: AtomicBool,
    resumed: AtomicU64,
    /// When the session's source last sent a request.
    last_request: Mutex<Instant>,
    log: Box<dyn Fn(&str) + Send + Sync>,
}

/// The switch-over, as the main thread gets it.
struct Switch {
    arrived: Instant,
    state: Box<SwitchOver>,
    prepared: Box<Prepared>,
    rounds: u32,
    round_pages: u64,
}

fn relock<T>(r: Result<T, PoisonError<T>>) -> T {
    r.unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Phase> {
        relock(self.phase.lock())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, Phase>) -> MutexGuard<'a, Phase> {
        relock(self.changed.wait(g))
    }

    fn set(&self, g: &mut MutexGuard<'_, Phase>, p: Phase) {
        **g = p;
        self.changed.notify_all();
    }

    /// A connection said hello for `session`: may it go on?
    fn hello(&self, session: u64) -> Result<bool, String> {
        let mut g = self.lock();
        match g.session() {
            None => Ok(false),
            Some(s) if s == session => {
                self.resumed.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Some(s) => match &*g {
                // A source that began and vanished before the switch-over
                // still runs its VM: a new one may take its place.
                Phase::Begun { .. }
                    if relock(self.last_request.lock()).elapsed() >= TAKEOVER_GRACE =>
                {
                    (self.log)(&format!(
                        "session {s:016x} dropped before its switch-over: a new source took its place"
                    ));
                    self.set(&mut g, Phase::Waiting);
                    Ok(false)
                }
                Phase::Begun { .. } => Err(format!(
                    "this listener is taking session {s:016x}: start another `apf listen`"
                )),
                _ => Err(format!(
                    "this listener is running session {s:016x}'s VM: start another `apf listen`"
                )),
            },
        }
    }

    fn handle(&self, session: u64, req: Request) -> Reply {
        match req {
            Request::Hello { .. } => Reply::Refused("hello twice".into()),
            Request::Begin(b) => self.begin(session, *b),
            Request::Round { round, pages } => self.round(session, round, &pages),
            Request::SwitchOver(s) => self.switch_over(session, s),
            Request::AwaitComplete => self.await_complete(session),
            Request::Abandon { why } => self.abandon(session, &why),
        }
    }

    fn abandon(&self, session: u64, why: &str) -> Reply {
        let mut g = self.lock();
        match &*g {
            Phase::Begun { session: s, .. } if *s == session => {
                (self.log)(&format!(
                    "session {session:016x} abandoned by its source ({why}); listening again"
                ));
                self.set(&mut g, Phase::Waiting);
                Reply::Dropped
            }
            Phase::Waiting => Reply::Dropped,
            _ => Reply::Refused("too late to abandon: the VM runs here".into()),
        }
    }

    fn begin(&self, session: u64, b: Begin) -> Reply {
        let mut g = self.lock();
        match g.session() {
            Some(s) if s == session => {
                return if matches!(&*g, Phase::Begun { .. }) {
                    Reply::Ready
                } else {
                    Reply::Refused("begin after the switch-over".into())
                };
            }
            Some(_) => return Reply::Refused("another session is running".into()),
            None => {}
        }
        match prepare(&self.options, b) {
            Ok(prepared) => {
                self.set(
                    &mut g,
                    Phase::Begun {
                        session,
                        prepared: Box::new(prepared),
                        rounds: 0,
                        round_pages: 0,
                    },
                );
                Reply::Ready
            }
            Err(e) => Reply::Refused(e),
        }
    }

    fn round(&self, session: u64, round: u32, pages: &PageRuns) -> Reply {
        let mut g = self.lock();
        let Phase::Begun {
            session: s,
            prepared,
            rounds,
            round_pages,
        } = &mut *g
        else {
            return Reply::Refused("a pre-copy round outside pre-copy".into());
        };
        if *s != session {
            return Reply::Refused("not this session's round".into());
        }
        if !pages.within(prepared.config.ram.0 / apf_abi::PAGE_SIZE) {
            return Reply::Refused("a round names pages past guest RAM".into());
        }
        if round < *rounds {
            // Sent again after a broken connection: it was copied.
            return Reply::Copied {
                round,
                pages: 0,
                took: Duration::ZERO,
            };
        }
        let t = Instant::now();
        let list: Vec<u32> = pages.pages().collect();
        let memory = &prepared.built.memory;
        let base = memory.ram_base().gfn().0;
        let gfns: Vec<Gfn> = list.iter().map(|&p| Gfn(base + u64::from(p))).collect();
        for (&p, &gfn) in list.iter().zip(&gfns) {
            // A copy from an earlier round is stale: out of the mirror and
            // out of memory, where it may have been loaded.
            prepared.transfer.mirror.forget(p);
            memory.drop_clean_page(gfn);
            // Already placed by an earlier round if not untouched.
            let _ = memory.place_in_store(gfn, Slot(p));
        }
        let copied = prepared.transfer.copy(&list);
        if copied.is_ok() {
            // Into memory while it has room, as a pre-copy writes into RAM.
            let depth = usize::try_from(prepared.config.store.queue_depth).unwrap_or(1);
            prefetch_pages(memory, &gfns, depth, &AtomicBool::new(false));
        }
        match copied {
            Ok(n) => {
                *rounds = (*rounds).max(round + 1);
                *round_pages += n;
                Reply::Copied {
                    round,
                    pages: n,
                    took: t.elapsed(),
                }
            }
            // The source retries the round on a new connection, or gives up.
            Err(e) => Reply::Refused(format!("copying round {round}: {e}")),
        }
    }

    fn switch_over(&self, session: u64, state: Box<SwitchOver>) -> Reply {
        let arrived = Instant::now();
        let mut g = self.lock();
        if g.session() != Some(session) {
            return Reply::Refused("a switch-over for another session".into());
        }
        if let Phase::Begun { prepared, .. } = &*g {
            let pages = prepared.config.ram.0 / apf_abi::PAGE_SIZE;
            if !state.held.within(pages) || !state.changed.within(pages) {
                return Reply::Refused("a switch-over names pages past guest RAM".into());
            }
            if state.vcpus.len() != usize::try_from(prepared.config.vcpus).unwrap_or(0) {
                return Reply::Refused(format!(
                    "a switch-over with {} vCPU states for {} vCPUs",
                    state.vcpus.len(),
                    prepared.config.vcpus
                ));
            }
        }
        if matches!(&*g, Phase::Begun { .. }) {
            let Phase::Begun {
                prepared,
                rounds,
                round_pages,
                ..
            } = std::mem::replace(&mut *g, Phase::Switching { session })
            else {
                unreachable!("matched just above")
            };
            let _ = relock(self.switch.lock()).send(Switch {
                arrived,
                state,
                prepared,
                rounds,
                round_pages,
            });
        }
        loop {
            match &*g {
                Phase::Running {
                    setup,
                    copied_before_start,
                    ..
                }
                | Phase::Done {
                    setup,
                    copied_before_start,
                    ..
                } => {
                    return Reply::Started {
                        setup: *setup,
                        copied_before_start: *copied_before_start,
                    };
                }
                Phase::Waiting => return Reply::Refused("the switch-over failed here".into()),
                _ => g = self.wait(g),
            }
        }
    }

    fn await_complete(&self, session: u64) -> Reply {
        let mut g = self.lock();
        loop {
            match &*g {
                _ if g.session() != Some(session) => {
                    return Reply::Refused("not this session".into());
                }
                Phase::Done {
                    all_pages, counts, ..
                } => {
                    return Reply::Complete {
                        all_pages: *all_pages,
                        demand: counts.demand,
                        copied: counts.copied,
                    };
                }
                Phase::Begun { .. } => return Reply::Refused("no switch-over yet".into()),
                _ => g = self.wait(g),
            }
        }
    }

    /// One control connection, from its hello to its end.
    fn serve(&self, mut stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(HELLO_TIMEOUT));
        let refuse = |stream: &mut TcpStream, why: String| {
            (self.log)(&format!("refused a connection from {peer}: {why}"));
            let _ = write_frame(stream, &Reply::Refused(why));
        };
        let session = match read_frame::<Request>(&mut stream) {
            Ok(Request::Hello { session, .. }) => session,
            Ok(other) => {
                return refuse(
                    &mut stream,
                    format!("it began with {} instead of hello", kind(&other)),
                );
            }
            Err(e) if e.is_refusal() => {
                return refuse(&mut stream, format!("not an apf migration source: {e}"));
            }
            Err(e) => {
                (self.log)(&format!(
                    "a connection from {peer} ended before its hello: {e}"
                ));
                return;
            }
        };
        let resumed = match self.hello(session) {
            Ok(r) => r,
            Err(why) => return refuse(&mut stream, why),
        };
        if write_frame(&mut stream, &Reply::Welcome { resumed }).is_err() {
            return;
        }
        let _ = stream.set_read_timeout(None);
        loop {
            let req = match read_frame::<Request>(&mut stream) {
                Ok(r) => r,
                Err(FrameError::Io(_)) => return,
                Err(e) => return refuse(&mut stream, e.to_string()),
            };
            let complete = matches!(req, Request::AwaitComplete);
            *relock(self.last_request.lock()) = Instant::now();
            let reply = self.handle(session, req);
            if write_frame(&mut stream, &reply).is_err() {
                return;
            }
            if complete && matches!(reply, Reply::Complete { .. }) {
                // Heard only once the source closes its end: it has the
                // answer, and may exit.
                let _ = stream.set_read_timeout(Some(HELLO_TIMEOUT));
                if matches!(stream.read(&mut [0u8; 1]), Ok(0)) {
                    self.complete_sent.store(true, Ordering::Release);
                    self.changed.notify_all();
                }
                return;
            }
        }
    }
}

fn kind(r: &Request) -> &'static str {
    match r {
        Request::Hello { .. } => "hello",
        Request::Begin(_) => "begin",
        Request::Round { .. } => "a round",
        Request::SwitchOver(_) => "a switch-over",
        Request::AwaitComplete => "await-complete",
        Request::Abandon { .. } => "abandon",
    }
}

/// Sets up the destination's side of a migration that begins: connects twice
/// to the source's page server, makes the mirror, builds the machine.
fn prepare(options: &ListenOptions, b: Begin) -> Result<Prepared, String> {
    let mut config = b.config;
    if let Some(apf) = options.apf {
        config.apf = apf;
    }
    if let Some(budget) = options.budget {
        config.budget = budget;
    }
    // This host's own swap file, wherever the source kept its store.
    config.store.path = None;
    if config.store.kind == StoreKind::Nbd {
        config.store.kind = StoreKind::File;
        config.store.url = None;
    }
    config.validate().map_err(|e| e.to_string())?;
    let url = match &options.pages_via {
        Some(via) => {
            let export = b.pages_url.rsplit('/').next().unwrap_or_default();
            format!("nbd://{via}/{export}")
        }
        None => b.pages_url.clone(),
    };
    let ram_pages = config.ram.0 / apf_abi::PAGE_SIZE;
    let pages = u32::try_from(ram_pages).map_err(|_| "guest RAM is too large".to_string())?;
    let connect = || -> Result<Box<dyn Store>, String> {
        let nbd = connect_nbd(&url, &config, true, 0, config.ram.0)
            .map_err(|e| format!("cannot read the source's pages at {url}: {e}"))?;
        Ok(if b.net_latency.is_zero() {
            Box::new(nbd)
        } else {
            Box::new(LatencyStore::new(
                Box::new(nbd),
                Latency::Fixed(b.net_latency),
            ))
        })
    };
    let depth = usize::try_from(config.store.queue_depth).unwrap_or(1);
    let (mirror_store, mirror) = MirrorStore::create(
        connect()?,
        pages,
        &std::env::temp_dir(),
        depth,
        config.store.latency.0,
    )
    .map_err(|e| format!("cannot make the mirror: {e}"))?;
    let transfer = Arc::new(Transfer {
        mirror,
        copier: connect()?,
        timeout: config.store.io_timeout.0,
    });
    let top = open_store(&config).map_err(|e| e.to_string())?;
    let store = CowStore::unchecked(Box::new(mirror_store), pages, top);
    let built = build_machine_over(&config, Box::new(store), false).map_err(|e| e.to_string())?;
    Ok(Prepared {
        config,
        mode: b.mode,
        guest: b.guest,
        net_latency: b.net_latency,
        built,
        transfer,
    })
}

/// A bound `apf listen`, not yet taking connections.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    options: ListenOptions,
}

impl Listener {
    /// Binds `options.addr` (port 0: any free port).
    pub fn bind(options: &ListenOptions) -> Result<Listener, VmError> {
        let listener = TcpListener::bind(options.addr).map_err(|source| MigrateError::Listen {
            addr: options.addr.to_string(),
            source,
        })?;
        Ok(Listener {
            listener,
            options: options.clone(),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Takes one migration, runs the VM it brings to its end, and returns.
    /// Connections that are not an apf source, or speak another version, are
    /// refused (`log` says so) and the listener keeps listening.
    pub fn take(
        self,
        run: RunOptions,
        observe: Observer<'_>,
        log: Box<dyn Fn(&str) + Send + Sync>,
    ) -> Result<Landed, VmError> {
        let (switch_tx, switch_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            phase: Mutex::new(Phase::Waiting),
            changed: Condvar::new(),
            options: self.options,
            switch: Mutex::new(switch_tx),
            complete_sent: AtomicBool::new(false),
            resumed: AtomicU64::new(0),
            last_request: Mutex::new(Instant::now()),
            log,
        });
        let acceptor = Arc::clone(&shared);
        let listener = self.listener;
        std::thread::Builder::new()
            .name("apf-listen".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(stream) = conn else { continue };
                    let peer = stream
                        .peer_addr()
                        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                    let s = Arc::clone(&acceptor);
                    let _ = std::thread::Builder::new()
                        .name("apf-control".into())
                        .spawn(move || s.serve(stream, peer));
                }
            })
            .map_err(VmError::Thread)?;
        let switch: Switch = switch_rx
            .recv()
            .map_err(|_| VmError::Load("the listener stopped".into()))?;
        land(&shared, switch, run, observe)
    }
}

/// Resumes the VM a switch-over brought and runs it to its end.
fn land(
    shared: &Shared,
    switch: Switch,
    options: RunOptions,
    observe: Observer<'_>,
) -> Result<Landed, VmError> {
    let Switch {
        arrived,
        state,
        prepared,
        rounds,
        round_pages,
    } = switch;
    let Prepared {
        config,
        mode,
        guest,
        net_latency,
        built,
        transfer,
    } = *prepared;
    let session = shared.lock().session().unwrap_or(0);
    let fail = |e: VmError| {
        let mut g = shared.lock();
        shared.set(&mut g, Phase::Waiting);
        e
    };
    let base = built.memory.ram_base().gfn().0;
    let mirror = &transfer.mirror;
    for n in state.held.pages() {
        // Pages a pre-copy round brought are placed (or loaded) already.
        let _ = built
            .memory
            .place_in_store(Gfn(base + u64::from(n)), Slot(n));
        mirror.want(n);
    }
    let changed: Vec<u32> = state.changed.pages().collect();
    for &n in &changed {
        mirror.forget(n);
        built.memory.drop_clean_page(Gfn(base + u64::from(n)));
    }
    let copied_before_start = if mode == MigrateMode::Precopy {
        // If the source cannot be read now, the pages are fetched after the
        // start instead, as in post-copy: better than failing a switch-over
        // the source cannot undo.
        transfer.copy(&changed).unwrap_or_else(|e| {
            (shared.log)(&format!(
                "copying the last pre-copy pages failed ({e}); they follow as in post-copy"
            ));
            0
        })
    } else {
        0
    };
    let resume = Resume {
        guest,
        taken_at: state.taken_at,
        console: &state.console,
        machine: &state.machine,
        vcpus: &state.vcpus,
        progress: &state.progress,
    };
    let (vcpus, begin) = start_resumed(&config, &built, &resume, options.engine).map_err(fail)?;
    let setup = begin - arrived;
    {
        let mut g = shared.lock();
        shared.set(
            &mut g,
            Phase::Running {
                session,
                setup,
                copied_before_start,
            },
        );
    }
    let stop = AtomicBool::new(false);
    let copied_all = AtomicBool::new(false);
    let (copy_error, run, complete) = std::thread::scope(|scope| {
        let copier = scope.spawn(|| {
            // Half the queue: demand faults keep the rest.
            let depth = usize::try_from(config.store.queue_depth / 2).unwrap_or(1);
            let r = copy_missing(&transfer, &built.memory, depth.max(1), &stop);
            let r = match r {
                Ok(()) => Ok(()),
                Err(CopyStop::RunEnded) => Err(None),
                Err(CopyStop::Failed(e)) => Err(Some(e)),
            };
            copied_all.store(r.is_ok(), Ordering::Release);
            let mut g = shared.lock();
            shared.set(
                &mut g,
                Phase::Done {
                    session,
                    setup,
                    copied_before_start,
                    all_pages: r.is_ok(),
                    counts: transfer.mirror.counts(),
                },
            );
            r.err().flatten()
        });
        let mut complete: Option<(Duration, Vec<u64>)> = None;
        let mut watcher = |live: &Live<'_>| {
            if complete.is_none() && copied_all.load(Ordering::Acquire) {
                complete = Some((live.elapsed, work_done(&config, live)));
            }
            observe(live)
        };
        let mut copy_error = None;
        let run = run_resumed(
            &config,
            &built,
            vcpus,
            begin,
            &resume,
            options,
            &mut watcher,
            || {
                stop.store(true, Ordering::Release);
                copy_error = copier
                    .join()
                    .unwrap_or_else(|_| Some("the copier panicked".into()));
            },
        );
        // A run that failed before its end left the copier running: the scope
        // waits for it.
        stop.store(true, Ordering::Release);
        (copy_error, run, complete)
    });
    let run = run?;
    // The source waits for this answer before it exits: give it the time it
    // has to come back for it.
    let deadline = Instant::now() + config.store.reconnect_window();
    let mut g = shared.lock();
    while !shared.complete_sent.load(Ordering::Acquire) && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        g = relock(
            shared
                .changed
                .wait_timeout(g, left.min(Duration::from_millis(100))),
        )
        .0;
    }
    drop(g);
    // Pages left behind because the run ended are not lost: nothing needed
    // them. Those left because the source went away are: the copier failed,
    // or a page the guest needed could not be read.
    let copy_error = copy_error.or_else(|| {
        (run.lost_pages() > 0)
            .then(|| "the source's page server stopped answering the guest's reads".to_string())
    });
    let lost_pages = if copy_error.is_some() {
        transfer
            .mirror
            .missing()
            .into_iter()
            .map(u64::from)
            .collect()
    } else {
        Vec::new()
    };
    Ok(Landed {
        mode,
        config,
        net_latency,
        rounds,
        round_pages,
        taken_at: state.taken_at,
        setup,
        copied_before_start,
        complete_after: complete.as_ref().map(|c| c.0),
        work_at_complete: complete.map(|c| c.1),
        mirror: transfer.mirror.counts(),
        lost_pages,
        copy_error,
        resumed_connections: shared.resumed.load(Ordering::Relaxed),
        run,
    })
}

/// Copies every page the mirror wants and lacks, a batch at a time over the
/// copier's own connection (a demand read never waits behind it), skipping
/// those demand reads brought in meanwhile; and loads each batch from the
/// mirror into guest memory while it has room, as a push into RAM would (the
/// rest stay in the mirror: this host's swap, in effect). Stops early at
/// `stop`, or when a batch fails (the source gone for longer than the
/// reconnect window).
fn copy_missing(
    transfer: &Transfer,
    memory: &GuestMemory,
    depth: usize,
    stop: &AtomicBool,
) -> Result<(), CopyStop> {
    let base = memory.ram_base().gfn().0;
    let room = || memory.free_pages() > memory.budget_pages() / 8 + depth as u64;
    loop {
        let missing = transfer.mirror.missing();
        if missing.is_empty() {
            return Ok(());
        }
        for batch in missing.chunks(COPY_BATCH) {
            if stop.load(Ordering::Acquire) {
                return Err(CopyStop::RunEnded);
            }
            let batch: Vec<u32> = batch
                .iter()
                .copied()
                .filter(|&p| !transfer.mirror.holds(p))
                .collect();
            transfer.copy(&batch).map_err(CopyStop::Failed)?;
            if room() {
                let gfns: Vec<Gfn> = batch.iter().map(|&p| Gfn(base + u64::from(p))).collect();
                prefetch_pages(memory, &gfns, depth, stop);
            }
        }
    }
}

/// Why the copier stopped before every page was here.
#[derive(Debug)]
enum CopyStop {
    /// The VM's run ended: the pages left were never needed.
    RunEnded,
    /// A read failed for good: the source is gone.
    Failed(String),
}
