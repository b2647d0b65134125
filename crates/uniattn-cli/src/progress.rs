//! Progress bars that still report when stderr is a log file rather than a terminal.
//!
//! indicatif hides its bars when stderr is not a terminal, so a training run started with
//! `nohup` or from a script would say nothing for an hour. There the bar's text is written as
//! a plain line instead, at most every [`LOG_EVERY`].

use indicatif::{HumanDuration, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle, TermLike};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const LOG_EVERY: Duration = Duration::from_secs(30);

/// `what [bar] pos/len rate ETA`, rate and ETA averaged over the whole run: indicatif's own
/// estimate decays between updates, so steps of a minute each read "0.0001/s ETA 13h".
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(&format!(
        "{what} {{bar:30}} {{pos}}/{{len}} {{avg_rate}} ETA {{avg_eta}}"
    ))
    .expect("valid template")
    .with_key("avg_rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = w.write_str(&rate_text(s.pos(), s.elapsed()));
    })
    .with_key("avg_eta", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = w.write_str(&eta_text(s.pos(), s.len().unwrap_or(0), s.elapsed()));
    });
    with_style(len, style)
}

/// [`bar`] on rank 0 of a data-parallel job, hidden on the others: one bar a job.
pub fn leader_bar(leader: bool, what: &str) -> ProgressBar {
    if leader {
        bar(0, what)
    } else {
        ProgressBar::hidden()
    }
}

/// A `(done, total)` callback that moves `pb`.
pub fn counter(pb: &ProgressBar) -> impl Fn(usize, usize) + '_ {
    move |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    }
}

/// Items per second, or seconds per item when items are slow.
fn rate_text(pos: u64, elapsed: Duration) -> String {
    if pos == 0 {
        return "0/s".into();
    }
    let r = pos as f64 / elapsed.as_secs_f64();
    if r >= 1.0 {
        format!("{r:.1}/s")
    } else {
        format!("{:.1} s each", 1.0 / r)
    }
}

/// Time left at the average rate so far; `?` before the first item.
fn eta_text(pos: u64, len: u64, elapsed: Duration) -> String {
    if pos == 0 {
        return "?".into();
    }
    let left = elapsed.as_secs_f64() * len.saturating_sub(pos) as f64 / pos as f64;
    HumanDuration(Duration::from_secs_f64(left)).to_string()
}

/// A bar with an indicatif template, drawn on the terminal or logged as lines.
pub fn with_template(len: u64, template: &str) -> ProgressBar {
    with_style(len, ProgressStyle::with_template(template).expect("valid template"))
}

fn with_style(len: u64, style: ProgressStyle) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::term_like(Box::new(LogLines::default()))
    };
    let pb = ProgressBar::with_draw_target(Some(len), target);
    pb.set_style(style);
    pb
}

/// Collects what indicatif draws and writes it as one stderr line when a line is due.
#[derive(Debug, Default)]
struct LogLines {
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    text: String,
    last: Option<Instant>,
}

impl LogLines {
    /// The line to write now, if one is due: the first draw, then one per `LOG_EVERY`.
    fn take_due(&self, now: Instant) -> Option<String> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let text = std::mem::take(&mut st.text);
        let text = text.trim();
        let due = st.last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY);
        if text.is_empty() || !due {
            return None;
        }
        st.last = Some(now);
        Some(text.to_string())
    }
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        120
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)?;
        self.write_str(" ")
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).text.push_str(s);
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        match self.take_due(Instant::now()) {
            Some(line) => writeln!(std::io::stderr(), "{line}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_are_run_averages() {
        let s = Duration::from_secs;
        assert_eq!(rate_text(0, s(5)), "0/s");
        assert_eq!(rate_text(30, s(10)), "3.0/s");
        assert_eq!(rate_text(2, s(90)), "45.0 s each");
        assert_eq!(eta_text(0, 10, s(5)), "?");
        assert_eq!(eta_text(2, 10, s(90)), "6 minutes");
        assert_eq!(eta_text(10, 10, s(90)), "0 seconds");
    }

    #[test]
    fn writes_the_first_draw_then_one_line_per_interval() {
        let log = LogLines::default();
        let t0 = Instant::now();
        log.write_str("\rtrain 0/10   ").unwrap();
        assert_eq!(log.take_due(t0).as_deref(), Some("train 0/10"));
        log.write_str("train 1/10").unwrap();
        assert_eq!(log.take_due(t0 + Duration::from_secs(5)), None);
        log.write_str("train 2/10").unwrap();
        assert_eq!(log.take_due(t0 + LOG_EVERY).as_deref(), Some("train 2/10"), "older text is dropped");
        assert_eq!(log.take_due(t0 + 3 * LOG_EVERY), None, "nothing drawn, nothing written");
    }
}
