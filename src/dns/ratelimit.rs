//! `dns.rate_limit`: responses per second per client network over UDP
//! (Response Rate Limiting, as BIND's and Knot's), so the stub cannot be
//! used to flood an address forged as the source of queries.
//!
//! Clients are grouped by network (`/24` for IPv4, `/56` for IPv6, as
//! BIND's defaults), each with a token bucket of `rate_limit` tokens a
//! second and a burst of as many. A response over the limit is dropped,
//! except every `rate_limit_slip`-th one, which goes out truncated (TC, no
//! records): a real client then asks again over TCP, which is never
//! limited, while a forged source gets a reply no larger than the query.
//!
//! Each UDP fast-path thread keeps its own buckets (a client's datagrams
//! mostly reach one socket: SO_REUSEPORT picks it by address and port), in
//! two generations swapped every few seconds, so memory stays bounded
//! whatever sources a flood forges.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long a bucket not seen is kept (it is full again by then).
const FORGET_AFTER: Duration = Duration::from_secs(5);
/// Networks tracked per generation at most; past it, the generation is
/// swapped early.
const MAX_TRACKED: usize = 65_536;

/// What to do with one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Send it.
    Send,
    /// Send it truncated: TC, the question, no records.
    Slip,
    /// Send nothing.
    Drop,
}

/// A token bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Responses over the limit so far (for the slip).
    over: u64,
}

/// The buckets of one thread.
pub(crate) struct Limiter {
    recent: HashMap<IpAddr, Bucket>,
    older: HashMap<IpAddr, Bucket>,
    swapped: Instant,
}

impl Default for Limiter {
    fn default() -> Self {
        Self {
            recent: HashMap::new(),
            older: HashMap::new(),
            swapped: Instant::now(),
        }
    }
}

/// The network a client counts under.
fn network(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[7] = 0;
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
    }
}

impl Limiter {
    /// The verdict on one more response to `client` at `now`, with `rate`
    /// responses a second allowed (0: no limit) and every `slip`-th one
    /// over it sent truncated (0: none).
    pub(crate) fn verdict(
        &mut self,
        client: IpAddr,
        rate: u32,
        slip: u32,
        now: Instant,
    ) -> Verdict {
        if rate == 0 {
            return Verdict::Send;
        }
        if now.duration_since(self.swapped) >= FORGET_AFTER || self.recent.len() >= MAX_TRACKED {
            self.older = std::mem::take(&mut self.recent);
            self.swapped = now;
        }
        let key = network(client);
        let rate = f64::from(rate);
        let bucket = match self.recent.get_mut(&key) {
            Some(bucket) => bucket,
            None => {
                let bucket = self.older.remove(&key).unwrap_or(Bucket {
                    tokens: rate,
                    at: now,
                    over: 0,
                });
                self.recent.entry(key).or_insert(bucket)
            }
        };
        let earned = now.duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + earned).min(rate);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Verdict::Send;
        }
        bucket.over += 1;
        if slip > 0 && bucket.over % u64::from(slip) == 0 {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

/// `reply` cut to a truncated one for the slip: the header with TC set
/// and only the question counted, then the question (its bytes in
/// `reply` are the query's). `None` if the question cannot be found.
pub(crate) fn slipped(reply: &[u8]) -> Option<Vec<u8>> {
    if reply.len() < 12 || reply[4..6] != [0, 1] {
        return None;
    }
    let mut at = 12;
    loop {
        let length = *reply.get(at)?;
        match length {
            0 => break,
            l if l & 0xc0 == 0xc0 => {
                at += 1;
                break;
            }
            l if l & 0xc0 != 0 => return None,
            l => at += 1 + usize::from(l),
        }
    }
    let end = at + 1 + 4;
    let mut out = reply.get(..end)?.to_vec();
    out[2] |= 0x02;
    out[6..12].fill(0);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_gets_its_rate_then_drops_with_every_nth_slipped() {
        let mut limiter = Limiter::default();
        let start = Instant::now();
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let neighbour: IpAddr = "192.0.2.200".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        let verdicts: Vec<Verdict> = (0..16)
            .map(|i| {
                let ip = if i % 2 == 0 { client } else { neighbour };
                limiter.verdict(ip, 10, 3, start)
            })
            .collect();
        assert_eq!(&verdicts[..10], &[Verdict::Send; 10], "one /24, one bucket");
        assert_eq!(
            &verdicts[10..],
            &[
                Verdict::Drop,
                Verdict::Drop,
                Verdict::Slip,
                Verdict::Drop,
                Verdict::Drop,
                Verdict::Slip
            ]
        );
        assert_eq!(limiter.verdict(other, 10, 3, start), Verdict::Send);
        // A tenth of a second earns one more.
        let later = start + Duration::from_millis(100);
        assert_eq!(limiter.verdict(client, 10, 3, later), Verdict::Send);
        assert_eq!(limiter.verdict(client, 10, 0, later), Verdict::Drop);
        // Off: everything goes.
        assert_eq!(limiter.verdict(client, 0, 3, later), Verdict::Send);
        // Seen again long after: full again, whatever the swaps did.
        let much_later = start + FORGET_AFTER * 3;
        for _ in 0..10 {
            assert_eq!(limiter.verdict(client, 10, 3, much_later), Verdict::Send);
        }
    }

    #[test]
    fn forged_sources_keep_memory_bounded() {
        let mut limiter = Limiter::default();
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 * 3) {
            let ip = IpAddr::from((i << 8).to_be_bytes());
            limiter.verdict(ip, 5, 2, now);
        }
        assert!(limiter.recent.len() <= MAX_TRACKED);
        assert!(limiter.older.len() <= MAX_TRACKED);
    }

    #[test]
    fn the_slip_keeps_the_header_and_the_question_only() {
        let mut reply = vec![0x12, 0x34, 0x84, 0x00, 0, 1, 0, 2, 0, 1, 0, 1];
        reply.extend_from_slice(&[3, b'w', b'e', b'b', 0, 0, 1, 0, 1]);
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 10, 0, 0, 1]);
        let slip = slipped(&reply).unwrap();
        assert_eq!(slip.len(), 12 + 9);
        assert_eq!(&slip[..2], &[0x12, 0x34]);
        assert_eq!(slip[2], 0x86, "QR, AA and TC");
        assert_eq!(&slip[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert!(slipped(&reply[..15]).is_none());
        let mut no_question = reply.clone();
        no_question[5] = 0;
        assert!(slipped(&no_question).is_none());
    }
}
