//! Reading a Linux guest's console as it streams: the init's `apf-proc`,
//! `apf-module` and `apf-init done` lines (the protocol in `linux/mod.rs`), and a
//! kernel panic.
//!
//! The console is the kernel's and the init's at once, so a protocol line may
//! follow a kernel timestamp or another message on the same line; it counts
//! only if it runs to the end of the line in exactly the protocol's form.

/// What the init reported about one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEnd {
    /// `apf-proc <index> done <progress> <checksum>`.
    Done {
        /// Units done.
        progress: u64,
        /// The checksum after them.
        checksum: u64,
    },
    /// `apf-proc <index> killed <signal> <progress> <checksum>`.
    Killed {
        /// The signal that killed it.
        signal: u32,
        /// The last units it reported.
        progress: u64,
        /// The checksum after them.
        checksum: u64,
    },
    /// `apf-proc <index> stopped <progress> <checksum>`: a process without work
    /// of its own, which the init stopped once every process with work had ended.
    Stopped {
        /// The last units it reported.
        progress: u64,
        /// The checksum after them.
        checksum: u64,
    },
}

/// One protocol line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolLine {
    /// A process ended.
    Proc {
        /// Its index on the command line.
        index: usize,
        /// How.
        end: ProcEnd,
    },
    /// `apf-module <name> <value>`: one counter of the guest's apf module.
    Module {
        /// The counter's name (its file in `/sys/kernel/apf/`).
        name: String,
        /// Its value when the processes had ended.
        value: u64,
    },
    /// `apf-init start`: the processes are about to start (the boot is over).
    InitStart,
    /// `apf-init done`: every process ended.
    InitDone,
}

const PROC_PREFIX: &str = "apf-proc ";
const MODULE_PREFIX: &str = "apf-module ";
const INIT_DONE: &str = "apf-init done";
const INIT_START: &str = "apf-init start";
/// How the kernel starts its panic message.
const PANIC: &str = "Kernel panic - not syncing";
/// How the kernel ends it (after the backtrace).
const PANIC_END: &str = "---[ end Kernel panic";

fn checksum(text: &str) -> Option<u64> {
    let lower_hex = text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (text.len() == 16 && lower_hex)
        .then(|| u64::from_str_radix(text, 16).ok())
        .flatten()
}

fn decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    // `parse` takes a leading '+'; the protocol writes digits only.
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// The fields after `apf-proc `, exactly.
fn proc_fields(rest: &str) -> Option<ProtocolLine> {
    let fields: Vec<&str> = rest.split(' ').collect();
    let end = match fields.as_slice() {
        [_, "done", progress, sum] => ProcEnd::Done {
            progress: decimal(progress)?,
            checksum: checksum(sum)?,
        },
        [_, "killed", signal, progress, sum] => ProcEnd::Killed {
            signal: decimal(signal)?,
            progress: decimal(progress)?,
            checksum: checksum(sum)?,
        },
        [_, "stopped", progress, sum] => ProcEnd::Stopped {
            progress: decimal(progress)?,
            checksum: checksum(sum)?,
        },
        _ => return None,
    };
    Some(ProtocolLine::Proc {
        index: decimal(fields[0])?,
        end,
    })
}

/// The fields after `apf-module `, exactly: a name of letters, digits and
/// underscores (a sysfs file's), then a decimal u64.
fn module_fields(rest: &str) -> Option<ProtocolLine> {
    let (name, value) = rest.split_once(' ')?;
    let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    name_ok.then_some(())?;
    Some(ProtocolLine::Module {
        name: name.to_string(),
        value: decimal(value)?,
    })
}

/// The protocol line `line` (without its newline) ends with, if any.
pub fn parse_line(line: &str) -> Option<ProtocolLine> {
    let line = line.trim_end_matches('\r');
    if line.ends_with(INIT_DONE) {
        return Some(ProtocolLine::InitDone);
    }
    if line.ends_with(INIT_START) {
        return Some(ProtocolLine::InitStart);
    }
    let after = |prefix: &'static str| {
        line.match_indices(prefix)
            .map(move |(at, _)| &line[at + prefix.len()..])
    };
    after(PROC_PREFIX)
        .find_map(proc_fields)
        .or_else(|| after(MODULE_PREFIX).find_map(module_fields))
}

/// The console as it arrives: whole lines only, each looked at once.
#[derive(Debug, Default)]
pub struct ConsoleScanner {
    /// Bytes of the console already looked at.
    seen: usize,
    /// The first report for each process index (later ones are ignored).
    procs: Vec<Option<ProcEnd>>,
    /// The module's counters in the order printed (a repeated name: the first).
    guest_module: Vec<(String, u64)>,
    init_started: bool,
    init_done: bool,
    panic: Option<String>,
    panic_ended: bool,
}

impl ConsoleScanner {
    /// A scanner for a run of `processes` processes.
    pub fn new(processes: usize) -> ConsoleScanner {
        ConsoleScanner {
            procs: vec![None; processes],
            ..ConsoleScanner::default()
        }
    }

    /// Looks at the whole lines of `console` (everything the guest printed so
    /// far) it has not seen; returns the indices of processes reported ended by
    /// them. With `at_end`, a last line without its newline counts too.
    pub fn scan(&mut self, console: &[u8], at_end: bool) -> Vec<usize> {
        let mut ended = Vec::new();
        let fresh = &console[self.seen.min(console.len())..];
        let mut consumed = 0;
        for piece in fresh.split_inclusive(|&b| b == b'\n') {
            let complete = piece.ends_with(b"\n");
            if !complete && !at_end {
                break;
            }
            consumed += piece.len();
            let text = String::from_utf8_lossy(piece);
            self.line(text.trim_end_matches('\n'), &mut ended);
        }
        self.seen += consumed;
        ended
    }

    fn line(&mut self, text: &str, ended: &mut Vec<usize>) {
        if let Some(at) = text.find(PANIC)
            && self.panic.is_none()
        {
            self.panic = Some(text[at..].trim_end_matches('\r').to_string());
        }
        if text.contains(PANIC_END) {
            self.panic_ended = true;
        }
        match parse_line(text) {
            Some(ProtocolLine::InitStart) => self.init_started = true,
            Some(ProtocolLine::InitDone) => self.init_done = true,
            Some(ProtocolLine::Proc { index, end }) => {
                if let Some(slot @ None) = self.procs.get_mut(index) {
                    *slot = Some(end);
                    ended.push(index);
                }
            }
            Some(ProtocolLine::Module { name, value })
                if !self.guest_module.iter().any(|(n, _)| *n == name) =>
            {
                self.guest_module.push((name, value));
            }
            Some(ProtocolLine::Module { .. }) | None => {}
        }
    }

    /// What the init reported for each process (`None`: nothing, or not yet).
    pub fn procs(&self) -> &[Option<ProcEnd>] {
        &self.procs
    }

    /// The guest module's counters the init printed, in its order.
    pub fn guest_module(&self) -> &[(String, u64)] {
        &self.guest_module
    }

    /// Whether the init said the processes are starting.
    pub fn init_started(&self) -> bool {
        self.init_started
    }

    /// Whether the init said every process ended.
    pub fn init_done(&self) -> bool {
        self.init_done
    }

    /// The kernel's panic line, if it panicked.
    pub fn panic(&self) -> Option<&str> {
        self.panic.as_deref()
    }

    /// Whether the kernel finished printing its panic (the end marker).
    pub fn panic_ended(&self) -> bool {
        self.panic_ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_lines_parse() {
        assert_eq!(
            parse_line("apf-proc 0 done 1500 00000000deadbeef"),
            Some(ProtocolLine::Proc {
                index: 0,
                end: ProcEnd::Done {
                    progress: 1500,
                    checksum: 0xdead_beef
                }
            })
        );
        assert_eq!(
            parse_line("apf-proc 12 killed 9 77 ffffffffffffffff\r"),
            Some(ProtocolLine::Proc {
                index: 12,
                end: ProcEnd::Killed {
                    signal: 9,
                    progress: 77,
                    checksum: u64::MAX
                }
            })
        );
        assert_eq!(
            parse_line("apf-proc 3 stopped 1984 00000000000000ab"),
            Some(ProtocolLine::Proc {
                index: 3,
                end: ProcEnd::Stopped {
                    progress: 1984,
                    checksum: 0xab
                }
            })
        );
        assert_eq!(
            parse_line("apf-module sleepers_max 18446744073709551615\r"),
            Some(ProtocolLine::Module {
                name: "sleepers_max".into(),
                value: u64::MAX
            })
        );
        assert_eq!(
            parse_line("[    9.1] apf: x apf-module not_present 0"),
            Some(ProtocolLine::Module {
                name: "not_present".into(),
                value: 0
            }),
            "a kernel prefix on the same line"
        );
        assert_eq!(parse_line("apf-init done"), Some(ProtocolLine::InitDone));
        assert_eq!(
            parse_line("[    4.1] x apf-init start"),
            Some(ProtocolLine::InitStart)
        );
        assert_eq!(parse_line("apf-init start 2"), None);
    }

    #[test]
    fn a_kernel_prefix_on_the_same_line_is_allowed() {
        assert_eq!(
            parse_line("[    3.141592] random: crng init done apf-proc 1 done 5 0123456789abcdef"),
            Some(ProtocolLine::Proc {
                index: 1,
                end: ProcEnd::Done {
                    progress: 5,
                    checksum: 0x0123_4567_89ab_cdef
                }
            })
        );
        assert_eq!(
            parse_line("apf-proc 1 d[    1.0] apf-init done"),
            Some(ProtocolLine::InitDone)
        );
    }

    #[test]
    fn garbage_is_not_a_protocol_line() {
        for bad in [
            "",
            "apf-proc",
            "apf-proc 0 done 15 0123456789abcde",   // 15 digits
            "apf-proc 0 done 15 0123456789abcdef0", // 17 digits
            "apf-proc 0 done 15 0123456789ABCDEF",  // upper case
            "apf-proc 0 done -1 0123456789abcdef",  // not a count
            "apf-proc +0 done 1 0123456789abcdef",  // a sign
            "apf-proc 0 done 1  0123456789abcdef",  // two spaces
            "apf-proc 0 done 1 0123456789abcdef x", // a tail
            "apf-proc 0 killed 1 0123456789abcdef", // a field short
            "apf-proc 0 finished 1 0123456789abcdef", // no such end
            "apf-proc 0 done 1 0123[    2.0] usb 1-1: new device",
            "apf-proc 0 done 99999999999999999999999 0123456789abcdef", // > u64
            "apf-init done!",
            "apf-init",
            "apf-proc 0 stopped 1 0123456789abcdef 5", // killed's arity
            "apf-proc 0 stopped 0123456789abcdef",     // a field short
            "apf-module",
            "apf-module page_ready",
            "apf-module page_ready ",
            "apf-module page_ready 12 13",
            "apf-module page_ready -1",
            "apf-module page_ready +1",
            "apf-module page_ready 0x10",
            "apf-module page_ready 18446744073709551616", // > u64
            "apf-module  12",
            "apf-module page-ready 12",
            "apf-module page/ready 12",
            "apf-init: module counter wake_all: not a decimal u64 and a newline",
        ] {
            assert_eq!(parse_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_scanner_takes_whole_lines_as_they_arrive() {
        let mut s = ConsoleScanner::new(2);
        let mut console = b"[    0.000000] Booting Linux\napf-proc 1 do".to_vec();
        assert_eq!(s.scan(&console, false), Vec::<usize>::new());
        assert_eq!(s.procs(), [None, None]);
        console.extend_from_slice(b"ne 3 00000000000000ff\n[ 1.0] x\napf-proc 0 killed 11 2 ");
        assert_eq!(s.scan(&console, false), [1]);
        console.extend_from_slice(b"0000000000000002\napf-proc 1 done 4 0000000000000004\n");
        assert_eq!(s.scan(&console, false), [0], "a second report is ignored");
        assert_eq!(
            s.procs(),
            [
                Some(ProcEnd::Killed {
                    signal: 11,
                    progress: 2,
                    checksum: 2
                }),
                Some(ProcEnd::Done {
                    progress: 3,
                    checksum: 0xff
                })
            ]
        );
        assert!(!s.init_done());
        console.extend_from_slice(b"apf-proc 7 done 1 0000000000000001\napf-init done");
        assert_eq!(
            s.scan(&console, false),
            Vec::<usize>::new(),
            "index 7 is no process"
        );
        assert!(!s.init_done(), "not a whole line yet");
        s.scan(&console, true);
        assert!(s.init_done());
    }

    #[test]
    fn module_counters_are_kept_in_order_once_each() {
        let mut s = ConsoleScanner::new(1);
        let console = b"apf-proc 0 stopped 64 0000000000000040\n\
            apf-module not_present 7\n[ 2.0] note\napf-module page_ready 5\n\
            apf-module not_present 9\napf-module wake_all 1";
        assert_eq!(s.scan(console, false), [0]);
        assert_eq!(
            s.procs(),
            [Some(ProcEnd::Stopped {
                progress: 64,
                checksum: 0x40
            })]
        );
        assert_eq!(
            s.guest_module(),
            [
                ("not_present".to_string(), 7),
                ("page_ready".to_string(), 5)
            ],
            "the repeated name keeps its first value; the last line is not whole yet"
        );
        s.scan(console, true);
        assert_eq!(s.guest_module().len(), 3);
        assert_eq!(ConsoleScanner::new(0).guest_module(), []);
    }

    #[test]
    fn a_panic_is_caught_with_its_line() {
        let mut s = ConsoleScanner::new(0);
        let console = b"[    1.5] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\r\n[ 1.6] CPU: 0 PID: 1\n";
        s.scan(console, false);
        assert_eq!(
            s.panic(),
            Some("Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)")
        );
        assert!(!s.panic_ended());
        let mut more = console.to_vec();
        more.extend_from_slice(b"[ 1.7] ---[ end Kernel panic - not syncing: VFS ]---\n");
        s.scan(&more, false);
        assert!(s.panic_ended());
        assert!(
            s.panic().unwrap().ends_with("(0,0)"),
            "the first panic line is kept"
        );
    }
}
