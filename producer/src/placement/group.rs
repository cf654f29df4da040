//! Reading the consumer group: its members, the request partitions each was assigned, and how
//! many records wait on each (log-end minus committed offsets).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::WorkerBacklog;

/// One read of the group.
pub(super) struct GroupRead {
    pub workers: Vec<WorkerBacklog>,
    /// The log-end offset of every request partition a worker holds.
    pub log_end: HashMap<(String, i32), i64>,
}

/// Every member of `group` with its partitions of `topics` and their backlog.
pub(super) fn read_backlogs(
    consumer: &BaseConsumer,
    group: &str,
    topics: &[String],
    timeout: Duration,
) -> Result<GroupRead, String> {
    let groups = consumer
        .fetch_group_list(Some(group), timeout)
        .map_err(|e| format!("describing the group: {e}"))?;
    let mut workers = Vec::new();
    for info in groups.groups().iter().filter(|g| g.name() == group) {
        if info.protocol_type() != "consumer" && !info.protocol_type().is_empty() {
            return Err(format!("protocol type {:?}", info.protocol_type()));
        }
        for member in info.members() {
            let assigned = parse_assignment(member.assignment().unwrap_or_default())
                .map_err(|e| format!("member {}: {e}", member.id()))?;
            let partitions: Vec<(String, i32)> = assigned
                .into_iter()
                .filter(|(t, _)| topics.contains(t))
                .flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p)))
                .collect();
            workers.push(WorkerBacklog {
                member_id: member.id().to_string(),
                partitions,
                backlog: 0,
                committed: 0,
                busy_since: Instant::now(),
                running_ends_at: None,
            });
        }
    }
    let all: Vec<(String, i32)> = workers.iter().flat_map(|w| w.partitions.clone()).collect();
    if all.is_empty() {
        return Ok(GroupRead {
            workers,
            log_end: HashMap::new(),
        });
    }
    let committed = consumer
        .committed_offsets(partition_list(&all, Offset::Invalid), timeout)
        .map_err(|e| format!("committed offsets: {e}"))?;
    let log_end = list_offsets(consumer, &all, Offset::End, timeout)?;
    // A partition nothing was committed on counts from its log start (records deleted by
    // retention are not waiting for anyone).
    let uncommitted: Vec<(String, i32)> = all
        .iter()
        .filter(|(t, p)| {
            !matches!(
                committed.find_partition(t, *p).map(|e| e.offset()),
                Some(Offset::Offset(_))
            )
        })
        .cloned()
        .collect();
    let log_start = if uncommitted.is_empty() {
        TopicPartitionList::new()
    } else {
        list_offsets(consumer, &uncommitted, Offset::Beginning, timeout)?
    };
    let offset_of = |list: &TopicPartitionList, topic: &str, p: i32| match list
        .find_partition(topic, p)
        .map(|e| e.offset())
    {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    };
    for worker in &mut workers {
        for (topic, p) in &worker.partitions {
            let (topic, p) = (topic.as_str(), *p);
            let high = offset_of(&log_end, topic, p)
                .ok_or_else(|| format!("no log-end offset for {topic}/{p}"))?;
            let done = offset_of(&committed, topic, p)
                .or_else(|| offset_of(&log_start, topic, p))
                .unwrap_or(0);
            worker.backlog += (high - done.min(high)).max(0);
            worker.committed += done;
        }
    }
    let log_end = all
        .iter()
        .filter_map(|(t, p)| Some(((t.clone(), *p), offset_of(&log_end, t, *p)?)))
        .collect();
    Ok(GroupRead { workers, log_end })
}

fn partition_list(partitions: &[(String, i32)], offset: Offset) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, p) in partitions {
        // Infallible for Invalid/End/Beginning: only a negative `Offset::Offset` is refused.
        let _ = tpl.add_partition_offset(topic, *p, offset);
    }
    tpl
}

/// The log-end (`Offset::End`) or log-start (`Offset::Beginning`) offsets of `partitions`, in
/// one ListOffsets request per broker rather than two round trips per partition.
fn list_offsets(
    consumer: &BaseConsumer,
    partitions: &[(String, i32)],
    which: Offset,
    timeout: Duration,
) -> Result<TopicPartitionList, String> {
    let what = if which == Offset::End {
        "log-end"
    } else {
        "log-start"
    };
    let listed = consumer
        .offsets_for_times(partition_list(partitions, which), timeout)
        .map_err(|e| format!("{what} offsets: {e}"))?;
    if let Some(failed) = listed.elements().iter().find(|e| e.error().is_err()) {
        return Err(format!(
            "{what} offset of {}/{}: {:?}",
            failed.topic(),
            failed.partition(),
            failed.error()
        ));
    }
    Ok(listed)
}

/// Why assignment bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed member assignment: {0}")]
pub struct AssignmentError(&'static str);

/// The topics and partitions of a Kafka consumer-protocol member assignment
/// (`ConsumerProtocolAssignment`, every version): i16 version, i32 topic count, per topic an
/// i16-length string and an i32 count of i32 partitions, then user data (ignored). Empty bytes —
/// a member not assigned anything yet — are an empty assignment.
pub fn parse_assignment(bytes: &[u8]) -> Result<Vec<(String, Vec<i32>)>, AssignmentError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = Reader(bytes);
    let version = r.i16()?;
    if version < 0 {
        return Err(AssignmentError("negative version"));
    }
    let topics = r.i32()?;
    if topics < 0 {
        return Ok(Vec::new()); // a null array
    }
    let mut out = Vec::new();
    for _ in 0..topics {
        let len = r.i16()?;
        let len = usize::try_from(len).map_err(|_| AssignmentError("null topic name"))?;
        let name = std::str::from_utf8(r.take(len)?)
            .map_err(|_| AssignmentError("topic name is not UTF-8"))?
            .to_string();
        let count = r.i32()?;
        let count = usize::try_from(count.max(0)).unwrap_or(0);
        if count > r.0.len() / 4 {
            return Err(AssignmentError("partition count past the end"));
        }
        let partitions = (0..count).map(|_| r.i32()).collect::<Result<Vec<_>, _>>()?;
        out.push((name, partitions));
    }
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AssignmentError> {
        if self.0.len() < n {
            return Err(AssignmentError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn i16(&mut self) -> Result<i16, AssignmentError> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn i32(&mut self) -> Result<i32, AssignmentError> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(version: i16, topics: &[(&str, &[i32])], user_data: &[u8]) -> Vec<u8> {
        let mut b = version.to_be_bytes().to_vec();
        b.extend((topics.len() as i32).to_be_bytes());
        for (name, parts) in topics {
            b.extend((name.len() as i16).to_be_bytes());
            b.extend(name.as_bytes());
            b.extend((parts.len() as i32).to_be_bytes());
            for p in *parts {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((user_data.len() as i32).to_be_bytes());
        b.extend(user_data);
        b
    }

    #[test]
    fn parses_topics_and_partitions_and_ignores_user_data() {
        let bytes = assignment(
            1,
            &[("t2v.requests.v1", &[0, 5, 31]), ("other", &[2])],
            b"sticky",
        );
        assert_eq!(
            parse_assignment(&bytes).unwrap(),
            vec![
                ("t2v.requests.v1".to_string(), vec![0, 5, 31]),
                ("other".to_string(), vec![2]),
            ]
        );
        let v0 = assignment(0, &[("a", &[])], &[]);
        assert_eq!(parse_assignment(&v0).unwrap(), vec![("a".into(), vec![])]);
    }

    #[test]
    fn empty_and_null_are_no_assignment() {
        assert_eq!(parse_assignment(&[]).unwrap(), vec![]);
        let mut null = 3i16.to_be_bytes().to_vec();
        null.extend((-1i32).to_be_bytes());
        assert_eq!(parse_assignment(&null).unwrap(), vec![]);
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        let bytes = assignment(1, &[("topic", &[1, 2, 3])], b"x");
        // Every cut inside the topic array is an error.
        for cut in 1..bytes.len() - 5 {
            assert!(parse_assignment(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = assignment(1, &[("t", &[])], &[]);
        huge[9..13].copy_from_slice(&i32::MAX.to_be_bytes()); // partition count
        assert!(parse_assignment(&huge).is_err());
        let mut bad_name = assignment(1, &[("t", &[1])], &[]);
        bad_name[8] = 0xff;
        assert!(parse_assignment(&bad_name).is_err());
        assert!(parse_assignment(&(-1i16).to_be_bytes()).is_err());
    }
}
