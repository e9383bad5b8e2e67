//! The state of `goalloc top`, apart from any terminal: one entry per Go
//! process with its rates and short history, the sort order, the name
//! filter, the selection, the detail pane, the allocation profile of `p`
//! (running, or its pane), and what each key does.
//!
//! Everything here is plain data driven by registry snapshots
//! ([`Model::update`]), the collector's news of a profile
//! ([`Model::profile_progress`] and the two after it) and keys
//! ([`Model::on_key`]), so the behaviour of the view is unit-tested without
//! a terminal; `ui` only draws what this holds.

use std::{
    cmp::Ordering,
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use agent_common::HIST_BUCKETS;
use gobinary::runtime::RuntimeCounters;

use crate::{
    profile::TopTables,
    registry::{PodNames, ProcessInfo, ProcessSnapshot},
    report::{RuntimeDelta, human_bytes, short_version},
    runtime::Unavailable,
};

/// Samples kept per process for the sparklines (two minutes at 1 s).
pub const HISTORY: usize = 120;
/// The goroutine trend compares the last sample with the one this many
/// intervals before: one interval alone flickers with every short-lived
/// goroutine.
pub const TREND_SPAN: usize = 5;
/// Intervals summed for the size distribution of the detail pane, so a
/// quiet second does not empty it.
pub const SIZE_WINDOW: usize = 10;
/// How long `p` samples a process: long enough for a few hundred samples
/// of a busy process, short enough to wait for.
pub const PROFILE_DURATION: Duration = Duration::from_secs(5);
/// `p`'s sampling rate, one sample per this many bytes on average: Go's
/// default (512 KiB) gives too few samples in [`PROFILE_DURATION`].
pub const PROFILE_RATE: u64 = 64 * 1024;
/// Rows of each ranking in the profile pane.
pub const PROFILE_ROWS: usize = 10;

/// The table's columns, in order. Each one is also a sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Pid,
    Comm,
    Container,
    Go,
    Allocs,
    Bytes,
    Heap,
    Goal,
    Gc,
    Goroutines,
}

impl Column {
    pub const ALL: [Column; 10] = [
        Column::Pid,
        Column::Comm,
        Column::Container,
        Column::Go,
        Column::Allocs,
        Column::Bytes,
        Column::Heap,
        Column::Goal,
        Column::Gc,
        Column::Goroutines,
    ];

    /// Position in [`Column::ALL`] and in [`Proc::cells`].
    pub fn index(self) -> usize {
        // ALL lists the variants in declaration order.
        self as usize
    }

    pub fn title(self) -> &'static str {
        match self {
            Column::Pid => "PID",
            Column::Comm => "COMM",
            Column::Container => "CONTAINER/POD",
            Column::Go => "GO",
            Column::Allocs => "ALLOCS/s",
            Column::Bytes => "BYTES/s",
            Column::Heap => "LIVE HEAP",
            Column::Goal => "HEAP GOAL",
            Column::Gc => "GC/s",
            Column::Goroutines => "GOROUTINES",
        }
    }

    /// The key that sorts by this column: `1`..`9`, then `0`, left to right.
    pub fn key(self) -> char {
        char::from_digit(((self.index() + 1) % 10) as u32, 10).unwrap_or('?')
    }

    pub fn from_key(c: char) -> Option<Column> {
        Column::ALL.into_iter().find(|col| col.key() == c)
    }

    /// Short name in the footer's key list.
    pub fn short(self) -> &'static str {
        match self {
            Column::Pid => "pid",
            Column::Comm => "comm",
            Column::Container => "pod",
            Column::Go => "go",
            Column::Allocs => "allocs",
            Column::Bytes => "bytes",
            Column::Heap => "heap",
            Column::Goal => "goal",
            Column::Gc => "gc",
            Column::Goroutines => "goroutines",
        }
    }

    /// Figures sort biggest first (the question is "who is eating memory"),
    /// names and pids in reading order.
    fn descending_by_default(self) -> bool {
        !matches!(
            self,
            Column::Pid | Column::Comm | Column::Container | Column::Go
        )
    }

    pub fn is_numeric(self) -> bool {
        !matches!(self, Column::Comm | Column::Container | Column::Go)
    }
}

/// Where the goroutine count went over the last [`TREND_SPAN`] intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trend {
    Up,
    Down,
    Flat,
}

impl Trend {
    pub fn mark(self) -> char {
        match self {
            Trend::Up => '↑',
            Trend::Down => '↓',
            Trend::Flat => '→',
        }
    }
}

/// Per-second figures over the last interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub allocs: f64,
    pub bytes: f64,
    pub gc: f64,
}

/// One process as the view knows it.
#[derive(Debug, Clone)]
pub struct Proc {
    pub info: Arc<ProcessInfo>,
    pub pod: PodNames,
    /// The last counters read, and when: the start of the next rate.
    last: Option<(Instant, RuntimeCounters)>,
    /// Rates over the last interval; `None` until two reads succeeded.
    pub rates: Option<Rates>,
    /// Why the last read gave no counters.
    pub unavailable: Option<Unavailable>,
    /// Live heap and goroutines at each successful read, oldest first.
    pub heap: VecDeque<u64>,
    pub goroutines: VecDeque<u64>,
    /// Cumulative allocation sizes at each successful read (the last
    /// [`SIZE_WINDOW`] + 1), for the distribution over a window.
    sizes: VecDeque<[u64; HIST_BUCKETS]>,
}

impl Proc {
    fn new(info: Arc<ProcessInfo>, pod: PodNames) -> Proc {
        Proc {
            info,
            pod,
            last: None,
            rates: None,
            unavailable: None,
            heap: VecDeque::new(),
            goroutines: VecDeque::new(),
            sizes: VecDeque::new(),
        }
    }

    /// Takes one read of the process.
    fn observe(&mut self, at: Instant, runtime: Result<RuntimeCounters, Unavailable>) {
        match runtime {
            Ok(now) => {
                self.rates = self.last.as_ref().and_then(|(then, prev)| {
                    let seconds = at.checked_duration_since(*then)?.as_secs_f64();
                    if seconds <= 0.0 {
                        return None;
                    }
                    let d = RuntimeDelta::between(prev, &now);
                    Some(Rates {
                        allocs: d.allocs as f64 / seconds,
                        bytes: d.bytes as f64 / seconds,
                        gc: d.gc_cycles as f64 / seconds,
                    })
                });
                push_bounded(&mut self.heap, now.heap_alloc, HISTORY);
                push_bounded(&mut self.goroutines, now.goroutines, HISTORY);
                push_bounded(&mut self.sizes, now.alloc_sizes, SIZE_WINDOW + 1);
                self.unavailable = None;
                self.last = Some((at, now));
            }
            Err(u) => {
                // The history stays: a read that failed once (a process in
                // the middle of exec, say) should not wipe the sparklines.
                self.rates = None;
                self.unavailable = Some(u);
            }
        }
    }

    fn counters(&self) -> Option<&RuntimeCounters> {
        match &self.unavailable {
            Some(_) => None,
            None => self.last.as_ref().map(|(_, c)| c),
        }
    }

    pub fn live_heap(&self) -> Option<u64> {
        self.counters().map(|c| c.heap_alloc)
    }

    pub fn heap_goal(&self) -> Option<u64> {
        self.counters().map(|c| c.next_gc)
    }

    pub fn goroutine_count(&self) -> Option<u64> {
        self.counters().map(|c| c.goroutines)
    }

    pub fn heap_objects(&self) -> Option<u64> {
        self.counters().map(|c| c.heap_objects)
    }

    pub fn gc_cycles(&self) -> Option<u32> {
        self.counters().map(|c| c.num_gc)
    }

    /// The goroutine count now against [`TREND_SPAN`] reads ago (or the
    /// oldest read, when the process is younger than that).
    pub fn trend(&self) -> Option<Trend> {
        if self.unavailable.is_some() || self.goroutines.len() < 2 {
            return None;
        }
        let now = *self.goroutines.back()?;
        let then = self.goroutines[self.goroutines.len().saturating_sub(TREND_SPAN + 1)];
        Some(match now.cmp(&then) {
            Ordering::Greater => Trend::Up,
            Ordering::Less => Trend::Down,
            Ordering::Equal => Trend::Flat,
        })
    }

    /// Allocations per size bucket over the last [`SIZE_WINDOW`] intervals
    /// (fewer for a younger process; all zero before the second read).
    pub fn size_distribution(&self) -> [u64; HIST_BUCKETS] {
        let mut out = [0; HIST_BUCKETS];
        if let (Some(first), Some(last)) = (self.sizes.front(), self.sizes.back()) {
            for (o, (l, f)) in out.iter_mut().zip(last.iter().zip(first.iter())) {
                *o = l.saturating_sub(*f);
            }
        }
        out
    }

    /// Intervals covered by [`Proc::size_distribution`].
    pub fn size_window(&self) -> usize {
        self.sizes.len().saturating_sub(1)
    }

    /// The container or pod column: `namespace/pod` when the Kubernetes API
    /// named it, else the runtime and short container id, else `-` (host).
    pub fn container(&self) -> String {
        if !self.pod.pod.is_empty() {
            return format!("{}/{}", self.pod.namespace, self.pod.pod);
        }
        match &self.info.cgroup.container_id {
            Some(id) => {
                let short = &id[..id.len().min(12)];
                match self.info.cgroup.runtime {
                    Some(rt) => format!("{rt}:{short}"),
                    None => short.to_string(),
                }
            }
            None => "-".to_string(),
        }
    }

    /// Case-insensitive substring match on the names a user knows a
    /// process by: comm, executable, pod, namespace, container.
    pub fn matches(&self, needle: &str) -> bool {
        if needle.is_empty() {
            return true;
        }
        let needle = needle.to_lowercase();
        let container_id = self.info.cgroup.container_id.as_deref().unwrap_or_default();
        [
            self.info.comm.as_str(),
            self.info.exe.as_str(),
            self.pod.namespace.as_str(),
            self.pod.pod.as_str(),
            self.pod.container.as_str(),
            container_id,
        ]
        .iter()
        .any(|h| h.to_lowercase().contains(&needle))
    }

    fn number(&self, col: Column) -> Option<f64> {
        match col {
            Column::Pid => Some(f64::from(self.info.pid)),
            Column::Allocs => self.rates.map(|r| r.allocs),
            Column::Bytes => self.rates.map(|r| r.bytes),
            Column::Gc => self.rates.map(|r| r.gc),
            Column::Heap => self.live_heap().map(|v| v as f64),
            Column::Goal => self.heap_goal().map(|v| v as f64),
            Column::Goroutines => self.goroutine_count().map(|v| v as f64),
            Column::Comm | Column::Container | Column::Go => None,
        }
    }

    /// The text of each column, in [`Column::ALL`] order.
    pub fn cells(&self) -> [String; 10] {
        let dash = || "-".to_string();
        let goroutines = match (self.goroutine_count(), self.trend()) {
            (Some(n), Some(t)) => format!("{n} {}", t.mark()),
            (Some(n), None) => format!("{n}  "),
            (None, _) => dash(),
        };
        [
            self.info.pid.to_string(),
            self.info.comm.clone(),
            self.container(),
            short_version(&self.info.go_version).to_string(),
            self.rates.map_or_else(dash, |r| human_count(r.allocs)),
            self.rates.map_or_else(dash, |r| human_bytes(r.bytes)),
            self.live_heap()
                .map_or_else(dash, |v| human_bytes(v as f64)),
            self.heap_goal()
                .map_or_else(dash, |v| human_bytes(v as f64)),
            self.rates.map_or_else(dash, |r| format!("{:.1}", r.gc)),
            goroutines,
        ]
    }

    /// What to say after the figures: why there are none.
    pub fn note(&self) -> String {
        match &self.unavailable {
            Some(u) => format!("no counters: {}", u.reason),
            None if self.rates.is_none() => "reading...".to_string(),
            None => String::new(),
        }
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    if q.len() == cap {
        q.pop_front();
    }
    q.push_back(v);
}

/// `203.4k`, `1.2M`: counts per second in a narrow column.
pub fn human_count(v: f64) -> String {
    if v < 1000.0 {
        format!("{v:.0}")
    } else if v < 1e6 {
        format!("{:.1}k", v / 1e3)
    } else if v < 1e9 {
        format!("{:.1}M", v / 1e6)
    } else {
        format!("{:.1}G", v / 1e9)
    }
}

/// The numbers in a version string, for ordering `go1.9` before `go1.21`.
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A key, as the model understands it (the terminal's are mapped in `top`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Backspace,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    /// Ctrl-C: quits from anywhere, even while typing a filter.
    Interrupt,
}

/// What the event loop does after a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
    /// Ask the collector for profile `id` of `pid`.
    Profile {
        id: u64,
        pid: u32,
    },
    /// Tell the collector to drop profile `id`.
    CancelProfile {
        id: u64,
    },
}

/// A finished allocation profile, as its pane shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileReport {
    pub pid: u32,
    /// How long it sampled: [`PROFILE_DURATION`], or until the process
    /// exited.
    pub sampled_for: Duration,
    pub rate: u64,
    /// The process exited before the end.
    pub exited: bool,
    /// The profile's own comments: what the process ran, its exit, samples
    /// lost.
    pub notes: Vec<String>,
    pub tables: TopTables,
}

/// The allocation profile `p` took or is taking.
#[derive(Debug, Clone, PartialEq)]
pub enum Profiling {
    /// Asked for (the collector may still be starting it) or running.
    Running {
        /// Tells this profile's news from a cancelled one's.
        id: u64,
        pid: u32,
        comm: String,
        left: Duration,
        samples: u64,
    },
    /// Finished: its pane is open until closed.
    Shown(Box<ProfileReport>),
}

/// Rows a page key moves.
const PAGE: usize = 10;

/// Everything the view shows.
#[derive(Debug)]
pub struct Model {
    procs: HashMap<u32, Proc>,
    pub sort: Column,
    pub descending: bool,
    pub filter: String,
    /// `/` was pressed: keys go to the filter until Enter or Esc.
    pub editing_filter: bool,
    /// The selected process, by pid (so it stays selected when rows move).
    pub selected: Option<u32>,
    /// Row of the selection at the last move: where it lands when the
    /// selected process exits or is filtered out.
    cursor: usize,
    /// The user has not chosen a row yet: the selection stays on the top
    /// row as the order changes (rates arrive after the first read).
    follow_top: bool,
    pub detail: bool,
    /// Processes goalloc may not inspect (maybe Go, maybe not).
    pub inaccessible: usize,
    /// Snapshots taken so far.
    pub updates: u64,
    pub profiling: Option<Profiling>,
    /// A line answering the last key (a profile that could not start, or
    /// was cancelled); the next key clears it.
    pub notice: Option<String>,
    /// Profiles asked for so far: the id of the next one.
    profiles: u64,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            procs: HashMap::new(),
            sort: Column::Allocs,
            descending: true,
            filter: String::new(),
            editing_filter: false,
            selected: None,
            cursor: 0,
            follow_top: true,
            detail: false,
            inaccessible: 0,
            updates: 0,
            profiling: None,
            notice: None,
            profiles: 0,
        }
    }
}

impl Model {
    /// Takes the registry's snapshot taken at `at`: processes missing from
    /// it have exited and go; a pid now running another process (pid reuse,
    /// or an exec) starts afresh.
    pub fn update(&mut self, at: Instant, snapshots: Vec<ProcessSnapshot>, inaccessible: usize) {
        let mut next = HashMap::with_capacity(snapshots.len());
        for s in snapshots {
            if s.exited {
                continue;
            }
            let pid = s.info.pid;
            let mut p = match self.procs.remove(&pid) {
                // Same process: the registry hands out one ProcessInfo per
                // process, a new one for each exec or reuse of the pid.
                Some(p) if Arc::ptr_eq(&p.info, &s.info) => p,
                _ => Proc::new(s.info.clone(), PodNames::default()),
            };
            p.pod = s.pod;
            p.observe(at, s.runtime);
            next.insert(pid, p);
        }
        self.procs = next;
        self.inaccessible = inaccessible;
        self.updates += 1;
        self.fix_selection();
    }

    /// Number of processes, filtered or not.
    pub fn total(&self) -> usize {
        self.procs.len()
    }

    pub fn get(&self, pid: u32) -> Option<&Proc> {
        self.procs.get(&pid)
    }

    /// The processes that pass the filter, in display order.
    pub fn rows(&self) -> Vec<&Proc> {
        let mut rows: Vec<&Proc> = self
            .procs
            .values()
            .filter(|p| p.matches(&self.filter))
            .collect();
        rows.sort_by(|a, b| self.compare(a, b).then(a.info.pid.cmp(&b.info.pid)));
        rows
    }

    /// The sort order. Processes without the figure (no counters yet, or
    /// none readable) go last whichever the direction.
    fn compare(&self, a: &Proc, b: &Proc) -> Ordering {
        let directed = |o: Ordering| if self.descending { o.reverse() } else { o };
        match self.sort {
            Column::Comm => directed(a.info.comm.cmp(&b.info.comm)),
            Column::Container => directed(a.container().cmp(&b.container())),
            Column::Go => {
                directed(version_key(&a.info.go_version).cmp(&version_key(&b.info.go_version)))
            }
            col => match (a.number(col), b.number(col)) {
                (Some(x), Some(y)) => directed(x.total_cmp(&y)),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            },
        }
    }

    /// The selected process, if it is shown.
    pub fn selected_proc(&self) -> Option<&Proc> {
        let pid = self.selected?;
        self.procs.get(&pid).filter(|p| p.matches(&self.filter))
    }

    /// Index of the selection among [`Model::rows`].
    pub fn selected_index(&self, rows: &[&Proc]) -> Option<usize> {
        let pid = self.selected?;
        rows.iter().position(|p| p.info.pid == pid)
    }

    /// Keeps the selection on a shown row: the same process if it still is,
    /// else the row where it was.
    fn fix_selection(&mut self) {
        let rows = self.rows();
        if rows.is_empty() {
            self.selected = None;
            return;
        }
        match self.selected_index(&rows) {
            _ if self.follow_top => {
                self.selected = Some(rows[0].info.pid);
                self.cursor = 0;
            }
            Some(i) => self.cursor = i,
            None => {
                let i = self.cursor.min(rows.len() - 1);
                self.selected = Some(rows[i].info.pid);
                self.cursor = i;
            }
        }
    }

    /// Moves the selection by `delta` rows (clamped).
    fn move_selection(&mut self, delta: isize) {
        self.follow_top = false;
        let rows = self.rows();
        if rows.is_empty() {
            return;
        }
        let now = self.selected_index(&rows).unwrap_or(0);
        let i = now.saturating_add_signed(delta).min(rows.len() - 1);
        let pid = rows[i].info.pid;
        self.selected = Some(pid);
        self.cursor = i;
    }

    /// Sorts by `col`; choosing the current column again reverses it.
    pub fn sort_by(&mut self, col: Column) {
        if self.sort == col {
            self.descending = !self.descending;
        } else {
            self.sort = col;
            self.descending = col.descending_by_default();
        }
    }

    pub fn on_key(&mut self, key: Key) -> Flow {
        if key == Key::Interrupt {
            return Flow::Quit;
        }
        // A notice answers the key before; it is read by now.
        self.notice = None;
        if self.editing_filter {
            match key {
                Key::Char(c) => self.filter.push(c),
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Enter => self.editing_filter = false,
                Key::Esc => {
                    self.filter.clear();
                    self.editing_filter = false;
                }
                // Moving through the matches while typing.
                other => self.navigate(other),
            }
            self.fix_selection();
            return Flow::Continue;
        }
        let mut flow = Flow::Continue;
        match key {
            Key::Char('q') => return Flow::Quit,
            Key::Char('p') => flow = self.profile_key(),
            Key::Esc if self.profile_running().is_some() => flow = self.cancel_profile(),
            // The profile pane is on top: these close it first.
            Key::Esc | Key::Enter if self.profile_report().is_some() => self.profiling = None,
            Key::Char('/') => self.editing_filter = true,
            Key::Char('r') => self.descending = !self.descending,
            Key::Char('k') => self.move_selection(-1),
            Key::Char('j') => self.move_selection(1),
            Key::Char(c) => {
                if let Some(col) = Column::from_key(c) {
                    self.sort_by(col);
                }
            }
            Key::Enter => {
                self.detail = self.selected_proc().is_some();
                // The pane shows this process until another row is chosen.
                self.follow_top = false;
            }
            Key::Esc => {
                if self.detail {
                    self.detail = false;
                } else {
                    self.filter.clear();
                }
            }
            other => self.navigate(other),
        }
        self.fix_selection();
        flow
    }

    /// `p`: profiles the selected process, or cancels the running profile,
    /// or closes the profile pane. One profile at a time.
    fn profile_key(&mut self) -> Flow {
        match self.profiling {
            Some(Profiling::Running { .. }) => return self.cancel_profile(),
            Some(Profiling::Shown(_)) => {
                self.profiling = None;
                return Flow::Continue;
            }
            None => {}
        }
        let Some(p) = self.selected_proc() else {
            self.notice = Some("no process selected to profile".into());
            return Flow::Continue;
        };
        let (pid, comm) = (p.info.pid, p.info.comm.clone());
        self.profiles += 1;
        let id = self.profiles;
        self.profiling = Some(Profiling::Running {
            id,
            pid,
            comm,
            left: PROFILE_DURATION,
            samples: 0,
        });
        // The selection is what is being profiled: it stays put.
        self.follow_top = false;
        Flow::Profile { id, pid }
    }

    fn cancel_profile(&mut self) -> Flow {
        match self.profiling.take() {
            Some(Profiling::Running { id, pid, .. }) => {
                self.notice = Some(format!("profile of pid {pid} cancelled"));
                Flow::CancelProfile { id }
            }
            other => {
                self.profiling = other;
                Flow::Continue
            }
        }
    }

    /// The running profile: its id and pid.
    pub fn profile_running(&self) -> Option<(u64, u32)> {
        match &self.profiling {
            Some(Profiling::Running { id, pid, .. }) => Some((*id, *pid)),
            _ => None,
        }
    }

    /// The finished profile whose pane is open.
    pub fn profile_report(&self) -> Option<&ProfileReport> {
        match &self.profiling {
            Some(Profiling::Shown(r)) => Some(r),
            _ => None,
        }
    }

    /// The collector's news of profile `id`: time left, samples so far.
    /// News of a cancelled profile (sent before the cancel reached the
    /// collector) is dropped, here and in the two below.
    pub fn profile_progress(&mut self, id: u64, left: Duration, samples: u64) {
        if let Some(Profiling::Running {
            id: running,
            left: l,
            samples: s,
            ..
        }) = &mut self.profiling
            && *running == id
        {
            (*l, *s) = (left, samples);
        }
    }

    /// Profile `id` finished: its pane opens.
    pub fn profile_done(&mut self, id: u64, report: ProfileReport) {
        if self
            .profile_running()
            .is_some_and(|(running, _)| running == id)
        {
            self.profiling = Some(Profiling::Shown(Box::new(report)));
        }
    }

    /// Profile `id` could not start, or failed: why, in the status line.
    pub fn profile_failed(&mut self, id: u64, why: &str) {
        let Some((running, pid)) = self.profile_running() else {
            return;
        };
        if running != id {
            return;
        }
        self.profiling = None;
        // Reasons that name the process (the registry's, a failure
        // mid-profile) are whole sentences already.
        self.notice = Some(if why.starts_with(&format!("pid {pid} ")) {
            why.to_string()
        } else {
            format!("pid {pid} cannot be profiled: {why}")
        });
    }

    /// The line between the table and the footer: the running profile, or
    /// the notice.
    pub fn status_note(&self) -> Option<String> {
        if let Some(Profiling::Running {
            pid,
            comm,
            left,
            samples,
            ..
        }) = &self.profiling
        {
            // Whole seconds, rounded up: "0s left" only at the very end.
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            return Some(format!(
                "profiling pid {pid} ({comm})… {secs}s left · {samples} samples so far · p or Esc cancels"
            ));
        }
        self.notice.clone()
    }

    fn navigate(&mut self, key: Key) {
        match key {
            Key::Up => self.move_selection(-1),
            Key::Down => self.move_selection(1),
            Key::PageUp => self.move_selection(-(PAGE as isize)),
            Key::PageDown => self.move_selection(PAGE as isize),
            Key::Home => self.move_selection(isize::MIN),
            Key::End => self.move_selection(isize::MAX),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::exporter::fold::zero_runtime;

    fn info(pid: u32, comm: &str) -> Arc<ProcessInfo> {
        Arc::new(ProcessInfo {
            pid,
            comm: comm.into(),
            exe: format!("/srv/{comm}/bin/{comm}"),
            go_version: "go1.27.3".into(),
            cgroup: Default::default(),
        })
    }

    /// Counters after `allocs` allocations of 16 bytes, with this live heap
    /// and goroutine count.
    fn counters(allocs: u64, heap: u64, goroutines: u64) -> RuntimeCounters {
        let mut c = zero_runtime();
        c.mallocs = allocs;
        c.total_alloc = allocs * 16;
        c.alloc_sizes[4] = allocs;
        c.heap_alloc = heap;
        c.next_gc = 2 * heap;
        c.goroutines = goroutines;
        c
    }

    fn snap(info: &Arc<ProcessInfo>, c: RuntimeCounters) -> ProcessSnapshot {
        ProcessSnapshot {
            info: info.clone(),
            pod: PodNames::default(),
            runtime: Ok(c),
            probes: None,
            exited: false,
        }
    }

    fn denied(info: &Arc<ProcessInfo>) -> ProcessSnapshot {
        ProcessSnapshot {
            runtime: Err(Unavailable {
                reason: "access_denied",
                detail: "process_vm_readv: Operation not permitted".into(),
            }),
            ..snap(info, zero_runtime())
        }
    }

    fn pids(m: &Model) -> Vec<u32> {
        m.rows().iter().map(|p| p.info.pid).collect()
    }

    #[test]
    fn rates_over_the_real_interval() {
        let t0 = Instant::now();
        let a = info(10, "api");
        let mut m = Model::default();
        m.update(t0, vec![snap(&a, counters(1000, 4096, 8))], 0);
        let p = m.get(10).unwrap();
        assert_eq!(p.rates, None, "one read gives no rate");
        assert_eq!(p.cells()[4], "-");
        assert_eq!(p.note(), "reading...");
        m.update(
            t0 + Duration::from_secs(2),
            vec![snap(&a, counters(401_000, 8192, 8))],
            0,
        );
        let p = m.get(10).unwrap();
        let r = p.rates.unwrap();
        assert_eq!(r.allocs, 200_000.0);
        assert_eq!(r.bytes, 3_200_000.0);
        let cells = p.cells();
        assert_eq!(cells[4], "200.0k");
        assert_eq!(cells[5], "3.1 MiB");
        assert_eq!(cells[6], "8.0 KiB");
        assert_eq!(cells[7], "16.0 KiB");
        assert_eq!(cells[9], "8 →");
        assert_eq!(p.note(), "");
    }

    #[test]
    fn exited_processes_go_and_reused_pids_start_afresh() {
        let t0 = Instant::now();
        let (a, b) = (info(10, "api"), info(11, "worker"));
        let mut m = Model::default();
        m.update(
            t0,
            vec![snap(&a, counters(0, 1, 1)), snap(&b, counters(0, 1, 1))],
            0,
        );
        m.update(
            t0 + Duration::from_secs(1),
            vec![snap(&a, counters(10, 1, 1))],
            0,
        );
        assert_eq!(pids(&m), [10]);
        assert!(m.get(10).unwrap().rates.is_some());
        // Pid 10 is now another program: no rate against the old one's counters.
        let again = info(10, "api");
        m.update(
            t0 + Duration::from_secs(2),
            vec![snap(&again, counters(5, 1, 1))],
            0,
        );
        assert_eq!(m.get(10).unwrap().rates, None);
        assert_eq!(m.get(10).unwrap().heap.len(), 1);
    }

    #[test]
    fn goroutine_trend_against_a_few_intervals_ago() {
        let t0 = Instant::now();
        let a = info(10, "api");
        let mut m = Model::default();
        let mut feed = |i: u64, g: u64| {
            m.update(
                t0 + Duration::from_secs(i),
                vec![snap(&a, counters(i, 1, g))],
                0,
            );
            m.get(10).unwrap().trend()
        };
        assert_eq!(feed(0, 10), None);
        assert_eq!(feed(1, 12), Some(Trend::Up));
        // A dip within the span does not hide the growth since its start.
        for (i, g) in [(2, 11), (3, 13), (4, 14), (5, 15)] {
            assert_eq!(feed(i, g), Some(Trend::Up));
        }
        // Six reads later at the same count: flat; then below: down.
        for i in 6..12 {
            feed(i, 15);
        }
        assert_eq!(feed(12, 15), Some(Trend::Flat));
        assert_eq!(feed(13, 3), Some(Trend::Down));
    }

    #[test]
    fn sorting_by_columns_and_reverse() {
        let t0 = Instant::now();
        let (a, b, c) = (info(30, "api"), info(10, "batch"), info(20, "cron"));
        let mut m = Model::default();
        m.update(
            t0,
            vec![
                snap(&a, counters(0, 300, 1)),
                snap(&b, counters(0, 100, 3)),
                snap(&c, counters(0, 200, 2)),
            ],
            0,
        );
        m.update(
            t0 + Duration::from_secs(1),
            vec![
                snap(&a, counters(50, 300, 1)),
                snap(&b, counters(500, 100, 3)),
                denied(&c),
            ],
            0,
        );
        // Default: allocations per second, biggest first; no figure last.
        assert_eq!((m.sort, m.descending), (Column::Allocs, true));
        assert_eq!(pids(&m), [10, 30, 20]);
        m.on_key(Key::Char('r'));
        assert_eq!(pids(&m), [30, 10, 20], "reversed, unreadable still last");
        m.on_key(Key::Char('1'));
        assert_eq!((m.sort, m.descending), (Column::Pid, false));
        assert_eq!(pids(&m), [10, 20, 30]);
        m.on_key(Key::Char('1'));
        assert_eq!(pids(&m), [30, 20, 10], "the same key again reverses");
        m.on_key(Key::Char('2'));
        assert_eq!(pids(&m), [30, 10, 20], "comm a-z");
        m.on_key(Key::Char('7'));
        assert_eq!(m.sort, Column::Heap);
        assert_eq!(pids(&m), [30, 10, 20]);
        m.on_key(Key::Char('0'));
        assert_eq!(m.sort, Column::Goroutines);
        assert_eq!(pids(&m), [10, 30, 20]);
        for (i, col) in Column::ALL.into_iter().enumerate() {
            assert_eq!(Column::from_key(col.key()), Some(col));
            assert_eq!(col.index(), i);
        }
    }

    #[test]
    fn go_versions_sort_by_release() {
        let t0 = Instant::now();
        let mk = |pid, v: &str| {
            Arc::new(ProcessInfo {
                go_version: v.into(),
                ..(*info(pid, "x")).clone()
            })
        };
        let (a, b) = (mk(1, "go1.9.7"), mk(2, "go1.21.13"));
        let mut m = Model::default();
        m.update(
            t0,
            vec![snap(&a, zero_runtime()), snap(&b, zero_runtime())],
            0,
        );
        m.on_key(Key::Char('4'));
        assert_eq!(pids(&m), [1, 2]);
    }

    #[test]
    fn filter_by_name_and_keys_while_typing() {
        let t0 = Instant::now();
        let (a, b) = (info(10, "api"), info(11, "worker"));
        let mut m = Model::default();
        m.update(
            t0,
            vec![snap(&a, zero_runtime()), snap(&b, zero_runtime())],
            0,
        );
        m.on_key(Key::Char('/'));
        assert!(m.editing_filter);
        // `q` and digits are text while typing, not commands.
        for c in "WORK".chars() {
            assert_eq!(m.on_key(Key::Char(c)), Flow::Continue);
        }
        assert_eq!(pids(&m), [11]);
        assert_eq!(m.selected, Some(11));
        m.on_key(Key::Enter);
        assert!(!m.editing_filter);
        assert_eq!(m.filter, "WORK");
        // Matches the executable path too.
        m.on_key(Key::Char('/'));
        for _ in 0..4 {
            m.on_key(Key::Backspace);
        }
        for c in "srv/api".chars() {
            m.on_key(Key::Char(c));
        }
        assert_eq!(pids(&m), [10]);
        m.on_key(Key::Esc);
        assert_eq!((m.filter.as_str(), m.editing_filter), ("", false));
        assert_eq!(pids(&m).len(), 2);
        m.on_key(Key::Char('/'));
        assert_eq!(m.on_key(Key::Char('q')), Flow::Continue);
        assert_eq!(m.on_key(Key::Interrupt), Flow::Quit);
    }

    #[test]
    fn selection_detail_pane_and_quit() {
        let t0 = Instant::now();
        let (a, b, c) = (info(1, "a"), info(2, "b"), info(3, "c"));
        let mut m = Model::default();
        m.on_key(Key::Char('1'));
        m.update(
            t0,
            vec![
                snap(&a, zero_runtime()),
                snap(&b, zero_runtime()),
                snap(&c, zero_runtime()),
            ],
            0,
        );
        assert_eq!(m.selected, Some(1), "the first row is selected");
        m.on_key(Key::Down);
        m.on_key(Key::Char('j'));
        assert_eq!(m.selected, Some(3));
        m.on_key(Key::Down);
        assert_eq!(m.selected, Some(3), "clamped at the last row");
        m.on_key(Key::Home);
        assert_eq!(m.selected, Some(1));
        m.on_key(Key::Down);
        m.on_key(Key::Enter);
        assert!(m.detail);
        assert_eq!(m.selected_proc().unwrap().info.pid, 2);
        // The selected process exits: the selection stays on its row.
        m.update(
            t0,
            vec![snap(&a, zero_runtime()), snap(&c, zero_runtime())],
            0,
        );
        assert_eq!(m.selected, Some(3));
        m.on_key(Key::Esc);
        assert!(!m.detail);
        assert_eq!(m.on_key(Key::Char('q')), Flow::Quit);
    }

    #[test]
    fn selection_follows_the_top_row_until_a_row_is_chosen() {
        let t0 = Instant::now();
        let (a, b) = (info(1, "quiet"), info(2, "busy"));
        let mut m = Model::default();
        // No rates yet: ties, in pid order.
        m.update(
            t0,
            vec![snap(&a, counters(0, 1, 1)), snap(&b, counters(0, 1, 1))],
            0,
        );
        assert_eq!(m.selected, Some(1));
        let t1 = t0 + Duration::from_secs(1);
        m.update(
            t1,
            vec![snap(&a, counters(1, 1, 1)), snap(&b, counters(900, 1, 1))],
            0,
        );
        assert_eq!(m.selected, Some(2), "the busiest process, now on top");
        m.on_key(Key::Down);
        m.on_key(Key::Up);
        let t2 = t1 + Duration::from_secs(1);
        m.update(
            t2,
            vec![
                snap(&a, counters(9000, 1, 1)),
                snap(&b, counters(901, 1, 1)),
            ],
            0,
        );
        assert_eq!(m.selected, Some(2), "a chosen row stays chosen");
    }

    #[test]
    fn unavailable_counters_show_their_reason() {
        let t0 = Instant::now();
        let a = info(10, "api");
        let mut m = Model::default();
        m.update(t0, vec![snap(&a, counters(10, 4096, 3))], 0);
        m.update(t0 + Duration::from_secs(1), vec![denied(&a)], 7);
        let p = m.get(10).unwrap();
        assert_eq!(p.note(), "no counters: access_denied");
        assert_eq!(p.cells()[6], "-");
        assert_eq!(p.cells()[9], "-");
        assert_eq!(p.heap.len(), 1, "history kept");
        assert_eq!(m.inaccessible, 7);
    }

    #[test]
    fn size_distribution_over_a_window() {
        let t0 = Instant::now();
        let a = info(10, "api");
        let mut m = Model::default();
        for i in 0..(SIZE_WINDOW as u64 + 5) {
            let mut c = counters(0, 1, 1);
            c.alloc_sizes[4] = 100 * i;
            c.alloc_sizes[10] = i;
            m.update(t0 + Duration::from_secs(i), vec![snap(&a, c)], 0);
        }
        let p = m.get(10).unwrap();
        let d = p.size_distribution();
        assert_eq!(p.size_window(), SIZE_WINDOW);
        assert_eq!(d[4], 100 * SIZE_WINDOW as u64);
        assert_eq!(d[10], SIZE_WINDOW as u64);
        assert_eq!(d.iter().sum::<u64>(), 101 * SIZE_WINDOW as u64);
    }

    #[test]
    fn container_column() {
        let mut p = Proc::new(info(1, "a"), PodNames::default());
        assert_eq!(p.container(), "-");
        let mut with_id = (*p.info).clone();
        with_id.cgroup.container_id = Some("0123456789abcdef".repeat(4));
        with_id.cgroup.runtime = Some(crate::identity::cgroup::Runtime::Containerd);
        p.info = Arc::new(with_id);
        assert_eq!(p.container(), "containerd:0123456789ab");
        assert!(p.matches("89ABCDEF"));
        p.pod = PodNames {
            namespace: "shop".into(),
            pod: "cart-7d9".into(),
            container: "app".into(),
        };
        assert_eq!(p.container(), "shop/cart-7d9");
        assert!(p.matches("cart") && p.matches("app") && !p.matches("nope"));
    }

    fn report(pid: u32) -> ProfileReport {
        ProfileReport {
            pid,
            sampled_for: PROFILE_DURATION,
            rate: PROFILE_RATE,
            exited: false,
            notes: vec![],
            tables: TopTables {
                sites: vec![],
                types: vec![],
                total_bytes: 0,
                total_objects: 0,
                samples: 0,
            },
        }
    }

    /// Two processes, the second selected.
    fn two() -> Model {
        let mut m = Model::default();
        m.update(
            Instant::now(),
            vec![
                snap(&info(1, "api"), zero_runtime()),
                snap(&info(2, "worker"), zero_runtime()),
            ],
            0,
        );
        m.on_key(Key::Down);
        m
    }

    #[test]
    fn p_profiles_the_selection_and_its_pane_closes() {
        let mut m = two();
        assert_eq!(m.on_key(Key::Char('p')), Flow::Profile { id: 1, pid: 2 });
        assert_eq!(m.profile_running(), Some((1, 2)));
        let line = m.status_note().unwrap();
        assert!(
            line.starts_with("profiling pid 2 (worker)… 5s left"),
            "{line}"
        );
        m.profile_progress(1, Duration::from_millis(2500), 120);
        let line = m.status_note().unwrap();
        assert!(line.contains("3s left · 120 samples"), "{line}");
        // Keys for the table still work meanwhile; the selection stays.
        m.on_key(Key::Char('1'));
        assert_eq!(m.selected, Some(2));
        m.profile_done(1, report(2));
        assert_eq!(m.profile_report().map(|r| r.pid), Some(2));
        assert_eq!(m.status_note(), None);
        // Enter closes the pane rather than opening the detail pane.
        m.on_key(Key::Enter);
        assert!(m.profiling.is_none() && !m.detail);
        for close in [Key::Esc, Key::Char('p')] {
            let Flow::Profile { id, .. } = m.on_key(Key::Char('p')) else {
                panic!("no profile started");
            };
            m.profile_done(id, report(2));
            assert_eq!(m.on_key(close), Flow::Continue);
            assert!(m.profiling.is_none(), "{close:?} closes the pane");
        }
        // Esc with the pane closed does what it did before: the filter.
        m.filter = "w".into();
        m.on_key(Key::Esc);
        assert_eq!(m.filter, "");
    }

    #[test]
    fn a_second_p_or_esc_cancels_and_late_news_is_dropped() {
        let mut m = two();
        let Flow::Profile { id, .. } = m.on_key(Key::Char('p')) else {
            panic!("no profile started");
        };
        assert_eq!(m.on_key(Key::Char('p')), Flow::CancelProfile { id });
        assert!(m.profiling.is_none());
        assert_eq!(m.status_note().unwrap(), "profile of pid 2 cancelled");
        // The cancelled profile's result, already on its way, is dropped.
        m.profile_done(id, report(2));
        m.profile_failed(id, "late");
        assert!(m.profiling.is_none());
        // The next key clears the notice; a new profile has a new id.
        let Flow::Profile { id: next, .. } = m.on_key(Key::Char('p')) else {
            panic!("no profile started");
        };
        assert_ne!(next, id);
        m.profile_progress(id, Duration::ZERO, 99);
        assert!(m.status_note().unwrap().contains("5s left · 0 samples"));
        assert_eq!(m.on_key(Key::Esc), Flow::CancelProfile { id: next });
        // While typing a filter, `p` is text.
        m.on_key(Key::Char('/'));
        assert_eq!(m.on_key(Key::Char('p')), Flow::Continue);
        assert_eq!(m.filter, "p");
        assert!(m.profiling.is_none());
    }

    #[test]
    fn a_profile_that_cannot_start_says_why() {
        let mut m = two();
        let Flow::Profile { id, .. } = m.on_key(Key::Char('p')) else {
            panic!("no profile started");
        };
        m.profile_failed(id, "attach: uprobe: Operation not permitted");
        assert!(m.profiling.is_none());
        assert_eq!(
            m.status_note().unwrap(),
            "pid 2 cannot be profiled: attach: uprobe: Operation not permitted"
        );
        let Flow::Profile { id, .. } = m.on_key(Key::Char('p')) else {
            panic!("no profile started");
        };
        m.profile_failed(id, "pid 2 has exited or changed its executable");
        assert_eq!(
            m.status_note().unwrap(),
            "pid 2 has exited or changed its executable"
        );
        // Nothing selected: nothing to profile.
        let mut empty = Model::default();
        assert_eq!(empty.on_key(Key::Char('p')), Flow::Continue);
        assert!(empty.status_note().unwrap().contains("no process selected"));
    }

    #[test]
    fn counts() {
        assert_eq!(human_count(12.4), "12");
        assert_eq!(human_count(203_400.0), "203.4k");
        assert_eq!(human_count(1_250_000.0), "1.2M");
    }
}
