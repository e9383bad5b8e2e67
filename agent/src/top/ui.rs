//! Drawing `goalloc top`: the status line, the process table (the sorted
//! column marked in its header), the line of a running profile (or of a
//! notice), the profile pane or the detail pane of the selected process,
//! and the key footer; and the plain table printed when stdout is not a
//! terminal. Reads the [`Model`], changes nothing but the table's scroll
//! offset.

use agent_common::{HIST_BUCKETS, bucket_upper_bound};
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table, TableState, Wrap},
};

use super::model::{Column, Model, Proc, ProfileReport, human_count};
use crate::{profile::Ranked, report::human_bytes};

/// Widths of the columns in [`Column::ALL`] order; the note after them
/// takes what is left.
const WIDTHS: [u16; 10] = [7, 16, 24, 9, 10, 10, 10, 10, 6, 11];

/// Narrowest the name columns get before columns are dropped.
const MIN_COMM: u16 = 10;
const MIN_CONTAINER: u16 = 8;

/// Columns dropped, in this order, while the table is wider than the
/// terminal: the figures people sort by stay longest.
const DROP_ORDER: [Column; 6] = [
    Column::Container,
    Column::Go,
    Column::Goal,
    Column::Gc,
    Column::Bytes,
    Column::Comm,
];

/// The columns shown in `width` cells, and their widths: all of them when
/// they fit; else the name columns narrowed, then the least telling
/// columns dropped (cutting every column a little would cut every header).
pub fn fit_columns(width: u16) -> Vec<(Column, u16)> {
    let mut cols: Vec<(Column, u16)> = Column::ALL
        .iter()
        .map(|c| (*c, WIDTHS[c.index()]))
        .collect();
    let needed = |cols: &[(Column, u16)]| -> u16 {
        cols.iter().map(|(_, w)| *w).sum::<u16>() + cols.len().saturating_sub(1) as u16
    };
    for (col, min) in [(Column::Container, MIN_CONTAINER), (Column::Comm, MIN_COMM)] {
        let over = needed(&cols).saturating_sub(width);
        if let Some((_, w)) = cols.iter_mut().find(|(c, _)| *c == col) {
            *w -= over.min(w.saturating_sub(min));
        }
    }
    for drop in DROP_ORDER {
        if needed(&cols) <= width {
            break;
        }
        cols.retain(|(c, _)| *c != drop);
    }
    cols
}

/// Height of the detail pane, borders included.
const DETAIL_HEIGHT: u16 = 18;

/// Width of the bars of the size distribution.
const BAR_WIDTH: usize = 30;

/// From this width (inside the borders) the profile pane puts its two
/// rankings side by side; below, one above the other.
const SIDE_BY_SIDE: u16 = 140;

fn header_title(model: &Model, col: Column) -> String {
    if col == model.sort {
        format!(
            "{}{}",
            col.title(),
            if model.descending { '▼' } else { '▲' }
        )
    } else {
        col.title().to_string()
    }
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, model: &Model, table: &mut TableState, interval: &str) {
    let area = frame.area();
    let report = model.profile_report();
    // The profile pane, asked for last, covers the detail pane.
    let detail = report.is_none() && model.detail && model.selected_proc().is_some();
    let pane_height = match report {
        Some(r) => profile_height(r, area.width),
        None if detail => DETAIL_HEIGHT,
        None => 0,
    }
    // Leave the table at least a header and a few rows.
    .min(area.height.saturating_sub(6));
    let note = model.status_note();
    let [status, body, note_area, pane, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(2),
        Constraint::Length(u16::from(note.is_some())),
        Constraint::Length(pane_height),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_status(frame, status, model, interval);
    draw_table(frame, body, model, table);
    if let Some(note) = note {
        let color = if model.profile_running().is_some() {
            Color::Yellow
        } else {
            Color::Magenta
        };
        let style = Style::default().fg(color).add_modifier(Modifier::BOLD);
        frame.render_widget(Paragraph::new(format!(" {note}")).style(style), note_area);
    }
    if let Some(r) = report {
        draw_profile(frame, pane, r);
    } else if detail && let Some(p) = model.selected_proc() {
        draw_detail(frame, pane, p);
    }
    draw_footer(frame, footer, model);
}

fn draw_status(frame: &mut Frame, area: Rect, model: &Model, interval: &str) {
    let shown = model.rows().len();
    let mut text = format!(" goalloc top · {} Go processes", model.total());
    if !model.filter.is_empty() {
        text.push_str(&format!(" ({shown} match /{})", model.filter));
    }
    text.push_str(&format!(
        " · every {interval} · sorted by {}{}",
        model.sort.title(),
        if model.descending { '▼' } else { '▲' }
    ));
    if model.inaccessible > 0 {
        text.push_str(&format!(
            " · {} {} not inspectable",
            model.inaccessible,
            if model.inaccessible == 1 {
                "process"
            } else {
                "processes"
            }
        ));
    }
    let style = Style::default().add_modifier(Modifier::BOLD);
    frame.render_widget(Paragraph::new(text).style(style), area);
}

fn draw_table(frame: &mut Frame, area: Rect, model: &Model, state: &mut TableState) {
    let rows = model.rows();
    let columns = fit_columns(area.width);
    let header = Row::new(columns.iter().map(|&(col, width)| {
        let mut text = header_title(model, col);
        if text.chars().count() > usize::from(width) {
            // A narrowed column keeps a whole word rather than a cut one.
            text = text.replacen(col.title(), &col.short().to_uppercase(), 1);
        }
        let title = Line::from(text);
        let cell = Cell::from(if col.is_numeric() {
            title.right_aligned()
        } else {
            title
        });
        if col == model.sort {
            cell.style(Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED))
        } else {
            cell
        }
    }))
    .style(Style::default().fg(Color::Black).bg(Color::Cyan))
    .height(1);
    let body = rows.iter().map(|p| {
        let cells = p.cells();
        let mut row: Vec<Cell> = columns
            .iter()
            .map(|&(col, _)| {
                let text = cells[col.index()].clone();
                if col.is_numeric() {
                    Cell::from(Line::from(text).right_aligned())
                } else {
                    Cell::from(text)
                }
            })
            .collect();
        let note = p.note();
        let style = if p.unavailable.is_some() {
            Style::default().fg(Color::Red)
        } else {
            Style::default().fg(Color::DarkGray)
        };
        row.push(Cell::from(note).style(style));
        Row::new(row)
    });
    let widths = columns
        .iter()
        .map(|(_, w)| Constraint::Length(*w))
        .chain([Constraint::Fill(1)]);
    let table = Table::new(body, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    state.select(model.selected_index(&rows));
    frame.render_stateful_widget(table, area, state);
    if rows.is_empty() {
        let text = if model.filter.is_empty() {
            "  no Go process running (yet)"
        } else {
            "  no process matches the filter"
        };
        let below_header = Rect {
            y: area.y + 1,
            height: 1,
            ..area
        };
        frame.render_widget(Paragraph::new(text), below_header);
    }
}

fn draw_detail(frame: &mut Frame, area: Rect, p: &Proc) {
    let title = format!(
        " pid {} · {} · {} ",
        p.info.pid, p.info.comm, p.info.go_version
    );
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(inner);
    frame.render_widget(
        Paragraph::new(detail_lines(p)).wrap(Wrap { trim: false }),
        left,
    );

    let [heap_label, heap, gor_label, gor] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
        Constraint::Fill(1),
    ])
    .areas(right);
    let range = |v: &std::collections::VecDeque<u64>, fmt: &dyn Fn(u64) -> String| match (
        v.iter().min(),
        v.iter().max(),
    ) {
        (Some(lo), Some(hi)) => format!("{}..{}", fmt(*lo), fmt(*hi)),
        _ => "-".into(),
    };
    let bytes = |v: u64| human_bytes(v as f64);
    let plain = |v: u64| v.to_string();
    // The newest samples that fit, right-aligned with the present.
    let tail = |v: &std::collections::VecDeque<u64>, width: u16| -> Vec<u64> {
        v.iter()
            .skip(v.len().saturating_sub(width as usize))
            .copied()
            .collect()
    };
    let label = Style::default().add_modifier(Modifier::BOLD);
    frame.render_widget(
        Paragraph::new(format!(
            "live heap, last {} reads ({})",
            p.heap.len(),
            range(&p.heap, &bytes)
        ))
        .style(label),
        heap_label,
    );
    frame.render_widget(
        Sparkline::default()
            .data(tail(&p.heap, heap.width))
            .style(Style::default().fg(Color::Green)),
        heap,
    );
    frame.render_widget(
        Paragraph::new(format!(
            "goroutines, last {} reads ({})",
            p.goroutines.len(),
            range(&p.goroutines, &plain)
        ))
        .style(label),
        gor_label,
    );
    frame.render_widget(
        Sparkline::default()
            .data(tail(&p.goroutines, gor.width))
            .style(Style::default().fg(Color::Yellow)),
        gor,
    );
}

/// The left half of the detail pane: who the process is, its heap now,
/// and where its allocations fall by size.
fn detail_lines(p: &Proc) -> Vec<Line<'static>> {
    let key = |k: &str| Span::styled(format!("{k:<12}"), Style::default().fg(Color::Cyan));
    let mut lines = vec![Line::from(vec![
        key("executable"),
        Span::raw(p.info.exe.clone()),
    ])];
    let cgroup = &p.info.cgroup;
    let container = match (&cgroup.container_id, cgroup.runtime) {
        (Some(id), Some(rt)) => format!("{rt} {id}"),
        (Some(id), None) => id.clone(),
        (None, _) => "none (host process)".into(),
    };
    lines.push(Line::from(vec![key("container"), Span::raw(container)]));
    if !p.pod.pod.is_empty() {
        let mut pod = format!("{}/{}", p.pod.namespace, p.pod.pod);
        if !p.pod.container.is_empty() {
            pod.push_str(&format!(" (container {})", p.pod.container));
        }
        lines.push(Line::from(vec![key("pod"), Span::raw(pod)]));
    }
    if let Some(u) = &p.unavailable {
        lines.push(Line::from(vec![
            key("counters"),
            Span::styled(
                format!("unavailable ({}): {}", u.reason, u.detail),
                Style::default().fg(Color::Red),
            ),
        ]));
        return lines;
    }
    if let (Some(live), Some(goal)) = (p.live_heap(), p.heap_goal()) {
        let share = if goal > 0 {
            format!(" ({:.0}% of the goal)", live as f64 * 100.0 / goal as f64)
        } else {
            String::new()
        };
        lines.push(Line::from(vec![
            key("heap"),
            Span::raw(format!(
                "{} live{share}, goal {}, {} objects, {} GC cycles so far",
                human_bytes(live as f64),
                human_bytes(goal as f64),
                p.heap_objects().unwrap_or_default(),
                p.gc_cycles().unwrap_or_default(),
            )),
        ]));
    }
    lines.push(Line::from(""));
    let sizes = p.size_distribution();
    let total: u64 = sizes.iter().sum();
    lines.push(Line::from(Span::styled(
        format!(
            "allocation sizes, last {} intervals ({} objects)",
            p.size_window(),
            total
        ),
        Style::default().add_modifier(Modifier::BOLD),
    )));
    if total == 0 {
        lines.push(Line::from("  no allocations yet"));
    }
    for (i, n) in sizes.iter().enumerate().filter(|(_, n)| **n > 0) {
        let share = *n as f64 / total as f64;
        let bar = "█".repeat(((share * BAR_WIDTH as f64).round() as usize).max(1));
        lines.push(Line::from(vec![
            Span::raw(format!("  {:>12} ", size_label(i))),
            Span::styled(
                format!("{bar:<BAR_WIDTH$}"),
                Style::default().fg(Color::Blue),
            ),
            Span::raw(format!(" {:>5.1}%", share * 100.0)),
        ]));
    }
    lines
}

/// The label of a size bucket. The runtime puts every large allocation
/// (above 32 KiB) in the last bucket.
fn size_label(bucket: usize) -> String {
    if bucket == HIST_BUCKETS - 1 {
        "large".into()
    } else {
        format!("≤ {}", human_bytes(bucket_upper_bound(bucket) as f64))
    }
}

/// `5 s`, `2.3 s`.
fn seconds(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if d.subsec_millis() == 0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

/// A sampling rate: `64 KiB`, `1 MiB`, `1000 bytes`.
fn rate(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// The profile pane's lines above the rankings: totals, then the
/// profile's notes.
fn profile_head(r: &ProfileReport) -> Vec<Line<'static>> {
    let t = &r.tables;
    let mut lines = vec![Line::from(Span::styled(
        format!(
            "sampled {} allocations; estimated {} in {} objects",
            t.samples,
            human_bytes(t.total_bytes as f64),
            human_count(t.total_objects as f64),
        ),
        Style::default().add_modifier(Modifier::BOLD),
    ))];
    for note in &r.notes {
        // The first note says what the process runs; the others are news.
        let style = if lines.len() == 1 {
            Style::default().fg(Color::DarkGray)
        } else {
            Style::default().fg(Color::Yellow)
        };
        lines.push(Line::from(Span::styled(note.clone(), style)));
    }
    lines
}

/// Height of the profile pane, borders included, at `width` columns.
fn profile_height(r: &ProfileReport, width: u16) -> u16 {
    // A header and at least one row (or the "nothing" line) each.
    let ranking = |rows: &[Ranked]| 1 + rows.len().max(1);
    let tables = if width.saturating_sub(2) >= SIDE_BY_SIDE {
        ranking(&r.tables.sites).max(ranking(&r.tables.types))
    } else {
        ranking(&r.tables.sites) + 1 + ranking(&r.tables.types)
    };
    let lines = 2 + profile_head(r).len() + 1 + tables;
    u16::try_from(lines).unwrap_or(u16::MAX)
}

fn draw_profile(frame: &mut Frame, area: Rect, r: &ProfileReport) {
    let title = format!(
        " allocation profile of pid {} over {}, 1 sample per {}{} ",
        r.pid,
        seconds(r.sampled_for),
        rate(r.rate),
        if r.exited { " (exited)" } else { "" },
    );
    let block = Block::default()
        .borders(Borders::ALL)
        .title(Span::styled(
            title,
            Style::default().add_modifier(Modifier::BOLD),
        ))
        .title_bottom(Line::from(" Esc/Enter/p close ").right_aligned());
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let head = profile_head(r);
    let [head_area, _, tables] = Layout::vertical([
        Constraint::Length(u16::try_from(head.len()).unwrap_or(u16::MAX)),
        Constraint::Length(1),
        Constraint::Fill(1),
    ])
    .areas(inner);
    frame.render_widget(Paragraph::new(head), head_area);
    let [sites, types] = if inner.width >= SIDE_BY_SIDE {
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)])
            .spacing(2)
            .areas(tables)
    } else {
        let rows = |n: usize| u16::try_from(1 + n.max(1)).unwrap_or(u16::MAX);
        let [sites, _, types] = Layout::vertical([
            Constraint::Length(rows(r.tables.sites.len())),
            Constraint::Length(1),
            Constraint::Fill(1),
        ])
        .areas(tables);
        [sites, types]
    };
    draw_ranking(frame, sites, &r.tables.sites, "CALL SITE");
    draw_ranking(frame, types, &r.tables.types, "TYPE");
}

/// One ranking of the profile pane: bytes, share, objects, name.
fn draw_ranking(frame: &mut Frame, area: Rect, rows: &[Ranked], what: &str) {
    let right = |s: String| Cell::from(Line::from(s).right_aligned());
    let header = Row::new([
        right("BYTES".into()),
        right("SHARE".into()),
        right("OBJECTS".into()),
        Cell::from(what.to_string()),
    ])
    .style(Style::default().fg(Color::Black).bg(Color::Cyan));
    let body = rows.iter().map(|r| {
        Row::new([
            right(human_bytes(r.bytes as f64)),
            right(format!("{:.1}%", r.share * 100.0)),
            right(human_count(r.objects as f64)),
            Cell::from(r.name.clone()),
        ])
    });
    let widths = [
        Constraint::Length(10),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Fill(1),
    ];
    frame.render_widget(
        Table::new(body, widths).header(header).column_spacing(1),
        area,
    );
    if rows.is_empty() {
        let below_header = Rect {
            y: area.y + 1,
            height: 1.min(area.height.saturating_sub(1)),
            ..area
        };
        frame.render_widget(Paragraph::new("  no allocation sampled"), below_header);
    }
}

fn draw_footer(frame: &mut Frame, area: Rect, model: &Model) {
    let key = |k: &str| {
        Span::styled(
            k.to_string(),
            Style::default().fg(Color::Black).bg(Color::Cyan),
        )
    };
    let line = if model.editing_filter {
        Line::from(vec![
            Span::raw(" filter: /"),
            Span::styled(
                model.filter.clone(),
                Style::default().add_modifier(Modifier::BOLD),
            ),
            Span::raw("█  "),
            key("Enter"),
            Span::raw(" keep  "),
            key("Esc"),
            Span::raw(" clear"),
        ])
    } else {
        let mut spans = vec![Span::raw(" sort:")];
        for col in Column::ALL {
            spans.push(Span::raw(" "));
            spans.push(key(&col.key().to_string()));
            spans.push(Span::raw(format!(" {}", col.short())));
        }
        let mut rest = Vec::new();
        for (k, what) in [
            ("r", "reverse"),
            ("/", "filter"),
            ("↑↓", "select"),
            ("Enter", "details"),
            ("p", "profile"),
            ("Esc", "close"),
            ("q", "quit"),
        ] {
            rest.push(Span::raw("  "));
            rest.push(key(k));
            rest.push(Span::raw(format!(" {what}")));
        }
        let full = Line::from(spans.iter().chain(&rest).cloned().collect::<Vec<_>>());
        if full.width() <= area.width as usize {
            full
        } else {
            // Narrow terminal: the sort keys as a range, so `q` stays in sight.
            let mut compact = vec![Span::raw(" "), key("1-0"), Span::raw(" sort by column")];
            compact.extend(rest);
            Line::from(compact)
        }
    };
    frame.render_widget(Paragraph::new(line), area);
}

/// The table as text, for stdout that is not a terminal: one header line,
/// one line per process in the model's order.
pub fn plain_table(model: &Model) -> String {
    let widths: Vec<usize> = WIDTHS.iter().map(|w| usize::from(*w)).collect();
    let cell = |col: Column, text: &str, width: usize| {
        if col.is_numeric() {
            format!("{text:>width$}")
        } else {
            // Left-aligned text is cut to its column so the next one lines up.
            let cut: String = text.chars().take(width).collect();
            format!("{cut:<width$}")
        }
    };
    let line = |texts: Vec<String>, note: String| {
        let mut parts: Vec<String> = Column::ALL
            .into_iter()
            .zip(texts.iter().zip(&widths))
            .map(|(col, (t, w))| cell(col, t, *w))
            .collect();
        parts.push(note);
        parts.join(" ").trim_end().to_string() + "\n"
    };
    let mut out = line(
        Column::ALL
            .into_iter()
            .map(|c| header_title(model, c))
            .collect(),
        String::new(),
    );
    for p in model.rows() {
        out.push_str(&line(p.cells().to_vec(), p.note()));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Arc,
        time::{Duration, Instant},
    };

    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::{
        exporter::fold::zero_runtime,
        profile::TopTables,
        registry::{PodNames, ProcessInfo, ProcessSnapshot},
        top::model::{Flow, Key, PROFILE_DURATION, PROFILE_RATE},
    };

    fn model() -> Model {
        let info = Arc::new(ProcessInfo {
            pid: 4242,
            comm: "demo".into(),
            exe: "/opt/demo/bin/demo".into(),
            go_version: "go1.27.3".into(),
            cgroup: Default::default(),
        });
        let snap = |allocs: u64, goroutines: u64| {
            let mut c = zero_runtime();
            c.mallocs = allocs;
            c.total_alloc = allocs * 32;
            c.alloc_sizes[5] = allocs;
            c.heap_alloc = 3 << 20;
            c.next_gc = 4 << 20;
            c.goroutines = goroutines;
            ProcessSnapshot {
                info: info.clone(),
                pod: PodNames::default(),
                runtime: Ok(c),
                probes: None,
                exited: false,
            }
        };
        let mut m = Model::default();
        let t0 = Instant::now();
        m.update(t0, vec![snap(0, 10)], 0);
        m.update(t0 + Duration::from_secs(1), vec![snap(200_000, 12)], 0);
        m
    }

    fn screen(m: &Model, w: u16, h: u16) -> String {
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        let mut state = TableState::default();
        term.draw(|f| draw(f, m, &mut state, "1s")).unwrap();
        let buf = term.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
                    + "\n"
            })
            .collect()
    }

    #[test]
    fn table_detail_and_footer() {
        let mut m = model();
        let s = screen(&m, 160, 30);
        assert!(s.contains("ALLOCS/s▼"), "{s}");
        assert!(
            s.contains("4242") && s.contains("200.0k") && s.contains("12 ↑"),
            "{s}"
        );
        assert!(s.contains("q quit"), "{s}");
        m.on_key(Key::Enter);
        let s = screen(&m, 160, 30);
        assert!(s.contains("pid 4242 · demo"), "{s}");
        assert!(
            s.contains("/opt/demo/bin/demo") && s.contains("≤ 32 B"),
            "{s}"
        );
        assert!(s.contains("100.0%") && s.contains("75% of the goal"), "{s}");
        // Tiny terminals are drawn, not refused.
        screen(&m, 20, 5);
        m.on_key(Key::Char('/'));
        m.on_key(Key::Char('x'));
        let s = screen(&m, 160, 30);
        assert!(
            s.contains("filter: /x") && s.contains("no process matches"),
            "{s}"
        );
    }

    fn ranked(name: &str, bytes: i64, objects: i64, share: f64) -> Ranked {
        Ranked {
            name: name.into(),
            bytes,
            objects,
            share,
        }
    }

    fn profiled(m: &mut Model) {
        let Flow::Profile { id, pid } = m.on_key(Key::Char('p')) else {
            panic!("no profile started");
        };
        m.profile_done(
            id,
            ProfileReport {
                pid,
                sampled_for: PROFILE_DURATION,
                rate: PROFILE_RATE,
                exited: false,
                notes: vec!["pid 4242 (demo): /opt/demo/bin/demo (go1.27.3)".into()],
                tables: TopTables {
                    sites: vec![
                        ranked("main.recordSite (main.go:66)", 20 << 20, 512, 0.4),
                        ranked("main.iterate (main.go:92)", 15 << 20, 327_000, 0.3),
                    ],
                    types: vec![ranked("main.record", 20 << 20, 512, 0.4)],
                    total_bytes: 50 << 20,
                    total_objects: 400_000,
                    samples: 812,
                },
            },
        );
    }

    #[test]
    fn profile_status_line_pane_and_footer() {
        let mut m = model();
        let s = screen(&m, 160, 40);
        assert!(s.contains("p profile"), "{s}");
        m.on_key(Key::Char('p'));
        let s = screen(&m, 160, 40);
        assert!(s.contains("profiling pid 4242 (demo)… 5s left"), "{s}");
        m.on_key(Key::Esc);
        let s = screen(&m, 160, 40);
        assert!(s.contains("profile of pid 4242 cancelled"), "{s}");
        // The profile pane covers the detail pane.
        m.on_key(Key::Enter);
        profiled(&mut m);
        for (w, h) in [(160, 40), (100, 40)] {
            let s = screen(&m, w, h);
            assert!(
                s.contains("allocation profile of pid 4242 over 5 s, 1 sample per 64 KiB"),
                "{s}"
            );
            assert!(s.contains("sampled 812 allocations"), "{s}");
            assert!(s.contains("/opt/demo/bin/demo (go1.27.3)"), "{s}");
            assert!(!s.contains("allocation sizes"), "{s}");
            let row = s
                .lines()
                .find(|l| l.contains("main.recordSite"))
                .unwrap_or_else(|| panic!("{s}"));
            assert!(row.contains("20.0 MiB") && row.contains("40.0%"), "{s}");
            assert!(s.contains("CALL SITE") && s.contains("TYPE"), "{s}");
            assert!(s.contains("Esc/Enter/p close"), "{s}");
        }
        // Wide: the rankings side by side, both tops on one line.
        let s = screen(&m, 160, 40);
        let tops = s.lines().find(|l| l.contains("main.recordSite")).unwrap();
        assert!(tops.contains("main.record "), "{s}");
        // Tiny terminals are drawn, not refused.
        screen(&m, 30, 8);
        m.on_key(Key::Esc);
        let s = screen(&m, 160, 40);
        assert!(
            !s.contains("allocation profile") && s.contains("allocation sizes"),
            "{s}"
        );
    }

    #[test]
    fn narrow_terminals_drop_columns_not_headers() {
        let all = fit_columns(200);
        assert_eq!(all.len(), 10);
        let at = |w: u16| {
            let cols = fit_columns(w);
            let used: u16 = cols.iter().map(|(_, w)| w).sum::<u16>() + cols.len() as u16 - 1;
            assert!(used <= w, "{w}: {cols:?}");
            cols.into_iter().map(|(c, _)| c).collect::<Vec<_>>()
        };
        // 100 columns: all, the names narrower.
        assert_eq!(at(100).len(), 10);
        assert!(!at(90).contains(&Column::Container));
        let narrow = at(60);
        for col in [
            Column::Pid,
            Column::Allocs,
            Column::Heap,
            Column::Goroutines,
        ] {
            assert!(narrow.contains(&col), "{narrow:?}");
        }
        let mut m = model();
        m.on_key(Key::Char('0'));
        let s = screen(&m, 100, 20);
        assert!(s.contains("GOROUTINES▼") && s.contains("q quit"), "{s}");
    }

    #[test]
    fn plain_table_lines_up() {
        let text = plain_table(&model());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("    PID COMM"), "{text}");
        assert!(lines[1].starts_with("   4242 demo"), "{text}");
        // In characters: the header's sort mark is one, of three bytes.
        let col = |l: &str, s: &str| l[..l.find(s).unwrap()].chars().count();
        assert_eq!(
            col(lines[0], "LIVE HEAP") + "LIVE HEAP".len(),
            col(lines[1], "3.0 MiB") + "3.0 MiB".len(),
            "{text}"
        );
    }
}
