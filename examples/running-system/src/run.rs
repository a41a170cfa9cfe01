//! The instance's loop: receive DNA messages, apply them, measure what was applied and report.
//!
//! The queues are ports ([`Inbox`], [`FitnessQueue`]) so the loop runs the same on SQS and on
//! in-memory fakes.

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use tracing::{debug, error, info, warn};

use crate::instance::{Applied, Handled, Instance};
use crate::report::FitnessReport;

/// A queue operation that failed; the loop logs it and goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// A message received from the subscription queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub body: String,
    /// What deletes it.
    pub receipt: String,
}

/// The instance's own subscription queue.
pub trait Inbox {
    /// The next messages, after waiting a while for some; empty when none came.
    fn receive(&self) -> impl Future<Output = Result<Vec<Received>, TransportError>> + Send;
    fn delete(&self, receipt: &str) -> impl Future<Output = Result<(), TransportError>> + Send;
}

/// The stack's fitness queue.
pub trait FitnessQueue {
    fn send(
        &self,
        report: &FitnessReport,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
}

/// How the loop spends its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// How long one measurement observes the service before it is reported.
    pub measurement: Duration,
    /// The pause after a failed receive, so an unreachable queue is not polled in a tight loop.
    pub retry: Duration,
}

/// Runs `instance` until `stop` completes, and hands it back with what it applied.
///
/// Each message is deleted once handled, before the measurements: applying is the message's
/// whole effect, and a measurement repeated after a redelivery would reuse report ids for a
/// different body, which the product refuses.
pub async fn run<I, F>(
    mut instance: Instance,
    inbox: &I,
    fitness: &F,
    pace: Pace,
    stop: impl Future<Output = ()>,
) -> Instance
where
    I: Inbox + Sync,
    F: FitnessQueue + Sync,
{
    let mut stop = std::pin::pin!(stop);
    loop {
        let received = tokio::select! {
            () = &mut stop => return instance,
            received = inbox.receive() => received,
        };
        let messages = match received {
            Ok(messages) => messages,
            Err(e) => {
                warn!(error = %e, "cannot receive from the DNA queue; retrying");
                tokio::select! {
                    () = &mut stop => return instance,
                    () = tokio::time::sleep(pace.retry) => continue,
                }
            }
        };
        for message in messages {
            let handled = instance.handle(&message.body);
            log(&handled);
            if let Err(e) = inbox.delete(&message.receipt).await {
                warn!(error = %e, "cannot delete a handled DNA message; it will come back");
            }
            if let Handled::Applied(applied) = handled {
                if applied.measured {
                    tokio::select! {
                        () = &mut stop => return instance,
                        () = measure(&instance, &applied, fitness, pace) => {}
                    }
                }
            }
        }
    }
}

/// Measures the generation just applied and reports each measurement.
async fn measure<F: FitnessQueue>(instance: &Instance, applied: &Applied, fitness: &F, pace: Pace) {
    for measurement in 1..=instance.config().measurements_per_generation {
        tokio::time::sleep(pace.measurement).await;
        let Some(report) = instance.measure(measurement, Utc::now()) else {
            return;
        };
        match fitness.send(&report).await {
            Ok(()) if report.failed() => warn!(
                generation = applied.generation,
                measurement,
                error = report.error.as_deref().unwrap_or_default(),
                "failed measurement reported"
            ),
            Ok(()) => info!(
                generation = applied.generation,
                measurement,
                score = report.score,
                "measurement reported"
            ),
            // The product closes the window at its deadline with the reports it has.
            Err(e) => error!(generation = applied.generation, measurement, error = %e,
                "cannot report a measurement"),
        }
    }
}

fn log(handled: &Handled) {
    match handled {
        Handled::Applied(Applied {
            generation,
            restored: Some(restored),
            measured,
            ..
        }) => info!(generation, restored, measured, "rollback applied"),
        Handled::Applied(applied) => info!(generation = applied.generation, "DNA applied"),
        Handled::OtherSystem(system) => debug!(%system, "message for another system ignored"),
        Handled::OtherType => debug!("message of another type ignored"),
        Handled::Stale {
            generation,
            running,
        } => info!(generation, running, "stale DNA ignored"),
        Handled::Refused(refusal) => warn!(%refusal, "DNA message refused"),
    }
}
