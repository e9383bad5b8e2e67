//! `goalloc top`: every Go process on the host, live, full screen; from the
//! always-on source (the runtime's own counters read from memory), so it
//! puts no probe on anything unless asked: `p` takes a 5 s allocation
//! profile of the selected process ([`profiling`]), its probes on that
//! process alone and off again at the end.
//!
//! Two threads. The collector owns the [`Registry`]: it follows exec/exit
//! events, sweeps /proc and reads every process's counters once per
//! interval, and sends each snapshot over a channel; it also runs the
//! profile the view asks for and sends its progress and result. Reads take
//! milliseconds per process; on their own thread they never delay a key.
//! The main thread owns the terminal: it folds snapshots into the
//! [`model::Model`], hands keys to it and redraws ([`ui`]).
//!
//! When stdout is not a terminal, `top` prints one table from two reads an
//! interval apart (the rates need two) and exits.
//!
//! The terminal is put back (raw mode off, main screen, cursor shown) on
//! every way out: `q`, Ctrl-C (a key in raw mode), SIGINT/SIGTERM/SIGHUP
//! (caught by the collector), an error, and a panic on either thread (a
//! panic hook).

pub mod model;
mod profiling;
pub mod ui;

use std::{
    io::{IsTerminal, Write},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use gobinary::plan::PlanOptions;
use ratatui::{
    Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor,
        event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
        execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
    widgets::TableState,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel},
};

use crate::{
    ebpf::Engine,
    events::ProcessEvents,
    registry::{ProcessSnapshot, Registry, Scope},
    select::ExactSelection,
};
use model::{Flow, Key, Model, ProfileReport};
use profiling::Session;

#[derive(Debug, Clone)]
pub struct TopOptions {
    /// Time between reads (and sweeps).
    pub interval: Duration,
}

/// What the collector tells the view.
enum Msg {
    /// Every tracked process, read at `at`.
    Update {
        at: Instant,
        snapshots: Vec<ProcessSnapshot>,
        inaccessible: usize,
    },
    /// How profile `id` goes.
    ProfileProgress {
        id: u64,
        left: Duration,
        samples: u64,
    },
    /// Profile `id` is done.
    ProfileDone { id: u64, report: Box<ProfileReport> },
    /// Profile `id` could not start, or failed.
    ProfileFailed { id: u64, why: String },
    /// A signal asked goalloc to stop.
    Quit,
    /// The collector stopped on an error.
    Failed(anyhow::Error),
}

/// What the view asks of the collector.
enum Cmd {
    Profile {
        id: u64,
        pid: u32,
    },
    CancelProfile {
        id: u64,
    },
    /// The view is done.
    Stop,
}

/// How long the event loop waits for a key before looking for snapshots:
/// short enough that a new snapshot shows without a key press.
const POLL: Duration = Duration::from_millis(50);

pub fn run(opts: TopOptions) -> Result<()> {
    let (tx, rx) = mpsc::channel();
    let (cmd_tx, cmd_rx) = unbounded_channel();
    let interval = opts.interval;
    let collector = std::thread::Builder::new()
        .name("top-collector".into())
        .spawn(move || collect(interval, tx, cmd_rx))
        .context("starting the collector thread")?;

    // The first snapshot (or why there is none) before touching the
    // terminal: a setup error is one line on a normal screen.
    let result = match next(&rx)? {
        None => Ok(()),
        Some((at, snapshots, inaccessible)) => {
            let mut model = Model::default();
            model.update(at, snapshots, inaccessible);
            if std::io::stdout().is_terminal() {
                interactive(model, &rx, &cmd_tx, opts.interval)
            } else {
                snapshot(model, &rx)
            }
        }
    };
    // Dropping the sender would do too; the send says it is on purpose.
    // The collector ends a running profile before it returns, and the
    // join below waits for that: no probe outlives the view.
    let _ = cmd_tx.send(Cmd::Stop);
    drop(rx);
    if collector.join().is_err() {
        // Its panic message is already on stderr (the hook ran).
        return Err(anyhow!("the collector thread panicked"));
    }
    result
}

/// The next snapshot; `None` when a signal asked to stop.
fn next(rx: &mpsc::Receiver<Msg>) -> Result<Option<(Instant, Vec<ProcessSnapshot>, usize)>> {
    loop {
        match rx.recv() {
            Ok(Msg::Update {
                at,
                snapshots,
                inaccessible,
            }) => return Ok(Some((at, snapshots, inaccessible))),
            // Only the full-screen view asks for profiles: none come here.
            Ok(
                Msg::ProfileProgress { .. } | Msg::ProfileDone { .. } | Msg::ProfileFailed { .. },
            ) => {}
            Ok(Msg::Quit) => return Ok(None),
            Ok(Msg::Failed(e)) => return Err(e),
            Err(_) => return Err(anyhow!("the collector stopped")),
        }
    }
}

/// Not a terminal: one table, with rates from the next read.
fn snapshot(mut model: Model, rx: &mpsc::Receiver<Msg>) -> Result<()> {
    let Some((at, snapshots, inaccessible)) = next(rx)? else {
        return Ok(());
    };
    model.update(at, snapshots, inaccessible);
    let mut out = std::io::stdout().lock();
    // Processes that could not be inspected were logged by the registry.
    out.write_all(ui::plain_table(&model).as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The full-screen view, until `q`, Ctrl-C or a signal.
fn interactive(
    mut model: Model,
    rx: &mpsc::Receiver<Msg>,
    commands: &UnboundedSender<Cmd>,
    interval: Duration,
) -> Result<()> {
    let interval = humantime::format_duration(interval).to_string();
    // Log lines would land in the middle of the screen; what matters of
    // them (processes that cannot be inspected) is in the status line.
    let log_level = log::max_level();
    log::set_max_level(log::LevelFilter::Off);
    let result = (|| {
        let mut term = Screen::enter()?;
        let mut table = TableState::default();
        let mut dirty = true;
        loop {
            if dirty {
                term.0
                    .draw(|f| ui::draw(f, &model, &mut table, &interval))?;
                dirty = false;
            }
            // A hung-up terminal (window closed, tmux killed) reads as an
            // endless EOF, on which crossterm's poll spins: leave first.
            // (Hung up in the middle of a poll: see the collector's SIGHUP.)
            if terminal_hung_up() {
                return Ok(());
            }
            if event::poll(POLL)? {
                match event::read()? {
                    Event::Key(k) if k.kind != KeyEventKind::Release => {
                        if let Some(key) = key_of(k) {
                            let cmd = match model.on_key(key) {
                                Flow::Quit => return Ok(()),
                                Flow::Continue => None,
                                Flow::Profile { id, pid } => Some(Cmd::Profile { id, pid }),
                                Flow::CancelProfile { id } => Some(Cmd::CancelProfile { id }),
                            };
                            // A closed channel: the collector is gone, and
                            // says why on `rx`.
                            if let Some(cmd) = cmd {
                                let _ = commands.send(cmd);
                            }
                            dirty = true;
                        }
                    }
                    // The next draw takes the new size.
                    Event::Resize(..) => dirty = true,
                    _ => {}
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(Msg::Update {
                        at,
                        snapshots,
                        inaccessible,
                    }) => {
                        model.update(at, snapshots, inaccessible);
                        dirty = true;
                    }
                    Ok(Msg::ProfileProgress { id, left, samples }) => {
                        model.profile_progress(id, left, samples);
                        dirty = true;
                    }
                    Ok(Msg::ProfileDone { id, report }) => {
                        model.profile_done(id, *report);
                        dirty = true;
                    }
                    Ok(Msg::ProfileFailed { id, why }) => {
                        model.profile_failed(id, &why);
                        dirty = true;
                    }
                    Ok(Msg::Quit) => return Ok(()),
                    Ok(Msg::Failed(e)) => return Err(e),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        return Err(anyhow!("the collector stopped"));
                    }
                }
            }
        }
    })();
    log::set_max_level(log_level);
    result
}

/// Whether the terminal on stdin has hung up.
fn terminal_hung_up() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout: only asks for its state.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready > 0 && fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

fn key_of(k: KeyEvent) -> Option<Key> {
    Some(match k.code {
        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::Interrupt,
        KeyCode::Char(c) if !k.modifiers.contains(KeyModifiers::CONTROL) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        _ => return None,
    })
}

/// Whether the terminal is in the view's mode, so that the guard's drop and
/// the panic hook put it back once between them.
static ENTERED: AtomicBool = AtomicBool::new(false);

/// The terminal in raw mode on the alternate screen; put back when dropped.
struct Screen(Terminal<CrosstermBackend<std::io::Stdout>>);

impl Screen {
    fn enter() -> Result<Screen> {
        install_panic_hook();
        terminal::enable_raw_mode().context("putting the terminal in raw mode")?;
        ENTERED.store(true, Ordering::SeqCst);
        // From here on, an error return drops the guard, which restores.
        let mut stdout = std::io::stdout();
        execute!(stdout, EnterAlternateScreen, cursor::Hide)?;
        let mut term = Terminal::new(CrosstermBackend::new(stdout))?;
        term.clear()?;
        Ok(Screen(term))
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves raw mode and the alternate screen, shows the cursor. Idempotent.
fn restore() {
    if ENTERED.swap(false, Ordering::SeqCst) {
        let _ = terminal::disable_raw_mode();
        let _ = execute!(std::io::stdout(), LeaveAlternateScreen, cursor::Show);
    }
}

/// Restores the terminal before the panic message is printed, so it is
/// readable and the shell is usable; installed once.
fn install_panic_hook() {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
}

/// The collector thread: a registry of every Go process, read each interval.
fn collect(interval: Duration, tx: mpsc::Sender<Msg>, commands: UnboundedReceiver<Cmd>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(Msg::Failed(e.into()));
            return;
        }
    };
    if let Err(e) = rt.block_on(collect_async(interval, &tx, commands)) {
        let _ = tx.send(Msg::Failed(e));
    }
}

async fn collect_async(
    interval: Duration,
    tx: &mpsc::Sender<Msg>,
    mut commands: UnboundedReceiver<Cmd>,
) -> Result<()> {
    let mut engine = Engine::load()?;
    let mut events = ProcessEvents::start(&mut engine)?;
    // Counters from memory only: top puts no probe on anything but the
    // process `p` profiles, for the profile's time.
    let mut registry = Registry::new(
        engine,
        PlanOptions::default(),
        Scope::AllGo,
        ExactSelection::none(),
        Duration::ZERO,
    );
    let mut session = None;
    let result = follow(
        interval,
        tx,
        &mut commands,
        &mut registry,
        &mut events,
        &mut session,
    )
    .await;
    // However the loop ended (the view quit, a signal, an error), a running
    // profile ends here: its probes and sampler come off.
    if let Some(s) = session.take() {
        s.cancel(&mut registry);
    }
    result
}

/// What the collector does until the view stops it, a signal or an error.
async fn follow(
    interval: Duration,
    tx: &mpsc::Sender<Msg>,
    commands: &mut UnboundedReceiver<Cmd>,
    registry: &mut Registry,
    events: &mut ProcessEvents,
    session: &mut Option<Session>,
) -> Result<()> {
    // Raw mode turns Ctrl-C into a key, but `kill` and a closed terminal
    // still signal: stop cleanly rather than die with the terminal raw.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;

    registry.sweep()?;
    let update = |registry: &mut Registry| -> Result<Msg> {
        let snapshots = registry.snapshot()?;
        // Exited processes simply leave the view; their final figures
        // would only pile up in the registry.
        registry.take_exited();
        Ok(Msg::Update {
            at: Instant::now(),
            snapshots,
            inaccessible: registry.inaccessible(),
        })
    };
    if tx.send(update(registry)?).is_err() {
        return Ok(());
    }
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    // After a slow sweep, the next read is an interval later, not at once.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let drain_at = session.as_ref().map(Session::next_drain);
        let mut read = false;
        tokio::select! {
            batch = events.next_batch() => {
                // A new process is tracked at once; it shows at the next
                // tick, within an interval of its exec.
                for ev in batch.context("reading process events")? {
                    registry.on_event(&ev)?;
                }
            }
            _ = ticker.tick() => {
                registry.sweep()?;
                read = true;
            }
            cmd = commands.recv() => match cmd {
                Some(Cmd::Profile { id, pid }) => {
                    // One at a time (the view asks for no more).
                    if let Some(s) = session.take() {
                        s.cancel(registry);
                    }
                    match Session::begin(registry, id, pid) {
                        Ok(s) => *session = Some(s),
                        Err(why) => {
                            let _ = tx.send(Msg::ProfileFailed { id, why });
                        }
                    }
                }
                Some(Cmd::CancelProfile { id }) => {
                    if let Some(s) = session.take_if(|s| s.id == id) {
                        s.cancel(registry);
                    }
                }
                Some(Cmd::Stop) | None => return Ok(()),
            },
            _ = sleep_until(drain_at) => {
                if let Some(s) = session.as_mut() {
                    match s.drain(registry) {
                        Ok(()) => {
                            let _ = tx.send(Msg::ProfileProgress {
                                id: s.id,
                                left: s.left(),
                                samples: s.sampled(),
                            });
                        }
                        Err(e) => {
                            let (id, pid) = (s.id, s.pid);
                            if let Some(s) = session.take() {
                                s.cancel(registry);
                            }
                            // Top goes on: only this profile is lost.
                            let why = format!("pid {pid} could not be profiled to the end: {e}");
                            let _ = tx.send(Msg::ProfileFailed { id, why });
                        }
                    }
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                // The terminal is gone: the view may be stuck in
                // crossterm's poll, which spins on a closed terminal's EOF.
                // Nothing can be drawn or restored any more; make sure the
                // process ends.
                let _ = tx.send(Msg::Quit);
                std::thread::spawn(|| {
                    std::thread::sleep(Duration::from_secs(1));
                    std::process::exit(0);
                });
                break;
            }
        }
        // Time up, or the process exited (an event, or the sweep found it
        // gone): the pane shows what was sampled.
        if let Some(s) = session.take_if(|s| s.is_over(registry)) {
            let (id, pid) = (s.id, s.pid);
            let msg = match s.finish(registry) {
                Ok(report) => Msg::ProfileDone {
                    id,
                    report: Box::new(report),
                },
                Err(e) => Msg::ProfileFailed {
                    id,
                    why: format!("pid {pid} could not be profiled to the end: {e}"),
                },
            };
            let _ = tx.send(msg);
        }
        if read && tx.send(update(registry)?).is_err() {
            return Ok(()); // the view is gone
        }
    }
    let _ = tx.send(Msg::Quit);
    Ok(())
}

/// Sleeps until `at`; forever without it.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
