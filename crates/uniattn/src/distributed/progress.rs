//! Telling a rank that hangs alive from one that is slow: every rank reports where it is in
//! training ([`Progress`]: the step and its phase) to rank 0 over the rendezvous' links, and
//! rank 0 ([`Ranks::hung`]) names the ranks that hold the others up once they have been
//! silent too long. A rank stuck before its step's collectives (a deadlock, a stuck read)
//! leaves the others waiting inside NCCL, which never returns on its own; so does a GPU that
//! stops, which only shows as every rank waiting far longer than a step has ever taken.
use std::time::{Duration, Instant};

/// What a rank is doing in an optimizer step, in the order a step goes through them (rank 0
/// evaluates and saves after the others have moved on to the next step's work).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Queuing the step's forward and backward passes.
    Computing,
    /// Waiting for the step's GPU work and collectives.
    Waiting,
    /// Rank 0 alone: validation.
    Evaluating,
    /// Writing a checkpoint (every rank under ZeRO-1, rank 0 otherwise).
    Saving,
}

impl Phase {
    const ALL: [Phase; 4] = [Phase::Computing, Phase::Waiting, Phase::Evaluating, Phase::Saving];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Computing => "computing",
            Phase::Waiting => "waiting",
            Phase::Evaluating => "evaluating",
            Phase::Saving => "saving",
        }
    }

    /// How much longer than the timeout a rank may stay silent here: validation and
    /// checkpoints of a large model take minutes by right.
    fn allowance(self) -> u32 {
        match self {
            Phase::Computing | Phase::Waiting => 1,
            Phase::Evaluating | Phase::Saving => 10,
        }
    }
}

/// Where a rank is: ordered, so that the rank furthest behind is the smallest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Progress {
    pub step: usize,
    pub phase: Phase,
}

impl Progress {
    /// The line a rank sends rank 0: `at <step> <phase>`.
    pub fn line(self) -> String {
        format!("at {} {}\n", self.step, self.phase.name())
    }

    /// The progress a line of [`Progress::line`] carries.
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.trim().strip_prefix("at ")?.split(' ');
        let step = words.next()?.parse().ok()?;
        let phase = words.next().and_then(|w| Phase::ALL.into_iter().find(|p| p.name() == w))?;
        Some(Progress { step, phase })
    }

    fn describe(self) -> String {
        format!("step {}, {}", self.step, self.phase.name())
    }
}

/// Before its first report a rank may be loading the model, and its first step compiles
/// kernels and captures graphs: this many timeouts.
const FIRST_STEP_ALLOWANCE: u32 = 10;
/// Every rank waiting: a hang once they have waited this many times the longest step so far.
const LONGEST_STEP_ALLOWANCE: u32 = 5;

/// Rank 0's view of every rank's last report.
pub struct Ranks {
    started: Instant,
    last: Vec<Option<(Progress, Instant)>>,
    /// The step of each rank's first report (its first step: the run's, or a resumed one's).
    first_step: Vec<Option<usize>>,
    done: Vec<bool>,
    /// When rank 0 started its current step, and the longest of its steps so far.
    step_started: Option<Instant>,
    longest_step: Duration,
}

impl Ranks {
    pub fn new(size: usize, now: Instant) -> Self {
        Ranks {
            started: now,
            last: vec![None; size],
            first_step: vec![None; size],
            done: vec![false; size],
            step_started: None,
            longest_step: Duration::ZERO,
        }
    }

    pub fn report(&mut self, rank: usize, p: Progress, now: Instant) {
        let Some(slot) = self.last.get_mut(rank) else { return };
        if rank == 0 && p.phase == Phase::Computing && slot.is_none_or(|(q, _)| p.step > q.step) {
            if let Some(t) = self.step_started.replace(now) {
                self.longest_step = self.longest_step.max(now - t);
            }
        }
        self.first_step[rank].get_or_insert(p.step);
        // Only moves forward: a late line never makes a rank look further behind.
        if slot.is_none_or(|(q, _)| p > q) {
            *slot = Some((p, now));
        }
    }

    /// Rank `rank` ended normally (or stopped, which the links report on their own).
    pub fn finish(&mut self, rank: usize) {
        if let Some(d) = self.done.get_mut(rank) {
            *d = true;
        }
    }

    /// A message naming what holds the job up, once it has for `timeout`: ranks behind the
    /// others and silent for that long, or every rank waiting for far longer than a step takes.
    pub fn hung(&self, now: Instant, timeout: Duration) -> Option<String> {
        let active: Vec<usize> = (0..self.last.len()).filter(|&r| !self.done[r]).collect();
        let progress = |r: usize| self.last[r].map(|(p, _)| p);
        let silent_for = |r: usize| now - self.last[r].map_or(self.started, |(_, t)| t);
        let too_long = |r: usize| match progress(r) {
            Some(p) if Some(p.step) != self.first_step[r] => timeout * p.phase.allowance(),
            _ => timeout * FIRST_STEP_ALLOWANCE,
        };
        let ahead = active.iter().map(|&r| progress(r)).max()?;
        let behind: Vec<usize> =
            active.iter().copied().filter(|&r| progress(r) < ahead && silent_for(r) > too_long(r)).collect();
        let secs = timeout.as_secs();
        let at =
            |r: usize| progress(r).map_or("before its first step".into(), |p| format!("at {}", p.describe()));
        if !behind.is_empty() {
            let waiting: Vec<usize> = active.iter().copied().filter(|&r| progress(r) == ahead).collect();
            let stuck: Vec<String> = behind.iter().map(|&r| format!("rank {r} {}", at(r))).collect();
            return Some(format!(
                "{} made no progress for over {secs} s while rank(s) {waiting:?} wait for it at {}",
                stuck.join(", "),
                ahead.map_or("the start".into(), |p| p.describe())
            ));
        }
        let limit = timeout.max(self.longest_step * LONGEST_STEP_ALLOWANCE);
        let all_waiting = active.iter().all(|&r| progress(r) == ahead && silent_for(r) > limit);
        (all_waiting && ahead.is_some_and(|p| p.phase == Phase::Waiting)).then(|| {
            format!(
                "every rank has waited {} s at {} (the longest step took {:.1} s): a GPU, NCCL or the network \
                 between the machines is stuck",
                limit.as_secs(),
                ahead.map_or(String::new(), |p| p.describe()),
                self.longest_step.as_secs_f64()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(step: usize, phase: Phase) -> Progress {
        Progress { step, phase }
    }

    /// The instant `secs` seconds after a fixed start.
    fn clock() -> impl Fn(u64) -> Instant {
        let t0 = Instant::now();
        move |secs| t0 + Duration::from_secs(secs)
    }

    #[test]
    fn progress_lines_round_trip_and_order_a_step() {
        for p in [at(0, Phase::Computing), at(17, Phase::Waiting), at(3, Phase::Saving)] {
            assert_eq!(Progress::parse(&p.line()), Some(p));
        }
        assert_eq!(Progress::parse("at x waiting"), None);
        assert_eq!(Progress::parse("at 3 dancing"), None);
        assert!(
            at(4, Phase::Saving) < at(5, Phase::Computing) && at(5, Phase::Computing) < at(5, Phase::Waiting)
        );
    }

    /// The rank that stopped short of its step's collectives is named, once it has been silent
    /// for the timeout, not before; slow but moving ranks are not.
    #[test]
    fn a_silent_rank_behind_the_others_is_named() {
        let s = clock();
        let timeout = Duration::from_secs(60);
        let mut ranks = Ranks::new(3, s(0));
        for step in 1..=4 {
            for r in 0..3 {
                ranks.report(r, at(step, Phase::Computing), s(step as u64 * 10));
                ranks.report(r, at(step, Phase::Waiting), s(step as u64 * 10 + 1));
            }
        }
        // Rank 2 stops while computing step 5; ranks 0 and 1 wait in step 5's collectives.
        ranks.report(2, at(5, Phase::Computing), s(50));
        for r in 0..2 {
            ranks.report(r, at(5, Phase::Computing), s(50));
            ranks.report(r, at(5, Phase::Waiting), s(51));
        }
        assert_eq!(ranks.hung(s(100), timeout), None, "silent for 50 s only");
        let m = ranks.hung(s(111), timeout).expect("a hang");
        assert!(
            m.contains("rank 2 at step 5, computing made no progress") && m.contains("[0, 1] wait"),
            "{m}"
        );
        // A rank that finished is not waited for.
        ranks.finish(2);
        assert_eq!(ranks.hung(s(111), timeout), None);
    }

    /// Rank 0 evaluating or saving may take ten timeouts; a rank never heard from, or in its
    /// first step, may too.
    #[test]
    fn evaluating_saving_and_loading_get_longer() {
        let s = clock();
        let timeout = Duration::from_secs(10);
        let mut ranks = Ranks::new(2, s(0));
        // A first step (kernels compiled, graphs captured) may take ten timeouts too.
        ranks.report(0, at(7, Phase::Computing), s(0));
        ranks.report(1, at(7, Phase::Waiting), s(1));
        assert_eq!(ranks.hung(s(90), timeout), None);
        assert!(ranks.hung(s(101), timeout).unwrap().contains("rank 0 at step 7, computing"));
        let mut ranks = Ranks::new(2, s(0));
        ranks.report(1, at(1, Phase::Waiting), s(1));
        assert_eq!(ranks.hung(s(90), timeout), None, "rank 0 may still be loading");
        assert!(ranks.hung(s(101), timeout).unwrap().contains("rank 0 before its first step"));
        ranks.report(0, at(1, Phase::Evaluating), s(101));
        ranks.report(1, at(2, Phase::Waiting), s(102));
        assert_eq!(ranks.hung(s(190), timeout), None);
        assert!(ranks.hung(s(202), timeout).unwrap().contains("rank 0 at step 1, evaluating"));
    }

    /// Every rank waiting: a hang only after five times the longest step (or the timeout).
    #[test]
    fn every_rank_waiting_is_a_hang_only_far_past_the_longest_step() {
        let s = clock();
        let timeout = Duration::from_secs(60);
        let mut ranks = Ranks::new(2, s(0));
        for (step, start) in [(1, 0), (2, 30), (3, 130)] {
            for r in 0..2 {
                ranks.report(r, at(step, Phase::Computing), s(start));
                ranks.report(r, at(step, Phase::Waiting), s(start + 1));
            }
        }
        // The longest step took 100 s: 500 s of waiting before it counts.
        assert_eq!(ranks.hung(s(600), timeout), None);
        let m = ranks.hung(s(700), timeout).expect("a hang");
        assert!(m.contains("every rank has waited 500 s at step 3, waiting"), "{m}");
        // Every rank computing (queuing work on the host) for long is slow, not stuck.
        let mut ranks = Ranks::new(2, s(0));
        ranks.report(0, at(1, Phase::Computing), s(0));
        ranks.report(1, at(1, Phase::Computing), s(0));
        assert_eq!(ranks.hung(s(1000), timeout), None);
    }
}
