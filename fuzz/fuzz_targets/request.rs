//! Any bytes as a DNS datagram (the UDP fast path: its cache, then the
//! answer logic) and as a TCP message: no panic, no hang, and a reply,
//! when there is one, that decodes and carries the request's ID.
#![no_main]

use std::sync::LazyLock;

use consul_failover_dns::dns::fuzzing::Target;
use libfuzzer_sys::fuzz_target;

static TARGET: LazyLock<Target> = LazyLock::new(Target::new);

fuzz_target!(|data: &[u8]| {
    for reply in [TARGET.udp(data), TARGET.tcp(data)].into_iter().flatten() {
        assert!(reply.len() >= 12, "a reply shorter than a header");
        assert_eq!(reply[..2], data[..2], "a reply with another ID");
        assert!(reply[2] & 0x80 != 0, "a reply without QR");
    }
});
