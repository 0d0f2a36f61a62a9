//! A request's rows and how they become broker messages.
//!
//! Validation writes every serialized `EventRow` of a request into one buffer,
//! each row followed by a newline ([`Rows`]). [`pack`] groups the rows by
//! topic and partition key, in the request's order, up to
//! `kafka.max_message_bytes` a message. A message whose rows lie next to each
//! other in the buffer (one session's events of one topic, the usual batch) is
//! a span of it: nothing is copied before librdkafka takes its own copy. Only
//! rows of interleaved keys or topics are gathered into a message of their own.

use std::collections::HashMap;
use std::ops::Range;

use shared::config::{KafkaConfig, PartitionKey};
use shared::event::EventType;
use uuid::Uuid;

/// A request's events ready for the broker: each serialized row followed by a
/// newline in one buffer, and for each row its type and session.
#[derive(Debug, Default)]
pub struct Rows {
    bytes: Vec<u8>,
    rows: Vec<Row>,
}

/// A serialized row of a typical event with its enrichment is a few hundred
/// bytes: the first row of a request is written without growing the buffer.
const FIRST_ROW_BYTES: usize = 1024;
/// What the rows after the first may reserve each, at most: within the
/// 2 KiB per event of the memory bound (`budget::per_event_bytes`); larger rows
/// grow the buffer as they are written.
const RESERVED_ROW_MAX: usize = 2048;

/// Unused capacity a held buffer may keep ([`Rows::into_held`]).
const HELD_SLACK: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Row {
    kind: EventType,
    session: Uuid,
    /// Where the row is in `bytes` (without its newline).
    span: (usize, usize),
}

impl Rows {
    /// Room for `rows` rows: bytes for one typical row now, and for the rest
    /// once the first is written (its size, at most `RESERVED_ROW_MAX`, times
    /// the rows to come), so a request's buffer grows once or twice, not once
    /// per doubling.
    pub fn with_capacity(rows: usize) -> Rows {
        Rows {
            bytes: Vec::with_capacity(FIRST_ROW_BYTES),
            rows: Vec::with_capacity(rows),
        }
    }

    /// Appends the row `write` writes (it must write no newline). When it
    /// fails, nothing of it stays.
    pub fn push<E>(
        &mut self,
        kind: EventType,
        session: Uuid,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.bytes.len();
        match write(&mut self.bytes) {
            Ok(()) => {
                let end = self.bytes.len();
                self.bytes.push(b'\n');
                self.rows.push(Row {
                    kind,
                    session,
                    span: (start, end),
                });
                if self.rows.len() == 1 {
                    // The rows to come are bounded by the batch (the events
                    // counted before parsing), each about this one's size;
                    // never more than RESERVED_ROW_MAX each, so one large first
                    // event cannot make a batch of small ones reserve megabytes.
                    let to_come = self.rows.capacity() - 1;
                    let per_row = (end - start + 1).min(RESERVED_ROW_MAX);
                    self.bytes
                        .reserve(to_come.saturating_mul(per_row + per_row / 8));
                }
                Ok(())
            }
            Err(e) => {
                self.bytes.truncate(start);
                Err(e)
            }
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// What `messages` (packed from these rows) need of them until the broker
    /// has acknowledged each: the rows' buffer, trimmed to what was written
    /// (within a page), when every message is a span of it; nothing when some had to be
    /// gathered, after the spans are copied out too. Either way the bytes
    /// held are about the messages' own, never the rows' twice.
    pub fn into_held(self, messages: &mut [Message]) -> Vec<u8> {
        let mut bytes = self.bytes;
        if messages
            .iter()
            .any(|m| matches!(m.payload, Payload::Gathered(_)))
        {
            for m in messages.iter_mut() {
                if let Payload::Span(r) = &m.payload {
                    m.payload = Payload::Gathered(bytes[r.clone()].to_vec());
                }
            }
            return Vec::new();
        }
        // A page or less of slack is not worth a reallocation (one-event requests).
        if bytes.capacity() - bytes.len() > HELD_SLACK {
            bytes.shrink_to_fit();
        }
        bytes
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Row `i`, without its newline.
    pub fn row(&self, i: usize) -> &[u8] {
        let (start, end) = self.rows[i].span;
        &self.bytes[start..end]
    }

    /// The type of row `i`.
    pub fn kind(&self, i: usize) -> EventType {
        self.rows[i].kind
    }

    /// The bytes of every row and their newlines.
    pub fn buffered_bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// Each event type's topic (by [`EventType::index`]), as an index into the
/// sink's distinct topics.
pub type Lanes = [usize; EventType::ALL.len()];

/// The distinct topics `kafka` produces to, and each type's index among them.
pub fn lanes(kafka: &KafkaConfig) -> (Vec<String>, Lanes) {
    let mut topics: Vec<String> = Vec::new();
    let mut lanes = [0; EventType::ALL.len()];
    for kind in EventType::ALL {
        let t = kafka.topic_for(kind);
        lanes[kind.index()] = match topics.iter().position(|x| *x == t) {
            Some(i) => i,
            None => {
                topics.push(t);
                topics.len() - 1
            }
        };
    }
    (topics, lanes)
}

/// One message to produce: rows of one topic and key.
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    /// The topic, by index into the sink's topics ([`Lanes`]).
    pub topic: usize,
    /// The partition key (none: round robin).
    pub key: Option<[u8; 16]>,
    pub payload: Payload,
    pub rows: usize,
}

/// Where a message's bytes are.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload {
    /// Consecutive rows of the request's buffer, with the newlines between them.
    Span(Range<usize>),
    /// Rows gathered from across the buffer, joined by newlines.
    Gathered(Vec<u8>),
}

impl Message {
    /// The message's bytes, given the buffer of the rows it was packed from
    /// (or what [`Rows::into_held`] kept of it).
    pub fn bytes_in<'a>(&'a self, rows: &'a [u8]) -> &'a [u8] {
        match &self.payload {
            Payload::Span(r) => &rows[r.clone()],
            Payload::Gathered(v) => v,
        }
    }
}

/// How a message is being planned.
struct Plan {
    bytes: usize,
    /// Where its first row starts and its last row ends, while its rows are
    /// consecutive in the buffer.
    span: Option<(usize, usize)>,
}

/// Packs `rows` into messages: rows per (topic, key), each row's topic given
/// by `lanes`, in the request's order within each, up to `max_bytes` a message
/// (a larger row alone). Rows of one key keep their order across messages as
/// well. A message of consecutive rows is a span of the buffer; the others are
/// gathered, each allocated once at its final size.
pub fn pack(
    rows: &Rows,
    tenant: Uuid,
    lanes: &Lanes,
    partition_key: PartitionKey,
    max_bytes: usize,
) -> Vec<Message> {
    let key_of = |r: &Row| match partition_key {
        PartitionKey::Session => Some(*r.session.as_bytes()),
        PartitionKey::Tenant => Some(*tenant.as_bytes()),
        PartitionKey::RoundRobin => None,
    };
    // The message being filled for each (topic, key), by index into `out`.
    let mut open: HashMap<(usize, Option<[u8; 16]>), usize> = HashMap::new();
    let mut out: Vec<Message> = Vec::new();
    let mut plans: Vec<Plan> = Vec::new();
    let mut slot_of: Vec<usize> = Vec::with_capacity(rows.len());
    for r in &rows.rows {
        let key = key_of(r);
        let topic = lanes[r.kind.index()];
        let (start, end) = r.span;
        let len = end - start;
        let slot = open
            .get(&(topic, key))
            .copied()
            .filter(|&i| plans[i].bytes + 1 + len <= max_bytes);
        let i = match slot {
            Some(i) => {
                let p = &mut plans[i];
                p.bytes += 1 + len;
                // Consecutive: this row starts right after the last one's newline.
                p.span = p
                    .span
                    .filter(|&(_, last)| last + 1 == start)
                    .map(|(first, _)| (first, end));
                out[i].rows += 1;
                i
            }
            None => {
                open.insert((topic, key), out.len());
                plans.push(Plan {
                    bytes: len,
                    span: Some((start, end)),
                });
                out.push(Message {
                    topic,
                    key,
                    payload: Payload::Span(start..end),
                    rows: 1,
                });
                out.len() - 1
            }
        };
        slot_of.push(i);
    }
    for (m, p) in out.iter_mut().zip(&plans) {
        match p.span {
            Some((first, last)) => m.payload = Payload::Span(first..last),
            None => m.payload = Payload::Gathered(Vec::with_capacity(p.bytes)),
        }
    }
    // Gather, in the request's order.
    for (r, i) in rows.rows.iter().zip(slot_of) {
        if let Payload::Gathered(v) = &mut out[i].payload {
            if !v.is_empty() {
                v.push(b'\n');
            }
            v.extend_from_slice(&rows.bytes[r.span.0..r.span.1]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One topic per type, and one for all.
    const PER_TYPE: Lanes = [0, 1, 2, 3, 4];
    const SINGLE: Lanes = [0; 5];

    fn rows_of(list: &[(EventType, Uuid, &str)]) -> Rows {
        let mut rows = Rows::with_capacity(list.len());
        for (kind, session, text) in list {
            rows.push(*kind, *session, |b| {
                b.extend_from_slice(text.as_bytes());
                Ok::<(), ()>(())
            })
            .expect("written");
        }
        rows
    }

    #[test]
    fn a_batch_of_like_rows_is_written_without_moving_its_buffer() {
        // After the first row the buffer has room for the rest of the batch:
        // no reallocation (and copy of everything written so far) per doubling.
        let row = format!(
            "{{\"event\":\"page_view\",\"pad\":\"{}\"}}",
            "x".repeat(1500)
        );
        let mut rows = Rows::with_capacity(200);
        let mut at = None;
        for i in 0..200u32 {
            let len = row.len() - (i as usize % 100); // rows vary a little
            rows.push(EventType::Custom, Uuid::nil(), |b| {
                b.extend_from_slice(&row.as_bytes()[..len]);
                Ok::<(), ()>(())
            })
            .expect("written");
            let ptr = rows.bytes.as_ptr();
            assert_eq!(*at.get_or_insert(ptr), ptr, "row {i} moved the buffer");
        }
        assert_eq!(rows.len(), 200);
    }

    #[test]
    fn held_rows_keep_no_reservation_beyond_what_was_written() {
        // The rows stay until the broker acknowledges them: a batch whose
        // first row was large reserved for more, and that must not be held.
        let s = Uuid::new_v4();
        let big = "x".repeat(1500);
        let mut list = vec![(EventType::Custom, s, big.as_str())];
        list.extend((0..100).map(|_| (EventType::Custom, s, "y")));
        let rows = rows_of(&list);
        let written = rows.bytes.len();
        assert!(
            rows.bytes.capacity() > written,
            "the test needs a reservation"
        );
        let mut m = pack(&rows, s, &SINGLE, PartitionKey::Session, 1 << 20);
        let held = rows.into_held(&mut m);
        assert_eq!(held.len(), written);
        assert_eq!(held.capacity(), written);
        assert_eq!(m.len(), 1);
        // One message of every row, without the last row's newline.
        assert_eq!(m[0].bytes_in(&held).len(), written - 1);
    }

    #[test]
    fn interleaved_rows_are_held_once_not_beside_their_copies() {
        // Two sessions interleaved: one of them is gathered, so every message
        // gets its own bytes and the rows' buffer is let go.
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let rows = rows_of(&[
            (EventType::Click, a, "a1"),
            (EventType::Click, b, "b1"),
            (EventType::Click, a, "a2"),
            (EventType::Click, b, "b2"),
        ]);
        let mut m = pack(&rows, a, &SINGLE, PartitionKey::Session, 1024);
        assert!(m.iter().any(|m| matches!(m.payload, Payload::Gathered(_))));
        let mut want: Vec<Vec<u8>> = m.iter().map(|x| x.bytes_in(&rows.bytes).to_vec()).collect();
        let held = rows.into_held(&mut m);
        assert!(held.is_empty(), "the rows' buffer is not held");
        let mut got: Vec<Vec<u8>> = m.iter().map(|x| x.bytes_in(&held).to_vec()).collect();
        want.sort();
        got.sort();
        assert_eq!(got, want);
        assert_eq!(got, vec![b"a1\na2".to_vec(), b"b1\nb2".to_vec()]);
    }

    #[test]
    fn a_large_first_row_does_not_reserve_for_the_whole_batch() {
        let mut rows = Rows::with_capacity(1000);
        let big = "y".repeat(256 * 1024);
        for text in std::iter::once(big.as_str()).chain(std::iter::repeat_n("{}", 999)) {
            rows.push(EventType::Custom, Uuid::nil(), |b| {
                b.extend_from_slice(text.as_bytes());
                Ok::<(), ()>(())
            })
            .expect("written");
        }
        // 256 KiB written, then 999 small rows: the buffer holds about the
        // first row and 2 KiB (and an eighth) for each of the rest, not
        // 1000 × 256 KiB.
        assert!(
            rows.bytes.capacity() <= big.len() + 1 + 999 * (RESERVED_ROW_MAX * 9 / 8),
            "reserved {} bytes",
            rows.bytes.capacity()
        );
    }

    fn lines<'a>(m: &'a Message, rows: &'a Rows) -> Vec<&'a str> {
        std::str::from_utf8(m.bytes_in(&rows.bytes))
            .expect("utf-8")
            .split('\n')
            .collect()
    }

    #[test]
    fn each_topic_and_key_gets_its_rows_in_order() {
        let (a, b, t) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let rows = rows_of(&[
            (EventType::Click, a, "a1"),
            (EventType::Click, b, "b1"),
            (EventType::Pageview, a, "a2"),
            (EventType::Click, a, "a3"),
            (EventType::Click, b, "b2"),
        ]);
        let click = EventType::Click.index();
        let m = pack(&rows, t, &PER_TYPE, PartitionKey::Session, 1024);
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[0].topic, m[0].key, lines(&m[0], &rows)),
            (click, Some(*a.as_bytes()), vec!["a1", "a3"])
        );
        assert_eq!(
            (m[1].key, lines(&m[1], &rows)),
            (Some(*b.as_bytes()), vec!["b1", "b2"])
        );
        assert_eq!(
            (m[2].topic, lines(&m[2], &rows)),
            (EventType::Pageview.index(), vec!["a2"])
        );
        assert_eq!(m.iter().map(|m| m.rows).sum::<usize>(), 5);
        // Interleaved rows are gathered into a message allocated at its size.
        for m in &m[..2] {
            let Payload::Gathered(v) = &m.payload else {
                panic!("{m:?} is not gathered")
            };
            assert_eq!(v.capacity(), v.len());
        }
        // Tenant keys and round robin: one message per topic.
        let m = pack(&rows, t, &PER_TYPE, PartitionKey::Tenant, 1024);
        assert_eq!(m.len(), 2);
        assert_eq!(lines(&m[0], &rows), vec!["a1", "b1", "a3", "b2"]);
        assert_eq!(m[0].key, Some(*t.as_bytes()));
        let m = pack(&rows, t, &PER_TYPE, PartitionKey::RoundRobin, 1024);
        assert_eq!((m.len(), m[0].key), (2, None));
        // One topic for all types: a session's events of every type share
        // its messages, in the request's order.
        let m = pack(&rows, t, &SINGLE, PartitionKey::Session, 1024);
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].topic, m[0].key, lines(&m[0], &rows)),
            (0, Some(*a.as_bytes()), vec!["a1", "a2", "a3"])
        );
        assert_eq!(lines(&m[1], &rows), vec!["b1", "b2"]);
        // Round robin on one topic: the whole buffer, as it is.
        let m = pack(&rows, t, &SINGLE, PartitionKey::RoundRobin, 1024);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].payload, Payload::Span(0..rows.buffered_bytes() - 1));
        assert_eq!(lines(&m[0], &rows).len(), 5);
    }

    #[test]
    fn one_sessions_rows_of_one_topic_are_a_span_of_the_buffer() {
        let s = Uuid::new_v4();
        let rows = rows_of(&[
            (EventType::Pageview, s, "p1"),
            (EventType::Click, s, "c1"),
            (EventType::Scroll, s, "s1"),
        ]);
        let m = pack(&rows, s, &SINGLE, PartitionKey::Session, 1024);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].payload, Payload::Span(0..8));
        assert_eq!(m[0].bytes_in(&rows.bytes), b"p1\nc1\ns1");
        // A one-event request: its row alone, not copied.
        let one = rows_of(&[(EventType::Custom, s, "x")]);
        let m = pack(&one, s, &PER_TYPE, PartitionKey::Session, 1024);
        assert_eq!(m[0].payload, Payload::Span(0..1));
    }

    #[test]
    fn messages_stay_under_the_size_and_a_large_row_travels_alone() {
        let s = Uuid::new_v4();
        let row = "x".repeat(100);
        let big = "y".repeat(5000);
        let mut list: Vec<(EventType, Uuid, &str)> = (0..25)
            .map(|_| (EventType::Click, s, row.as_str()))
            .collect();
        list.insert(10, (EventType::Click, s, big.as_str()));
        let rows = rows_of(&list);
        let m = pack(&rows, s, &PER_TYPE, PartitionKey::Session, 1024);
        assert!(m
            .iter()
            .all(|m| m.bytes_in(&rows.bytes).len() <= 1024 || m.rows == 1));
        assert_eq!(m.iter().map(|m| m.rows).sum::<usize>(), 26);
        // Order is kept across messages: concatenated, the rows are the input.
        let all: Vec<&str> = m.iter().flat_map(|m| lines(m, &rows)).collect();
        let want: Vec<&str> = list.iter().map(|(_, _, t)| *t).collect();
        assert_eq!(all, want);
        // 1024 bytes hold 10 rows of 100 and their separators.
        assert_eq!(m[0].rows, 10);
        assert_eq!(m[1].rows, 1, "the 5000-byte row alone");
        assert!(m.iter().all(|m| matches!(m.payload, Payload::Span(_))));
    }

    #[test]
    fn a_row_that_fails_to_write_leaves_nothing() {
        let s = Uuid::new_v4();
        let mut rows = rows_of(&[(EventType::Click, s, "ok")]);
        let r = rows.push(EventType::Click, s, |b| {
            b.extend_from_slice(b"half");
            Err("broken")
        });
        assert_eq!(r, Err("broken"));
        assert_eq!((rows.len(), rows.buffered_bytes()), (1, 3));
        rows.push(EventType::Click, s, |b| {
            b.extend_from_slice(b"next");
            Ok::<(), ()>(())
        })
        .expect("written");
        assert_eq!(rows.row(1), b"next");
        let m = pack(&rows, s, &PER_TYPE, PartitionKey::Session, 1024);
        assert_eq!(m[0].bytes_in(&rows.bytes), b"ok\nnext");
    }

    #[test]
    fn each_type_goes_to_its_layouts_topic() {
        let mut kafka = shared::config::Config::load_from(None, Vec::new())
            .expect("defaults")
            .kafka;
        kafka.topic_prefix = "p_".into();
        kafka.topic_layout = shared::config::TopicLayout::Single;
        assert_eq!(lanes(&kafka), (vec!["p_events".to_string()], SINGLE));
        kafka.topic_layout = shared::config::TopicLayout::PerType;
        let (topics, l) = lanes(&kafka);
        assert_eq!(l, PER_TYPE);
        for kind in EventType::ALL {
            assert_eq!(topics[l[kind.index()]], kind.topic("p_"));
        }
    }
}
