//! The journal's records on disk: framing, checksums, and reading a segment back with a torn
//! tail told apart from real corruption.
//!
//! A frame is `magic (1) | kind (1) | payload length (u32 LE) | CRC-32 of kind and payload (u32
//! LE) | payload`. Fields in a payload are `u16 LE length | bytes` or a `u64 LE`. A crash can
//! leave the last frames of the newest segment half written (or zero-filled, after a power
//! loss); such a tail holds no whole frame after the first bad byte. Anything else that does not
//! check out, a bad frame followed by a good one, is corruption.

use crc32fast::Hasher;

use crate::store::purchaser::Attribution;

/// First byte of every frame.
const MAGIC: u8 = 0xD7;
/// Bytes before a frame's payload.
const HEADER: usize = 10;
/// No record is larger (a cancellation of a whole batch is the largest, a few KiB).
pub const MAX_PAYLOAD: usize = 1 << 20;

const KIND_SALE: u8 = 1;
const KIND_CANCEL: u8 = 2;
/// A sale to a known buyer: the fields of a sale, then buyer, key and remaining count.
const KIND_SALE_BY: u8 = 3;

/// One journaled fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A ticket sold from this instance's reserve while Redis could not record it.
    Sale {
        /// Event id.
        event: Box<str>,
        /// Ticket id (`<event>-<number>`).
        ticket: Vec<u8>,
        /// Purchase id (`<instance>.<generation>:<n>`).
        purchase: Vec<u8>,
        /// When it was sold, unix ms.
        at_ms: u64,
        /// The known buyer, its key and what it was told; `None`: anonymous.
        by: Option<Attribution>,
    },
    /// A purchase batch of unknown outcome, to be made void (`tickets` empty), or tickets of a
    /// batch whose buyers left, to be given back: journaled as it is queued, so a crash or a
    /// shutdown does not forget it.
    Cancel {
        /// Event id.
        event: Box<str>,
        /// Batch id.
        batch: Vec<u8>,
        /// Ticket ids to give back; empty: the whole batch.
        tickets: Vec<Vec<u8>>,
    },
}

impl Record {
    /// A sale of ticket `n` of event `e`, for the journal's tests.
    #[cfg(test)]
    pub(crate) fn test_sale(n: u64) -> Self {
        Record::Sale {
            event: "e".into(),
            ticket: format!("e-{n:06}").into_bytes(),
            purchase: format!("00ff00ff00ff00ff.3:{n}").into_bytes(),
            at_ms: 1_700_000_000_000 + n,
            by: None,
        }
    }

    /// Appends this record's frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[MAGIC, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let kind = match self {
            Record::Sale {
                event,
                ticket,
                purchase,
                at_ms,
                by,
            } => {
                field(out, event.as_bytes());
                field(out, ticket);
                field(out, purchase);
                out.extend_from_slice(&at_ms.to_le_bytes());
                match by {
                    None => KIND_SALE,
                    Some(by) => {
                        field(out, by.buyer.as_bytes());
                        field(out, by.key.as_bytes());
                        out.extend_from_slice(&by.remaining.to_le_bytes());
                        KIND_SALE_BY
                    }
                }
            }
            Record::Cancel {
                event,
                batch,
                tickets,
            } => {
                field(out, event.as_bytes());
                field(out, batch);
                out.extend_from_slice(&(tickets.len() as u64).to_le_bytes());
                for t in tickets {
                    field(out, t);
                }
                KIND_CANCEL
            }
        };
        let len = out.len() - start - HEADER;
        out[start + 1] = kind;
        out[start + 2..start + 6].copy_from_slice(&(len as u32).to_le_bytes());
        let crc = checksum(kind, &out[start + HEADER..]);
        out[start + 6..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    }

    fn decode(kind: u8, payload: &[u8]) -> Option<Self> {
        let mut r = Reader(payload);
        let record = match kind {
            KIND_SALE | KIND_SALE_BY => Record::Sale {
                event: std::str::from_utf8(r.field()?).ok()?.into(),
                ticket: r.field()?.to_vec(),
                purchase: r.field()?.to_vec(),
                at_ms: r.u64()?,
                by: if kind == KIND_SALE_BY {
                    Some(Attribution {
                        buyer: std::str::from_utf8(r.field()?).ok()?.into(),
                        key: std::str::from_utf8(r.field()?).ok()?.into(),
                        remaining: r.u64()?,
                    })
                } else {
                    None
                },
            },
            KIND_CANCEL => {
                let event = std::str::from_utf8(r.field()?).ok()?.into();
                let batch = r.field()?.to_vec();
                let n = r.u64()?;
                let mut tickets = Vec::new();
                for _ in 0..n {
                    tickets.push(r.field()?.to_vec());
                }
                Record::Cancel {
                    event,
                    batch,
                    tickets,
                }
            }
            _ => return None,
        };
        r.0.is_empty().then_some(record)
    }
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("journal fields are ids, far below 64 KiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

fn checksum(kind: u8, payload: &[u8]) -> u32 {
    let mut h = Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    h.finalize()
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn field(&mut self) -> Option<&'a [u8]> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        self.take(usize::from(len))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// The whole frame at the start of `buf`, if it checks out: the record and the frame's length.
/// The frame at the start of `buf`: `None` when there is no whole, checksummed frame there;
/// inside, `None` when the frame is whole but not understood.
fn frame(buf: &[u8]) -> Option<(Option<Record>, usize)> {
    if buf.len() < HEADER || buf[0] != MAGIC {
        return None;
    }
    let kind = buf[1];
    let len = u32::from_le_bytes(buf[2..6].try_into().ok()?) as usize;
    if len > MAX_PAYLOAD || buf.len() < HEADER + len {
        return None;
    }
    let crc = u32::from_le_bytes(buf[6..HEADER].try_into().ok()?);
    let payload = &buf[HEADER..HEADER + len];
    if checksum(kind, payload) != crc {
        return None;
    }
    Some((Record::decode(kind, payload), HEADER + len))
}

/// How a segment ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Every byte belongs to a whole frame.
    Clean,
    /// The bytes from this offset on hold no whole frame: a write cut short by a crash.
    Torn(usize),
    /// A bad frame at this offset is followed by a good one: not a crash, corruption.
    Corrupt(usize),
}

/// Reads every record of a segment. The records are those before the first bad frame.
pub fn decode_segment(buf: &[u8]) -> (Vec<Record>, End) {
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        match frame(&buf[pos..]) {
            Some((Some(record), len)) => {
                records.push(record);
                pos += len;
            }
            // Whole and checksummed, yet not understood: written by a newer ticketd (or
            // damaged with a matching checksum). Never a torn tail to cut off, which would
            // lose its sales: corruption, so start-up stops and says so.
            Some((None, _)) => return (records, End::Corrupt(pos)),
            None => {
                let later = (pos + 1..buf.len()).any(|p| frame(&buf[p..]).is_some());
                let end = if later {
                    End::Corrupt(pos)
                } else {
                    End::Torn(pos)
                };
                return (records, end);
            }
        }
    }
    (records, End::Clean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sale(n: u64) -> Record {
        Record::test_sale(n)
    }

    fn cancel() -> Record {
        Record::Cancel {
            event: "e".into(),
            batch: b"00ff00ff00ff00ff.3:77".to_vec(),
            tickets: vec![b"e-000001".to_vec(), b"e-000002".to_vec()],
        }
    }

    fn encoded(records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            r.encode(&mut out);
        }
        out
    }

    fn sale_to_a_buyer(n: u64) -> Record {
        let Record::Sale {
            event,
            ticket,
            purchase,
            at_ms,
            ..
        } = sale(n)
        else {
            unreachable!("a sale")
        };
        Record::Sale {
            event,
            ticket,
            purchase,
            at_ms,
            by: Some(Attribution {
                buyer: "alice".into(),
                key: "k-1".into(),
                remaining: 41,
            }),
        }
    }

    #[test]
    fn records_round_trip() {
        let records = vec![sale(1), cancel(), sale_to_a_buyer(3), sale(2)];
        let buf = encoded(&records);
        assert_eq!(decode_segment(&buf), (records, End::Clean));
        assert_eq!(decode_segment(&[]), (vec![], End::Clean));
    }

    #[test]
    fn a_flipped_bit_in_the_middle_is_corruption() {
        let buf = encoded(&[sale(1), sale(2), sale(3)]);
        let second = encoded(&[sale(1)]).len();
        let mut bad = buf.clone();
        bad[second + HEADER + 3] ^= 0x10;
        let (records, end) = decode_segment(&bad);
        assert_eq!(records, vec![sale(1)]);
        assert_eq!(end, End::Corrupt(second));
    }

    #[test]
    fn a_whole_frame_of_an_unknown_kind_at_the_end_is_corruption_not_a_torn_tail() {
        // What a newer ticketd may write: checksummed, of a kind this one does not know.
        let mut buf = encoded(&[sale(1)]);
        let at = buf.len();
        let payload = b"from the future";
        buf.extend_from_slice(&[MAGIC, 9]);
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&checksum(9, payload).to_le_bytes());
        buf.extend_from_slice(payload);
        assert_eq!(decode_segment(&buf), (vec![sale(1)], End::Corrupt(at)));
    }

    #[test]
    fn zeros_after_the_last_frame_are_a_torn_tail() {
        let mut buf = encoded(&[sale(1)]);
        let whole = buf.len();
        buf.extend_from_slice(&[0; 4096]);
        assert_eq!(decode_segment(&buf), (vec![sale(1)], End::Torn(whole)));
    }

    proptest! {
        /// Cutting the journal anywhere loses at most the frame that was cut, never misreads
        /// one, and is always told apart from corruption.
        #[test]
        fn any_cut_is_a_torn_tail(n in 1u64..20, cut in 0usize..2000) {
            let records: Vec<Record> = (0..n).map(sale).collect();
            let buf = encoded(&records);
            let cut = cut.min(buf.len());
            let (got, end) = decode_segment(&buf[..cut]);
            prop_assert_eq!(&got[..], &records[..got.len()]);
            let whole = encoded(&records[..got.len()]).len();
            if cut == whole {
                prop_assert_eq!(end, End::Clean);
            } else {
                prop_assert_eq!(end, End::Torn(whole));
            }
        }
    }
}
