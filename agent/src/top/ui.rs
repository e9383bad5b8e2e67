//! Drawing `goalloc top`: the status line, the process table (the sorted
//! column marked in its header), the detail pane of the selected process and
//! the key footer; and the plain table printed when stdout is not a
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

use super::model::{Column, Model, Proc};
use crate::report::human_bytes;

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
    let detail = model.detail && model.selected_proc().is_some();
    let detail_height = if detail {
        // Leave the table at least a header and a few rows.
        DETAIL_HEIGHT.min(area.height.saturating_sub(6))
    } else {
        0
    };
    let [status, body, pane, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(2),
        Constraint::Length(detail_height),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_status(frame, status, model, interval);
    draw_table(frame, body, model, table);
    if detail && let Some(p) = model.selected_proc() {
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
        registry::{PodNames, ProcessInfo, ProcessSnapshot},
        top::model::Key,
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
