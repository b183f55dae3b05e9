//! The message-moving scenarios: pair, fanout, many (closed loop under flow
//! control) and latency (open loop at a fixed rate).
//!
//! Shape of every run: open every subscriber connection and make its
//! subscriptions (one, or several when there are more topics than
//! subscribers; see [`Plan::subscription`]), each confirmed by the broker;
//! connect the publishers, start a task per subscriber connection and wait
//! until each is ready to receive, start the clock, publish until `--duration` or
//! `--messages`, wait until every publish is answered, then let subscribers
//! drain until each subscription has what was sent to its topic or the
//! connection goes [`IDLE`] without a message. Nothing waits without a time
//! limit.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::runtime::Handle;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::driver::{Endpoint, Publisher, PublisherDone, Subscriber};
use crate::flow::TopicFlow;
use crate::options::{Plan, Scenario, SubscriptionSlot};
use crate::payload::{Header, PayloadWriter};
use crate::progress::Progress;
use crate::report::{LatencyUs, Report};
use crate::sys::{ensure_open_files, CpuMark, SPARE_FILES};
use crate::tracker::{latency_histogram, Tracker};
use crate::BenchError;

/// A subscriber that has had nothing for this long after publishing ended
/// has everything it is going to get.
pub const IDLE: Duration = Duration::from_secs(3);
/// Limit on waiting for publishers' last answers once publishing stops.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit on draining after publishing ends, however steady the trickle.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// Limit on waiting for every subscriber task to be ready to receive.
const READY_LIMIT: Duration = Duration::from_secs(10);
/// Subscriber connections opened at once.
pub const CONNECT_CONCURRENCY: usize = 128;
/// Publishers look at the clock once per this many messages.
const CLOCK_EVERY: u64 = 16;

/// Totals per topic, published once every publisher is done.
type Expected = Option<Arc<Vec<u64>>>;

/// Names of a run's topics, unique per run so that no broker state from an
/// earlier run (corebus sequence numbers, lingering subscribers) interferes.
pub fn topic_names(count: usize) -> Vec<String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let run = format!("r{}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff);
    (0..count).map(|topic| format!("{run}.t{topic}")).collect()
}

/// Runs `plan` (pair, fanout, many or latency) against `endpoint`.
pub async fn run(plan: &Plan, endpoint: &Endpoint) -> Result<Report, BenchError> {
    // One descriptor per connection (1,000 WebSocket subscribers are a
    // usual shape), raised up to the hard limit or refused with the reason.
    ensure_open_files((plan.subscribers + plan.publishers) as u64 + SPARE_FILES)?;
    let open_loop = plan.scenario == Scenario::Latency;
    let topics = topic_names(plan.topics);
    let window = if open_loop { u64::MAX } else { plan.window };
    let flows: Arc<Vec<TopicFlow>> = Arc::new(
        (0..plan.topics)
            .map(|topic| TopicFlow::new(plan.subscriptions_of(topic), window))
            .collect(),
    );
    // Per subscriber connection, the subscriptions it holds.
    let mut held: Vec<Vec<SubscriptionSlot>> = vec![Vec::new(); plan.subscribers];
    for index in 0..plan.subscriptions() {
        let slot = plan.subscription(index);
        held[slot.connection].push(slot);
    }

    let connected: Vec<Result<(usize, Subscriber), BenchError>> =
        futures_util::stream::iter(held.iter().enumerate())
            .map(|(index, slots)| {
                let names: Vec<&str> = slots
                    .iter()
                    .map(|slot| topics[slot.topic].as_str())
                    .collect();
                // Spread over the nodes of a cluster (`--subscriber-urls`).
                let endpoint = match plan.subscriber_urls.is_empty() {
                    true => endpoint.clone(),
                    false => Endpoint {
                        url: plan.subscriber_url(index).to_owned(),
                        ..endpoint.clone()
                    },
                };
                async move { Ok((index, Subscriber::connect(&endpoint, &names).await?)) }
            })
            .buffer_unordered(CONNECT_CONCURRENCY)
            .collect()
            .await;
    let publishing = match plan.publisher_on {
        None => endpoint.clone(),
        Some(place) => Endpoint {
            url: crate::driver::corebus::publisher_url(plan, endpoint, &topics[0], place).await?,
            ..endpoint.clone()
        },
    };
    let mut publishers = Vec::with_capacity(plan.publishers);
    for _ in 0..plan.publishers {
        publishers.push(Publisher::connect(&publishing, &topics).await?);
    }

    let base = std::time::Instant::now();
    let (expected_tx, expected_rx) = watch::channel::<Expected>(None);
    let ready = Arc::new(Semaphore::new(0));
    let mut subscriber_tasks = Vec::with_capacity(plan.subscribers);
    for connected in connected {
        let (index, subscriber) = connected?;
        let run = SubscriberRun {
            connection: index,
            slots: std::mem::take(&mut held[index]),
            publishers: plan.publishers,
            flows: flows.clone(),
            base,
            expected: expected_rx.clone(),
            deadline: Instant::now() + READY_LIMIT + plan.duration + FINISH_TIMEOUT + DRAIN_LIMIT,
            ready: ready.clone(),
        };
        subscriber_tasks.push(tokio::spawn(run.receive(subscriber)));
    }
    // Publishing starts once every subscriber task has set itself up (its
    // trackers and latency histogram, a few hundred KiB each): otherwise a
    // thousand tasks doing that while the first messages arrive put their
    // own start-up into the latency tail.
    let permits = u32::try_from(subscriber_tasks.len()).unwrap_or(u32::MAX);
    if tokio::time::timeout(READY_LIMIT, ready.acquire_many(permits))
        .await
        .is_err()
    {
        eprintln!(
            "subscriber tasks not all ready after {} s; publishing anyway",
            READY_LIMIT.as_secs()
        );
    }
    let cpu_before = CpuMark::now(plan.broker_pid);
    let started = Instant::now();
    let end = started + plan.duration;

    let progress = Progress::start(plan, {
        let flows = flows.clone();
        move || {
            let published = flows.iter().map(TopicFlow::published).sum();
            let delivered = flows.iter().map(TopicFlow::received).sum();
            (published, delivered)
        }
    });

    let mut publisher_tasks = Vec::with_capacity(plan.publishers);
    for (index, publisher) in publishers.into_iter().enumerate() {
        let run = PublisherRun {
            index,
            topics: plan.topics,
            size: plan.size,
            payload: plan.payload,
            messages: plan.messages,
            flows: flows.clone(),
            base,
            end,
        };
        if open_loop {
            let per_publisher = plan.rate as f64 / plan.publishers as f64;
            let interval_ns = 1e9 / per_publisher;
            // Stagger publishers across one interval so their sends interleave.
            let offset_ns = interval_ns * index as f64 / plan.publishers as f64;
            let handle = Handle::current();
            publisher_tasks.push(tokio::task::spawn_blocking(move || {
                run.paced(&handle, publisher, interval_ns, offset_ns)
            }));
        } else {
            publisher_tasks.push(tokio::spawn(run.flat_out(publisher)));
        }
    }

    let mut sent_by = Vec::with_capacity(plan.publishers);
    let mut max_seq = vec![0u64; plan.topics];
    let mut first_error = None;
    for task in publisher_tasks {
        match task.await {
            Ok(Ok((sent, done))) => {
                if let Some(seqs) = done.max_seq {
                    for (max, seq) in max_seq.iter_mut().zip(seqs) {
                        *max = (*max).max(seq);
                    }
                }
                sent_by.push(sent);
            }
            Ok(Err(err)) => {
                first_error.get_or_insert(err);
            }
            Err(err) => {
                first_error.get_or_insert(BenchError::Task(err.to_string()));
            }
        }
    }
    if let Some(err) = first_error {
        progress.stop();
        return Err(err);
    }
    let per_topic: Vec<u64> = (0..plan.topics)
        .map(|topic| sent_by.iter().map(|sent| sent[topic]).sum())
        .collect();
    // Every subscriber is still running (they stop only on expected totals,
    // the deadline or a failure), so a failed send changes nothing.
    let _ = expected_tx.send(Some(Arc::new(per_topic.clone())));

    let mut report = Report::for_plan(plan);
    let mut latency = latency_histogram();
    let mut last_ns = 0u64;
    for task in subscriber_tasks {
        let outcome = task
            .await
            .map_err(|err| BenchError::Task(err.to_string()))?;
        if let Some(reason) = &outcome.ended_by {
            eprintln!(
                "subscriber connection {} stopped early: {reason}",
                outcome.connection
            );
        }
        for subscription in &outcome.subscriptions {
            let topic = subscription.topic;
            let sent: Vec<u64> = sent_by.iter().map(|sent| sent[topic]).collect();
            let tracker = &subscription.tracker;
            let mut lost = tracker.lost(&sent);
            if let Some(start_after) = subscription.start_after {
                lost = lost.max(tracker.seq_lost(max_seq[topic], start_after));
            }
            report.expected += per_topic[topic];
            report.delivered += tracker.delivered();
            report.lost += lost;
            report.disorder += tracker.out_of_order + tracker.foreign + tracker.phantom(&sent);
        }
        // Both histograms share bounds, so adding cannot fail.
        let _ = latency.add(&outcome.latency);
        last_ns = last_ns.max(outcome.last_ns);
    }
    let cpu_after = CpuMark::now(plan.broker_pid);
    progress.stop();
    (report.broker_cpu_us_per_msg, report.harness_cpu_us_per_msg) =
        cpu_before.per_message(&cpu_after, report.delivered);
    let (drops, disconnects) = endpoint.incidents.snapshot();
    report.client_incidents = drops + disconnects;
    report.published = per_topic.iter().sum();
    let started_ns = started.duration_since(Instant::from_std(base)).as_nanos() as u64;
    report.duration_s = last_ns.saturating_sub(started_ns) as f64 / 1e9;
    report.latency_us = LatencyUs::from_ns(&latency);
    if open_loop {
        report.rate = Some(plan.rate);
    } else {
        report.window = Some(plan.window);
    }
    report.compute_rates();
    Ok(report)
}

/// One publisher's share of a run.
struct PublisherRun {
    index: usize,
    topics: usize,
    size: usize,
    payload: crate::payload::PayloadKind,
    messages: u64,
    flows: Arc<Vec<TopicFlow>>,
    base: std::time::Instant,
    end: Instant,
}

/// Per topic, the messages one publisher sent; and what it learnt.
type PublisherOutcome = (Vec<u64>, PublisherDone);

impl PublisherRun {
    fn header(&self, topic: usize, counter: u64, sent_ns: u64) -> Header {
        Header {
            publisher: self.index as u32,
            topic: topic as u32,
            counter,
            sent_ns,
        }
    }

    /// As fast as flow control allows; publisher `i` sends its `n`-th
    /// message to topic `(i + n) mod topics`.
    async fn flat_out(self, mut publisher: Publisher) -> Result<PublisherOutcome, BenchError> {
        let mut writer = PayloadWriter::of(self.size, self.payload);
        let mut sent = vec![0u64; self.topics];
        let mut limits: Vec<u64> = self.flows.iter().map(TopicFlow::initial_limit).collect();
        for n in 0..self.messages {
            if n % CLOCK_EVERY == 0 && Instant::now() >= self.end {
                break;
            }
            let topic = (self.index + n as usize) % self.topics;
            let flow = &self.flows[topic];
            if flow.published() >= limits[topic] {
                limits[topic] = flow.room(flow.published(), self.end).await;
                if Instant::now() >= self.end {
                    break;
                }
            }
            let sent_ns = self.base.elapsed().as_nanos() as u64;
            let payload = writer.write(&self.header(topic, sent[topic], sent_ns));
            publisher.publish(topic, payload).await?;
            sent[topic] += 1;
            flow.note_published();
        }
        let done = tokio::time::timeout(FINISH_TIMEOUT, publisher.finish())
            .await
            .map_err(|_| BenchError::FinishTimeout(FINISH_TIMEOUT))??;
        Ok((sent, done))
    }

    /// Open loop on a blocking thread: message `n` is due at
    /// `start + offset + n * interval` and carries that time, however late it
    /// actually leaves, so a stalled broker (or harness) shows up as latency
    /// instead of as fewer samples (no coordinated omission).
    fn paced(
        self,
        handle: &Handle,
        mut publisher: Publisher,
        interval_ns: f64,
        offset_ns: f64,
    ) -> Result<PublisherOutcome, BenchError> {
        crate::sys::precise_sleeps();
        let start_ns = self.base.elapsed().as_nanos() as f64 + offset_ns;
        let end_ns = self
            .end
            .duration_since(Instant::from_std(self.base))
            .as_nanos() as f64;
        let mut writer = PayloadWriter::of(self.size, self.payload);
        let mut sent = vec![0u64; self.topics];
        for n in 0..self.messages {
            let due_ns = start_ns + interval_ns * n as f64;
            if due_ns >= end_ns {
                break;
            }
            let due = self.base + Duration::from_nanos(due_ns as u64);
            let now = std::time::Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let topic = (self.index + n as usize) % self.topics;
            let payload = writer.write(&self.header(topic, sent[topic], due_ns as u64));
            handle.block_on(publisher.publish(topic, payload))?;
            sent[topic] += 1;
            self.flows[topic].note_published();
        }
        let done = handle
            .block_on(tokio::time::timeout(FINISH_TIMEOUT, publisher.finish()))
            .map_err(|_| BenchError::FinishTimeout(FINISH_TIMEOUT))??;
        Ok((sent, done))
    }
}

/// One subscriber connection's share of a run.
struct SubscriberRun {
    connection: usize,
    /// The subscriptions it holds, in the order given to the driver.
    slots: Vec<SubscriptionSlot>,
    publishers: usize,
    flows: Arc<Vec<TopicFlow>>,
    base: std::time::Instant,
    expected: watch::Receiver<Expected>,
    /// Stop no matter what at this time.
    deadline: Instant,
    /// Gets a permit once the task is ready to receive.
    ready: Arc<Semaphore>,
}

/// What one subscription saw.
struct SubscriptionOutcome {
    topic: usize,
    /// Its flow-control slot in the topic.
    slot: usize,
    start_after: Option<u64>,
    tracker: Tracker,
    /// Messages received (whatever the tracker made of them).
    received: u64,
    /// What its topic was sent, once publishing is over.
    expected: Option<u64>,
}

impl SubscriptionOutcome {
    fn complete(&self) -> bool {
        self.expected
            .is_some_and(|expected| self.tracker.delivered() >= expected)
    }
}

/// What one subscriber connection saw.
struct SubscriberOutcome {
    connection: usize,
    subscriptions: Vec<SubscriptionOutcome>,
    /// When the last message arrived, on the run's clock.
    last_ns: u64,
    /// Why it stopped before receiving everything, if it did.
    ended_by: Option<String>,
    /// Latency of every message it received, all subscriptions together.
    latency: Histogram<u64>,
}

impl SubscriberRun {
    async fn receive(mut self, mut subscriber: Subscriber) -> SubscriberOutcome {
        let mut subscriptions: Vec<SubscriptionOutcome> = self
            .slots
            .iter()
            .enumerate()
            .map(|(index, slot)| {
                let start_after = subscriber.start_after(index);
                SubscriptionOutcome {
                    topic: slot.topic,
                    slot: slot.slot,
                    start_after,
                    tracker: Tracker::new(slot.topic, self.publishers, start_after),
                    received: 0,
                    expected: None,
                }
            })
            .collect();
        let mut latency = latency_histogram();
        let mut last_ns = 0u64;
        let mut draining = false;
        let mut ended_by = None;
        let timer = tokio::time::sleep_until(self.deadline);
        tokio::pin!(timer);
        self.ready.add_permits(1);
        loop {
            if draining && subscriptions.iter().all(SubscriptionOutcome::complete) {
                break;
            }
            tokio::select! {
                biased;
                next = subscriber.next() => match next {
                    Ok(Some(message)) => {
                        let Some(subscription) = subscriptions.get_mut(message.subscription) else {
                            ended_by = Some("a message from a subscription it does not hold".into());
                            break;
                        };
                        last_ns = self.base.elapsed().as_nanos() as u64;
                        subscription.tracker.record(&message, last_ns, &mut latency);
                        subscription.received += 1;
                        self.flows[subscription.topic]
                            .note_received(subscription.slot, subscription.received);
                        if draining {
                            // A message restarts the idle clock (re-armed
                            // only when half spent, to spare the timer).
                            let now = Instant::now();
                            if timer.deadline() < now + IDLE / 2 {
                                timer.as_mut().reset((now + IDLE).min(self.deadline));
                            }
                        }
                    }
                    Ok(None) => {
                        ended_by = Some("a subscription ended".to_owned());
                        break;
                    }
                    Err(err) => {
                        ended_by = Some(err.to_string());
                        break;
                    }
                },
                changed = self.expected.changed(), if !draining => {
                    if changed.is_err() {
                        ended_by = Some("the run was abandoned".to_owned());
                        break;
                    }
                    let totals = self.expected.borrow().clone();
                    let Some(totals) = totals else { continue };
                    for subscription in &mut subscriptions {
                        subscription.expected = Some(totals[subscription.topic]);
                    }
                    draining = true;
                    let drain_end = Instant::now() + DRAIN_LIMIT;
                    self.deadline = self.deadline.min(drain_end);
                    timer.as_mut().reset((Instant::now() + IDLE).min(self.deadline));
                }
                () = &mut timer => {
                    if draining {
                        ended_by = Some(format!(
                            "nothing arrived for {} s after publishing ended",
                            IDLE.as_secs()
                        ));
                    } else {
                        ended_by = Some("the run's time limit passed".to_owned());
                    }
                    break;
                }
            }
        }
        if subscriptions.iter().all(SubscriptionOutcome::complete) {
            ended_by = None;
        }
        SubscriberOutcome {
            connection: self.connection,
            subscriptions,
            last_ns,
            ended_by,
            latency,
        }
    }
}
