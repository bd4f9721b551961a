//! `sensor-agent top`: a live terminal view of a running agent, drawn with `ratatui`.
//!
//! It polls the agent's `/status.json` ([`crate::metrics::status`], served beside `/metrics`
//! on the loopback metrics address) once per interval and draws the interfaces, packets per
//! second, flows, watched flows, alarms by rule, the longest and the quietest conversations,
//! the latest alarms and the sinks' health. `q` (or Esc, or Ctrl-C) quits.
//!
//! Why a client of the endpoint rather than a mode of `run`: it needs no privilege, attaches
//! nothing and so can detach nothing; it can watch an agent that runs as a service, and
//! closing it leaves the agent as it was.
//!
//! What it must never do: block on a slow agent (each request has a deadline and a body cap),
//! leave the terminal in raw mode (ratatui restores it on exit and on panic), or trust the
//! document's strings as terminal control (ratatui draws text cell by cell; control
//! characters are replaced before drawing).

use std::{
    io::Read,
    time::{Duration, Instant},
};

use ratatui::{
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Paragraph, Row, Table},
    DefaultTerminal, Frame,
};

use crate::metrics::status::{ConvSummary, Status};

/// Largest `/status.json` body read (the document is bounded; this bounds a wrong server).
const MAX_BODY: u64 = 4 << 20;

/// Why `top` stopped.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error(
        "{0} is not an http:// URL of the agent's metrics endpoint (e.g. http://127.0.0.1:9464)"
    )]
    Url(String),
    #[error("the terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// What `top` shows and how often.
#[derive(Clone, Debug)]
pub struct Options {
    /// Base URL of the metrics endpoint, e.g. `http://127.0.0.1:9464`.
    pub endpoint: String,
    pub interval: Duration,
}

/// The view's state between polls.
#[derive(Default)]
struct State {
    status: Option<Status>,
    /// Packets per second between the last two polls.
    rate: Option<f64>,
    last: Option<(Instant, u64)>,
    error: Option<String>,
    polled_at: Option<String>,
}

fn fetch(agent: &ureq::Agent, url: &str) -> Result<Status, String> {
    let mut resp = agent
        .get(url)
        .call()
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let mut buf = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(MAX_BODY + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{url}: {e}"))?;
    if buf.len() as u64 > MAX_BODY {
        return Err(format!("{url}: answer larger than {MAX_BODY} bytes"));
    }
    serde_json::from_slice(&buf).map_err(|e| format!("{url}: not a status document ({e})"))
}

impl State {
    fn update(&mut self, got: Result<Status, String>) {
        match got {
            Ok(s) => {
                let packets = s.engine.as_ref().map_or(0, |e| e.packets);
                let now = Instant::now();
                if let Some((t, p)) = self.last {
                    let dt = now.duration_since(t).as_secs_f64();
                    if dt > 0.0 {
                        self.rate = Some(packets.saturating_sub(p) as f64 / dt);
                    }
                }
                self.last = Some((now, packets));
                self.status = Some(s);
                self.error = None;
                self.polled_at = Some(crate::clock::rfc3339_seconds(crate::clock::wall_ns()));
            }
            Err(e) => self.error = Some(e),
        }
    }
}

/// Text from the agent with control characters replaced (a terminal must not obey them).
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(120)
        .collect()
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

fn conv_rows(list: &[ConvSummary]) -> Vec<Row<'static>> {
    list.iter()
        .map(|c| {
            Row::new(vec![
                clean(&format!(
                    "{} -> {}:{}/{}",
                    c.client, c.server, c.port, c.transport
                )),
                crate::report::words::duration(c.duration_s),
                crate::report::words::bytes(c.bytes as f64),
                format!("{:.1}", c.bytes_per_sec),
                format!("{}/{}", c.open_flows, c.flows),
            ])
        })
        .collect()
}

fn conv_table<'a>(title: &'a str, list: &[ConvSummary]) -> Table<'a> {
    Table::new(
        conv_rows(list),
        [
            Constraint::Min(36),
            Constraint::Length(16),
            Constraint::Length(11),
            Constraint::Length(10),
            Constraint::Length(7),
        ],
    )
    .header(Row::new(["conversation", "duration", "bytes", "B/s", "open"]).style(bold()))
    .block(Block::bordered().title(title))
}

fn draw(f: &mut Frame, st: &State, endpoint: &str) {
    let area = f.area();
    let [head, numbers, middle, longest, quietest, alarms, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(3),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Min(5),
        Constraint::Length(1),
    ])
    .areas(area);
    let s = st.status.clone().unwrap_or_default();
    let e = s.engine.clone().unwrap_or_default();
    let ready = if s.ready {
        Span::styled("ready", Style::default().fg(Color::Green))
    } else {
        Span::styled(clean(&s.readiness), Style::default().fg(Color::Yellow))
    };
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("sensor-agent top ", bold()),
            Span::raw(format!("{} | ", clean(endpoint))),
            ready,
            Span::raw(format!(
                " | interfaces: {} | q quits",
                clean(&s.interfaces.join(", "))
            )),
        ])),
        head,
    );
    let rate = st.rate.map_or("-".to_string(), |r| format!("{r:.0}"));
    let line = format!(
        "packets/s {rate} | packets {} | flows {} (kernel {} of {}) | conversations {} | watched flows {} | open alarms {} | unattributed {}",
        e.packets,
        e.flows,
        s.kernel_flows,
        s.kernel_flow_map_capacity,
        e.conversations,
        e.watched,
        e.open_alarms,
        s.unattributed
    );
    f.render_widget(
        Paragraph::new(line).block(Block::bordered().title("Traffic")),
        numbers,
    );
    let [rules, sinks] =
        Layout::horizontal([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(middle);
    let rule_rows: Vec<Row> = e
        .alarms_by_rule
        .iter()
        .map(|(r, n)| Row::new(vec![clean(r), n.to_string()]))
        .collect();
    f.render_widget(
        Table::new(rule_rows, [Constraint::Min(20), Constraint::Length(8)])
            .header(Row::new(["rule", "opened"]).style(bold()))
            .block(Block::bordered().title("Alarms by rule")),
        rules,
    );
    let sink_rows: Vec<Row> = s
        .sinks
        .iter()
        .map(|k| {
            let health = match (&k.last_error, k.pending) {
                (Some(err), p) if p > 0 => clean(err),
                _ if k.pending > 0 => {
                    format!("oldest {:.0}s", k.oldest_undelivered_s.unwrap_or_default())
                }
                _ => "ok".to_string(),
            };
            Row::new(vec![
                clean(&k.name),
                k.sent.to_string(),
                k.errors.to_string(),
                k.pending.to_string(),
                health,
            ])
        })
        .collect();
    let sink_title = if s.sinks.is_empty() {
        "Sinks (none configured: alarms go to the output file)"
    } else {
        "Sinks"
    };
    f.render_widget(
        Table::new(
            sink_rows,
            [
                Constraint::Min(14),
                Constraint::Length(8),
                Constraint::Length(7),
                Constraint::Length(8),
                Constraint::Min(10),
            ],
        )
        .header(Row::new(["sink", "sent", "errors", "pending", "health"]).style(bold()))
        .block(Block::bordered().title(sink_title)),
        sinks,
    );
    f.render_widget(conv_table("Longest conversations", &e.longest), longest);
    f.render_widget(
        conv_table("Quietest conversations (open)", &e.quietest),
        quietest,
    );
    let alarm_rows: Vec<Row> = s
        .recent_alarms
        .iter()
        .rev()
        .map(|a| {
            Row::new(vec![
                clean(&a.at),
                clean(&a.rule),
                clean(&a.action),
                a.severity.to_string(),
                clean(&format!("{} -> {}:{}", a.client, a.server, a.port)),
            ])
        })
        .collect();
    f.render_widget(
        Table::new(
            alarm_rows,
            [
                // RFC 3339 with microseconds, as alarms carry it.
                Constraint::Length(27),
                Constraint::Length(18),
                Constraint::Length(8),
                Constraint::Length(3),
                Constraint::Min(30),
            ],
        )
        .header(Row::new(["time", "rule", "action", "sev", "endpoints"]).style(bold()))
        .block(Block::bordered().title("Latest alarms")),
        alarms,
    );
    let foot_line = match (&st.error, &st.polled_at) {
        (Some(err), _) => Line::styled(clean(err), Style::default().fg(Color::Red)),
        (None, Some(t)) => Line::raw(format!("updated {t}")),
        (None, None) => Line::raw("waiting for the first answer"),
    };
    f.render_widget(Paragraph::new(foot_line), foot);
}

fn quit(ev: &Event) -> bool {
    match ev {
        Event::Key(k) if k.kind != KeyEventKind::Release => {
            matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL))
        }
        _ => false,
    }
}

fn run_loop(terminal: &mut DefaultTerminal, opts: &Options, url: &str) -> std::io::Result<()> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(
            opts.interval
                .clamp(Duration::from_millis(500), Duration::from_secs(5)),
        ))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut st = State::default();
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            st.update(fetch(&agent, url));
            next = Instant::now() + opts.interval;
        }
        terminal.draw(|f| draw(f, &st, &opts.endpoint))?;
        // Keys are read until the next poll is due.
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait)? && quit(&event::read()?) {
            return Ok(());
        }
    }
}

/// Runs the view until the user quits.
pub fn run(opts: &Options) -> Result<(), TopError> {
    let base = opts.endpoint.trim_end_matches('/');
    if !base.starts_with("http://") || base.len() <= "http://".len() {
        return Err(TopError::Url(opts.endpoint.clone()));
    }
    let url = format!("{base}/status.json");
    let mut terminal = ratatui::try_init()?;
    let result = run_loop(&mut terminal, opts, &url);
    ratatui::try_restore()?;
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::{backend::TestBackend, Terminal};

    #[test]
    fn the_view_shows_what_the_document_holds_and_no_control_characters() {
        let mut st = State::default();
        let doc = serde_json::json!({
            "version": "0", "ready": true, "readiness": "ready", "interfaces": ["veth0"],
            "poll_interval_s": 1.0, "kernel_flows": 3, "kernel_flow_map_capacity": 1024,
            "unattributed": 0,
            "engine": {"packets": 10, "flows": 2, "conversations": 2, "watched": 1,
                "open_alarms": 1, "alarms_by_rule": {"long_flow": 1},
                "longest": [{"client": "10.0.0.1", "server": "10.0.0.2", "port": 3333,
                    "transport": "tcp", "duration_s": 20.0, "bytes": 900, "bytes_per_sec": 45.0,
                    "flows": 1, "open_flows": 1}],
                "quietest": [], "at": "x"},
            "recent_alarms": [{"at": "t", "id": "i", "rule": "long_flow\u{1b}[2J",
                "action": "opened", "severity": 3, "client": "10.0.0.1",
                "server": "10.0.0.2", "port": 3333}],
            "sinks": []
        });
        st.update(Ok(serde_json::from_value(doc).unwrap()));
        let mut term = Terminal::new(TestBackend::new(160, 48)).unwrap();
        term.draw(|f| draw(f, &st, "http://127.0.0.1:9464"))
            .unwrap();
        let screen: String = term
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        assert!(screen.contains("10.0.0.1 -> 10.0.0.2:3333/tcp"), "{screen}");
        assert!(screen.contains("long_flow"), "{screen}");
        assert!(screen.contains("veth0"), "{screen}");
        assert!(!screen.contains('\u{1b}'), "{screen}");
    }

    #[test]
    fn only_http_endpoints_are_accepted() {
        let opts = Options {
            endpoint: "127.0.0.1:9464".into(),
            interval: Duration::from_secs(1),
        };
        assert!(matches!(run(&opts), Err(TopError::Url(_))));
    }
}
