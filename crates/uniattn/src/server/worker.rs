//! The engine thread: owns the scheduler, takes jobs from the HTTP threads, runs one batched
//! step at a time and routes each event back to the connection that asked. New requests join
//! the running batch between steps; a client that hangs up is cancelled.
use crate::engine::{Event, Request, Scheduler};
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::Duration;

pub struct Job {
    pub request: Request,
    pub events: Sender<Event>,
}

/// What the HTTP side sends the engine thread.
pub enum Command {
    Run(Job),
    /// Finish what is queued and running, then return.
    Drain,
}

pub fn run(mut sched: Scheduler, commands: Receiver<Command>, metrics: &super::metrics::Metrics) {
    let mut routes: HashMap<u64, Sender<Event>> = HashMap::new();
    let mut draining = false;
    loop {
        metrics.beat();
        // Block only while idle; then take everything else that has arrived.
        let mut next = if sched.has_work() || draining {
            None
        } else {
            match commands.recv_timeout(Duration::from_millis(200)) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Command::Drain),
            }
        };
        loop {
            match next.take() {
                Some(Command::Run(job)) => match sched.submit(job.request) {
                    Ok(id) => {
                        routes.insert(id, job.events);
                    }
                    Err(e) => {
                        let _ = job.events.send(Event::Failed { id: u64::MAX, error: e.to_string() });
                    }
                },
                Some(Command::Drain) => draining = true,
                None => {}
            }
            next = match commands.try_recv() {
                Ok(c) => Some(c),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => Some(Command::Drain),
            };
            if draining && matches!(next, Some(Command::Drain)) {
                break;
            }
        }
        if sched.has_work() {
            for event in sched.step() {
                let (id, last) = match &event {
                    Event::Token { id, .. } => (*id, false),
                    Event::Finished { id, .. } | Event::Failed { id, .. } => (*id, true),
                };
                let gone = routes.get(&id).is_some_and(|tx| tx.send(event).is_err());
                if gone {
                    sched.cancel(id);
                }
                if last || gone {
                    routes.remove(&id);
                }
            }
        } else if draining {
            return;
        }
    }
}
