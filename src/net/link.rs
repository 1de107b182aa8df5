//! One long-lived `Link` stream per kept channel: every message for that
//! member queues here and goes out in batches, each answered in order with
//! one result per message (proto `Link`). One call's cost (headers, a
//! stream, a task at the receiver) is spread over a whole batch, and the
//! receiver checks a batch's signatures as one equation and stores it in
//! one store job.
//!
//! Batches form by themselves: while [`IN_FLIGHT`] batches wait for their
//! answers, new messages queue, and the next batch takes all of them. A
//! message sent alone goes out at once, as a batch of one.

use std::collections::VecDeque;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;
use tonic::Code;

use super::{Delivery, CALL_DEADLINE};
use crate::metrics::PeerMetrics;
use crate::proto::chat_client::ChatClient;
use crate::proto::{ChatMessage, LinkAck, LinkBatch, LinkResult};

/// Batches sent and not yet answered, at most: one being stored at the
/// receiver, one waiting behind it; the rest gathers into the next.
const IN_FLIGHT: usize = 2;
/// Most messages in one batch (the receiver's limit, proto `LinkBatch`).
const MAX_BATCH: usize = 1024;
/// Most encoded bytes of messages in one batch: far below the receiver's
/// request limit, whatever the bodies.
const BATCH_BYTES: usize = 128 * 1024;
/// Messages waiting to go out on one link; senders wait when it is full.
const QUEUE: usize = 4096;
/// A link with nothing to carry for this long is closed; the next message
/// opens another.
const IDLE: Duration = Duration::from_secs(60);

/// What one message's delivery came to, and the member's away message.
pub type Answer = (Delivery, Option<String>);

struct Job {
    msg: ChatMessage,
    answer: oneshot::Sender<Answer>,
}

/// The sending end of one link. Cheap to clone; the link's task ends when
/// every clone is gone and its queue is empty, or when the link fails.
#[derive(Clone)]
pub struct Link {
    queue: mpsc::Sender<Job>,
}

impl Link {
    /// A link over `client`'s channel, counted in `metrics`, its task on
    /// `tasks` until `stop`. Nothing is opened before the first message.
    pub fn open(
        client: ChatClient<Channel>,
        metrics: PeerMetrics,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Link {
        let (queue, jobs) = mpsc::channel(QUEUE);
        tasks.spawn(async move {
            // Whatever it held answers Unreachable as its senders' side
            // closes; they keep it owed.
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = run(client, jobs, metrics) => {}
            }
        });
        Link { queue }
    }

    /// Whether the link has ended (failed or idle): a new one is needed.
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Sends `msg` and waits for the member's answer. A link that fails
    /// answers [`Delivery::Unreachable`] for every message it held.
    pub async fn deliver(&self, msg: ChatMessage) -> Answer {
        let (answer, answered) = oneshot::channel();
        if self.queue.send(Job { msg, answer }).await.is_err() {
            return (Delivery::Unreachable, None);
        }
        answered.await.unwrap_or((Delivery::Unreachable, None))
    }
}

/// The link's task: sends batches, matches answers to them in order, and
/// fails everything it holds when the stream ends, errs, or an answer is
/// later than [`CALL_DEADLINE`].
async fn run(mut client: ChatClient<Channel>, mut jobs: mpsc::Receiver<Job>, metrics: PeerMetrics) {
    let Some(first) = jobs.recv().await else {
        return;
    };
    // Counted as failed however the task ends, unless it closes as it should.
    let mut state = metrics.link_connecting();
    let (out, batches) = mpsc::channel::<LinkBatch>(IN_FLIGHT);
    // Batches sent, oldest first: when each went and who waits for it.
    let mut held: VecDeque<(Instant, Vec<oneshot::Sender<Answer>>)> = VecDeque::new();
    let (batch, answers, mut carry) = gather(first, &mut jobs);
    let sent = batch.messages.len();
    if out.try_send(batch).is_err() {
        fail(held, answers, carry, jobs);
        return;
    }
    metrics.link_batch_sent(sent);
    held.push_back((Instant::now(), answers));
    let opened = tokio::time::timeout(CALL_DEADLINE, client.link(ReceiverStream::new(batches)));
    let mut acks = match opened.await {
        Ok(Ok(resp)) => {
            state.opened();
            resp.into_inner()
        }
        Ok(Err(status)) => {
            tracing::debug!(%status, "cannot open a link");
            fail(held, Vec::new(), carry, jobs);
            return;
        }
        Err(_) => {
            tracing::debug!("opening a link timed out");
            fail(held, Vec::new(), carry, jobs);
            return;
        }
    };
    let mut open = true;
    loop {
        if held.len() < IN_FLIGHT {
            if let Some(job) = carry.take() {
                let (batch, answers, rest) = gather(job, &mut jobs);
                carry = rest;
                let sent = batch.messages.len();
                if out.try_send(batch).is_err() {
                    fail(held, answers, carry, jobs);
                    return;
                }
                metrics.link_batch_sent(sent);
                held.push_back((Instant::now(), answers));
                continue;
            }
        }
        let late = held.front().map(|(sent, _)| *sent + CALL_DEADLINE);
        tokio::select! {
            ack = acks.message() => match ack {
                Ok(Some(ack)) => {
                    let Some((_, answers)) = held.pop_front() else {
                        tracing::debug!("a link answered a batch it was not sent");
                        break;
                    };
                    if let Err(answers) = answer(answers, ack) {
                        tracing::debug!("a link answered with the wrong number of results");
                        fail(held, answers, carry, jobs);
                        return;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(%status, "link failed");
                    break;
                }
            },
            job = jobs.recv(), if open && held.len() < IN_FLIGHT && carry.is_none() => match job {
                Some(job) => carry = Some(job),
                None => {
                    open = false;
                    if held.is_empty() {
                        state.closed();
                        return;
                    }
                }
            },
            _ = tokio::time::sleep_until(late.unwrap_or_else(Instant::now)), if late.is_some() => {
                tracing::debug!("a link's answer is late");
                break;
            }
            _ = tokio::time::sleep(IDLE), if held.is_empty() && carry.is_none() => {
                // Whatever queued before the close is still sent.
                jobs.close();
            }
        }
        if !open && held.is_empty() && carry.is_none() {
            state.closed();
            return;
        }
    }
    fail(held, Vec::new(), carry, jobs);
}

/// `first` and whatever else waits, up to a batch's limits; the message
/// that did not fit comes back to start the next batch.
fn gather(
    first: Job,
    jobs: &mut mpsc::Receiver<Job>,
) -> (LinkBatch, Vec<oneshot::Sender<Answer>>, Option<Job>) {
    let mut bytes = first.msg.encoded_len();
    let mut messages = vec![first.msg];
    let mut answers = vec![first.answer];
    let mut carry = None;
    while messages.len() < MAX_BATCH {
        let Ok(job) = jobs.try_recv() else { break };
        let len = job.msg.encoded_len();
        if bytes + len > BATCH_BYTES {
            carry = Some(job);
            break;
        }
        bytes += len;
        messages.push(job.msg);
        answers.push(job.answer);
    }
    (LinkBatch { messages }, answers, carry)
}

/// Hands each waiting sender its result; gives the senders back when the
/// answer does not match the batch.
fn answer(
    answers: Vec<oneshot::Sender<Answer>>,
    ack: LinkAck,
) -> Result<(), Vec<oneshot::Sender<Answer>>> {
    if ack.results.len() != answers.len() {
        return Err(answers);
    }
    for (to, result) in answers.into_iter().zip(ack.results) {
        // A sender that gave up (its deadline) no longer listens.
        let _ = to.send(answer_of(result));
    }
    Ok(())
}

/// What one result means, as a `Deliver`'s status would.
fn answer_of(result: LinkResult) -> Answer {
    let code = Code::from_i32(result.code);
    if code != Code::Ok {
        tracing::debug!(?code, error = %result.error, "delivery refused");
        return (Delivery::of_status(code), None);
    }
    let away = (!result.away.is_empty()).then_some(result.away);
    (Delivery::Stored, away)
}

/// Answers everything the link holds, sent or queued, as unreachable: the
/// senders keep those messages owed. The queue is closed first, so no
/// sender waits on a link that is gone.
fn fail(
    held: VecDeque<(Instant, Vec<oneshot::Sender<Answer>>)>,
    answers: Vec<oneshot::Sender<Answer>>,
    carry: Option<Job>,
    mut jobs: mpsc::Receiver<Job>,
) {
    jobs.close();
    let queued = std::iter::from_fn(|| jobs.try_recv().ok());
    let waiting = held
        .into_iter()
        .flat_map(|(_, a)| a)
        .chain(answers)
        .chain(carry.into_iter().chain(queued).map(|j| j.answer));
    for to in waiting {
        let _ = to.send((Delivery::Unreachable, None));
    }
}
