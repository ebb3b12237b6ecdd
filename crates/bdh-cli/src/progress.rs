//! Progress of long work on standard error: a bar on a terminal, and a plain
//! line every few seconds where standard error is a file or a pipe; both with the
//! time left over the whole job, from the rate of this process's own work.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Time between two plain lines, unless `BDH_PROGRESS_SECONDS` says otherwise.
const LINE_EVERY: Duration = Duration::from_secs(3);

/// The variable that sets the seconds between two plain lines (0: a line at every
/// update), for logs that want more or fewer of them.
const LINE_EVERY_VAR: &str = "BDH_PROGRESS_SECONDS";

/// A long job of counted units.
pub struct Job {
    /// What is done, e.g. `inspect graph`.
    what: String,
    /// The bar, hidden when plain lines are written instead.
    bar: ProgressBar,
    /// The plain lines' clock, if they are written.
    lines: Option<Mutex<Lines>>,
    /// Time between two plain lines.
    every: Duration,
}

/// When the plain lines started and last went out.
struct Lines {
    start: Instant,
    last: Instant,
    /// Units that were done before this process worked on them (a resumed run).
    skipped: u64,
}

impl Job {
    /// `what`, of `total` units (0: told later by [`Job::update`]): a bar if standard
    /// error is a terminal, plain lines otherwise.
    pub fn new(what: &str, total: u64) -> Job {
        Job::shown(what, total, !std::io::stderr().is_terminal())
    }

    fn shown(what: &str, total: u64, lines: bool) -> Job {
        let bar = if lines { ProgressBar::hidden() } else { ProgressBar::new(total) };
        bar.set_length(total);
        bar.set_style(
            ProgressStyle::with_template("{prefix} {wide_bar} {pos}/{len} {msg} {elapsed}<{eta}")
                .expect("valid template"),
        );
        bar.set_prefix(what.to_string());
        let now = Instant::now();
        let lines = lines.then(|| Mutex::new(Lines { start: now, last: now, skipped: 0 }));
        let every =
            if lines.is_some() { line_every(std::env::var(LINE_EVERY_VAR).ok().as_deref()) } else { LINE_EVERY };
        Job { what: what.into(), bar, lines, every }
    }

    /// `done` of `total` units are done.
    pub fn update(&self, done: usize, total: usize) {
        self.bar.set_length(total as u64);
        self.set(done as u64);
    }

    /// `done` units are done.
    pub fn set(&self, done: u64) {
        self.bar.set_position(done);
        let Some(lines) = &self.lines else { return };
        let mut l = lines.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(l.last) < self.every {
            return;
        }
        l.last = now;
        let total = self.bar.length().unwrap_or(0);
        let elapsed = now.duration_since(l.start).as_secs_f64();
        let rate = done.saturating_sub(l.skipped) as f64 / elapsed.max(1e-9);
        let left = if rate > 0.0 {
            format!("about {} left", human(total.saturating_sub(done) as f64 / rate))
        } else {
            "time left not known yet".into()
        };
        let percent = 100.0 * done as f64 / total.max(1) as f64;
        let message = self.bar.message();
        let message = if message.is_empty() { String::new() } else { format!(" ({message})") };
        eprintln!("{}: {done}/{total} ({percent:.0}%){message}, {} elapsed, {left}", self.what, human(elapsed));
    }

    /// Moves the count on to `done` units without this process's work (a run done
    /// before, continued now): the time left counts only the units after them.
    pub fn skip_to(&self, done: u64) {
        let before = self.bar.position();
        if done <= before {
            return;
        }
        start_clock_at(&self.bar, done);
        if let Some(lines) = &self.lines {
            lines.lock().unwrap_or_else(|e| e.into_inner()).skipped += done - before;
        }
    }

    /// What is going on now, e.g. which run.
    pub fn set_message(&self, message: String) {
        self.bar.set_message(message);
    }

    /// A line printed above the bar, or to standard output when there is no bar.
    pub fn println(&self, line: String) {
        if self.lines.is_some() {
            println!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Puts `bar` at `done` units with its clock started now, so that its rate and
/// time left count only the units after `done`.
pub fn start_clock_at(bar: &ProgressBar, done: u64) {
    bar.set_position(done);
    // The estimate takes in the position only on a tick; then it forgets the time before.
    bar.tick();
    bar.reset_eta();
}

/// The time between two plain lines from `BDH_PROGRESS_SECONDS`'s value, if set:
/// a number of seconds from 0 to a day; anything else is said once and the
/// default kept.
fn line_every(value: Option<&str>) -> Duration {
    let Some(value) = value else { return LINE_EVERY };
    match value.trim().parse::<f64>() {
        Ok(s) if (0.0..=86_400.0).contains(&s) => Duration::from_secs_f64(s),
        _ => {
            eprintln!(
                "warning: {LINE_EVERY_VAR}={value:?} is not a number of seconds from 0 to 86400; \
                 a progress line every {} s",
                LINE_EVERY.as_secs()
            );
            LINE_EVERY
        }
    }
}

/// Seconds as `42 s`, `3 min 20 s` or `2 h 5 min`.
fn human(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run resumed at step 116 of 2500 after a slow start: one step more takes
    /// 50 ms, so the time left is about 2 minutes, not the second that counting
    /// the 116 earlier steps as this process's would give.
    #[test]
    fn the_time_left_counts_only_the_steps_after_a_resume() {
        let bar = ProgressBar::hidden();
        bar.set_length(2500);
        std::thread::sleep(Duration::from_millis(100));
        start_clock_at(&bar, 116);
        std::thread::sleep(Duration::from_millis(50));
        bar.set_position(117);
        bar.tick();
        let eta = bar.eta().as_secs_f64();
        assert!(eta > 30.0, "time left {eta} s");
    }

    #[test]
    fn plain_lines_rate_skips_what_was_done_before() {
        let job = Job::shown("x", 100, true);
        job.set(10);
        job.skip_to(40);
        job.skip_to(40);
        let l = job.lines.as_ref().unwrap().lock().unwrap();
        assert_eq!(l.skipped, 30);
    }

    #[test]
    fn the_seconds_between_lines_are_read_and_bounded() {
        assert_eq!(line_every(None), LINE_EVERY);
        assert_eq!(line_every(Some("0")), Duration::ZERO);
        assert_eq!(line_every(Some(" 0.5 ")), Duration::from_millis(500));
        for bad in ["", "-1", "NaN", "inf", "1e9", "three"] {
            assert_eq!(line_every(Some(bad)), LINE_EVERY, "{bad:?}");
        }
    }

    #[test]
    fn durations_read_plainly() {
        assert_eq!(human(42.2), "42 s");
        assert_eq!(human(200.0), "3 min 20 s");
        assert_eq!(human(7500.0), "2 h 5 min");
    }
}
