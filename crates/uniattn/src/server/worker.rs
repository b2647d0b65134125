//! The engine thread: owns the scheduler, takes jobs from the HTTP threads, runs one batched
//! step at a time and routes each event back to the connection that asked. New requests join
//! the running batch between steps; a client that hangs up is cancelled.
use crate::engine::{Event, Request, Scheduler};
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
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

pub fn run(mut sched: Scheduler, commands: Receiver<Command>) {
    let mut routes: HashMap<u64, Sender<Event>> = HashMap::new();
    let mut draining = false;
    loop {
        // Block only while idle; otherwise take whatever arrived during the last step.
        let mut next = if sched.has_work() || draining {
            commands.try_recv().map_err(|_| RecvTimeoutError::Timeout)
        } else {
            commands.recv_timeout(Duration::from_millis(200))
        };
        loop {
            match next {
                Ok(Command::Run(job)) => match sched.submit(job.request) {
                    Ok(id) => {
                        routes.insert(id, job.events);
                    }
                    Err(e) => {
                        let _ = job.events.send(Event::Failed { id: u64::MAX, error: e.to_string() });
                    }
                },
                Ok(Command::Drain) | Err(RecvTimeoutError::Disconnected) => draining = true,
                Err(RecvTimeoutError::Timeout) => break,
            }
            next = commands.try_recv().map_err(|e| match e {
                std::sync::mpsc::TryRecvError::Empty => RecvTimeoutError::Timeout,
                std::sync::mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            });
            if draining && matches!(next, Err(RecvTimeoutError::Disconnected)) {
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
