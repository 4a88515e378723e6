//! Reading the changelog back: the last record of a partition (who wrote it decides whether our
//! local state is up to date) and whole partitions (restores). One groupless consumer serves
//! every partition being checked or restored, so restores run between the batches of the
//! partitions that are already active, never in the way of them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::warn;

use super::SourceError;
use super::kafka::{ReaderContext, client_config};
use crate::changelog::{RestoreBuffer, Restored, WRITER_HEADER};
use crate::config::Config;

/// What reading the changelog found.
#[derive(Debug)]
pub enum Found {
    /// The writer of partition `p`'s last record; `None`: the partition is empty (or its last
    /// record could not be read in time, which is treated as "someone else's").
    Tail(u16, Option<[u8; 16]>, bool),
    /// Records of partition `p` that a checkpoint closes, in log order.
    Group(u16, Vec<Restored>),
    /// Partition `p` is read to the end it had when its restore began.
    Done(u16, RestoreStats),
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreStats {
    pub records: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Records after the last checkpoint, left out.
    pub incomplete: u64,
}

enum Task {
    Tail {
        high: i64,
        since: Instant,
    },
    Restore {
        high: i64,
        next: Option<i64>,
        buf: RestoreBuffer,
        stats: RestoreStats,
        started: Instant,
    },
}

/// Progress of one restore, for `/status` and the metrics.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub partition: u16,
    pub restoring: bool,
    pub read: u64,
    pub total: u64,
}

pub struct ChangelogReader {
    consumer: BaseConsumer<ReaderContext>,
    topic: String,
    tasks: BTreeMap<u16, Task>,
    /// Tails found at once (empty partitions), handed out by the next `step`.
    ready: Vec<Found>,
}

/// How long the last record of a partition may take to arrive before we stop waiting for it.
const TAIL_TIMEOUT: Duration = Duration::from_secs(15);

impl ChangelogReader {
    pub fn new(cfg: &Config) -> Result<ChangelogReader, SourceError> {
        let mut c = client_config(cfg);
        c.set("group.id", format!("{}-restore", cfg.kafka.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Restores read as fast as the broker serves, whatever `kafka.client` says for inputs.
            .set("fetch.min.bytes", "1")
            // The end of a partition is where a restore stops, whatever compaction removed
            // just before it.
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "100")
            .set("fetch.max.bytes", "52428800")
            .set("max.partition.fetch.bytes", "10485760")
            .set("fetch.queue.backoff.ms", crate::source::kafka::FETCH_QUEUE_BACKOFF_MS);
        let consumer = c.create_with_context(ReaderContext).map_err(|e| {
            SourceError::Config(format!(
                "cannot create the changelog consumer: {e}. Check the kafka section of the config."
            ))
        })?;
        Ok(ChangelogReader {
            consumer,
            topic: cfg.kafka.changelog_topic.clone(),
            tasks: BTreeMap::new(),
            ready: Vec::new(),
        })
    }

    fn watermarks(&self, p: u16) -> Result<(i64, i64), SourceError> {
        self.consumer
            .fetch_watermarks(&self.topic, p as i32, Duration::from_secs(10))
            .map_err(|e| {
                SourceError::Config(format!(
                    "cannot read the end offsets of changelog {}/{p}: {e}",
                    self.topic
                ))
            })
    }

    /// Starts looking for the writer of partition `p`'s last record.
    pub fn check_tail(&mut self, p: u16) -> Result<(), SourceError> {
        let (low, high) = self.watermarks(p)?;
        if high <= low {
            self.ready.push(Found::Tail(p, None, true));
            return Ok(());
        }
        self.tasks.insert(
            p,
            Task::Tail {
                high,
                since: Instant::now(),
            },
        );
        self.assign(p, Offset::Offset(high - 1));
        Ok(())
    }

    /// Starts reading partition `p` from its beginning to its current end.
    pub fn restore(&mut self, p: u16) -> Result<u64, SourceError> {
        let (low, high) = self.watermarks(p)?;
        let task = Task::Restore {
            high,
            next: None,
            buf: RestoreBuffer::default(),
            stats: RestoreStats::default(),
            started: Instant::now(),
        };
        if high <= low {
            self.ready.push(Found::Done(p, RestoreStats::default()));
        } else {
            self.tasks.insert(p, task);
            self.assign(p, Offset::Beginning);
        }
        Ok((high - low).max(0) as u64)
    }

    /// Forgets partition `p` (revoked while being checked or restored).
    pub fn cancel(&mut self, p: u16) {
        self.ready.retain(|f| match f {
            Found::Tail(q, ..) | Found::Group(q, _) | Found::Done(q, _) => *q != p,
        });
        if self.tasks.remove(&p).is_some() {
            self.unassign(p);
        }
    }

    pub fn is_idle(&self) -> bool {
        self.tasks.is_empty() && self.ready.is_empty()
    }

    pub fn progress(&self) -> Vec<Progress> {
        self.tasks
            .iter()
            .map(|(p, t)| match t {
                Task::Tail { .. } => Progress {
                    partition: *p,
                    restoring: false,
                    read: 0,
                    total: 0,
                },
                Task::Restore {
                    high, stats, ..
                } => Progress {
                    partition: *p,
                    restoring: true,
                    read: stats.records,
                    total: (*high).max(0) as u64,
                },
            })
            .collect()
    }

    // The assignment changes one partition at a time (see `KafkaSource::activate` for why).
    fn assign(&mut self, p: u16, offset: Offset) {
        let mut tpl = TopicPartitionList::new();
        let _ = tpl.add_partition_offset(&self.topic, p as i32, offset);
        if let Err(e) = self.consumer.incremental_assign(&tpl) {
            warn!(partition = p, error = %e, "Assigning a changelog partition failed.");
        }
    }

    fn unassign(&mut self, p: u16) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, p as i32);
        if let Err(e) = self.consumer.incremental_unassign(&tpl) {
            warn!(partition = p, error = %e, "Unassigning a changelog partition failed.");
        }
    }

    /// Reads for at most `budget` and reports what it found.
    pub fn step(&mut self, budget: Duration, out: &mut Vec<Found>) {
        out.append(&mut self.ready);
        if self.tasks.is_empty() {
            return;
        }
        let deadline = Instant::now() + budget;
        while Instant::now() < deadline && !self.tasks.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(m) = self.consumer.poll(left.min(Duration::from_millis(50))) else {
                // Nothing arrived: a tail that takes too long is treated as someone else's.
                let late: Vec<u16> = self
                    .tasks
                    .iter()
                    .filter_map(|(p, t)| match t {
                        Task::Tail { since, .. } if since.elapsed() > TAIL_TIMEOUT => Some(*p),
                        _ => None,
                    })
                    .collect();
                for p in late {
                    warn!(partition = p, "The changelog's last record did not arrive in time; restoring the partition.");
                    self.tasks.remove(&p);
                    self.unassign(p);
                    out.push(Found::Tail(p, None, false));
                }
                continue;
            };
            let m = match m {
                Ok(m) => m,
                Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                    let p = p as u16;
                    match self.tasks.remove(&p) {
                        Some(Task::Restore {
                            buf,
                            mut stats,
                            started,
                            ..
                        }) => {
                            stats.incomplete = buf.incomplete() as u64;
                            stats.seconds = started.elapsed().as_secs_f64();
                            out.push(Found::Done(p, stats));
                            self.unassign(p);
                        }
                        Some(Task::Tail { .. }) => {
                            // The last record is gone (compacted): someone else's, to be safe.
                            out.push(Found::Tail(p, None, false));
                            self.unassign(p);
                        }
                        None => {}
                    }
                    continue;
                }
                Err(e) => {
                    // The broker is away: librdkafka retries by itself; try again next turn.
                    crate::telemetry::kafka_stats::client_error("restore", &e, "poll");
                    break;
                }
            };
            let p = m.partition() as u16;
            let Some(task) = self.tasks.get_mut(&p) else {
                continue;
            };
            match task {
                Task::Tail { high, .. } => {
                    if m.offset() < *high - 1 {
                        continue;
                    }
                    let writer = m.headers().and_then(|h| {
                        h.iter()
                            .find(|x| x.key == WRITER_HEADER)
                            .and_then(|x| x.value)
                            .and_then(|v| <[u8; 16]>::try_from(v).ok())
                    });
                    self.tasks.remove(&p);
                    self.unassign(p);
                    out.push(Found::Tail(p, writer, false));
                }
                Task::Restore {
                    high,
                    next,
                    buf,
                    stats,
                    started,
                } => {
                    *next = Some(m.offset() + 1);
                    stats.records += 1;
                    let payload = m.payload().map(<[u8]>::to_vec);
                    stats.bytes += payload.as_ref().map_or(0, |v| v.len() as u64)
                        + m.key().map_or(0, |k| k.len() as u64);
                    if let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                        let header = |name: &str| {
                            m.headers().and_then(|h| {
                                h.iter().find(|x| x.key == name).and_then(|x| x.value)
                            })
                        };
                        let r = Restored {
                            key: key.to_owned(),
                            value: payload,
                            writer: header(WRITER_HEADER).and_then(|v| <[u8; 16]>::try_from(v).ok()),
                            batch: header(crate::changelog::BATCH_HEADER)
                                .and_then(|v| <[u8; 8]>::try_from(v).ok())
                                .map_or(u64::MAX, u64::from_be_bytes),
                        };
                        if let Some(group) = buf.push(r) {
                            out.push(Found::Group(p, group));
                        }
                    }
                    if m.offset() + 1 >= *high {
                        stats.incomplete = buf.incomplete() as u64;
                        stats.seconds = started.elapsed().as_secs_f64();
                        out.push(Found::Done(p, *stats));
                        self.tasks.remove(&p);
                        self.unassign(p);
                    }
                }
            }
        }
    }
}
