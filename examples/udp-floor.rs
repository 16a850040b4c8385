//! The I/O floor of `benches/load.sh`: a UDP responder that does the fast
//! path's socket work and no DNS work.
//!
//!     cargo run --release --example udp-floor -- 127.0.231.4:8600 [PAD_TO]
//!
//! One thread, one `SO_REUSEPORT` socket with a 4 MiB receive buffer,
//! `recvmmsg`/`sendmmsg` in batches of 32 with `MSG_WAITFORONE`, exactly as
//! `src/dns/fast.rs` does; each query goes back as its own response
//! (QR set, RCODE NXDOMAIN, the question and anything after it echoed).
//! With `PAD_TO`, a query without an additional record gets an OPT record
//! with an EDNS Padding option (RFC 7830) making its response that many
//! bytes long, so the floor sends as many bytes as the server it stands
//! beside (RFC 6891 has a server answer a query without OPT with none;
//! dnsperf does not mind, and this is a benchmark's responder, not a
//! server). No parsing, no cache, no allocation per datagram.
//!
//! What it costs per answered query in the same run as Knot is about the
//! least any server answering with these system calls can cost on that
//! machine: a CPU ratio to Knot below the floor's own cannot come from the
//! server's code.
//!
//! It is independent of the resolver's code on purpose, so that a change
//! there cannot move the floor. It answers until killed.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
use socket2::{Domain, Socket, Type};

/// Datagrams per system call, as in the fast path.
const BATCH: usize = 32;
/// The largest datagram taken, as in the fast path.
const MAX_QUERY: usize = 4096;
/// The receive buffer asked for, as in the fast path.
const RECEIVE_BUFFER: usize = 4 << 20;
/// RCODE NXDOMAIN.
const NXDOMAIN: u8 = 3;
/// An OPT record's fixed part (root owner, type, class, TTL, RDLENGTH)
/// and a Padding option's header.
const OPT_OVERHEAD: usize = 11 + 4;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(listen), pad, None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: udp-floor ADDRESS:PORT [PAD_TO]");
        return ExitCode::from(2);
    };
    let pad_to = match pad.map(|pad| pad.parse::<usize>()) {
        None => 0,
        Some(Ok(bytes)) if bytes <= 1232 => bytes,
        Some(_) => {
            eprintln!("udp-floor: PAD_TO must be a number of bytes up to 1232");
            return ExitCode::from(2);
        }
    };
    let address: SocketAddr = match listen.parse() {
        Ok(address) => address,
        Err(error) => {
            eprintln!("udp-floor: {listen:?} is not an address and port: {error}");
            return ExitCode::from(2);
        }
    };
    let socket = match bind(address) {
        Ok(socket) => socket,
        Err(error) => {
            eprintln!("udp-floor: cannot listen on {address}: {error}");
            return ExitCode::FAILURE;
        }
    };
    serve(&socket, pad_to)
}

fn bind(address: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(address), Type::DGRAM, None)?;
    socket.set_reuse_port(true)?;
    // Best effort, as in the fast path: the kernel caps it.
    let _ = socket.set_recv_buffer_size(RECEIVE_BUFFER);
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// Makes the first `length` bytes of `buffer`, a query, its response: QR
/// and RCODE NXDOMAIN set and, with no additional record yet and room,
/// an OPT record padding it to `pad_to` bytes. Returns the response's
/// length, or `None` for a datagram shorter than a DNS header.
fn respond_in_place(buffer: &mut [u8], length: usize, pad_to: usize) -> Option<usize> {
    if length < 12 || length > buffer.len() {
        return None;
    }
    buffer[2] |= 0x80;
    buffer[3] = (buffer[3] & 0xf0) | NXDOMAIN;
    let no_additional = buffer[10] == 0 && buffer[11] == 0;
    if !no_additional || pad_to < length + OPT_OVERHEAD || pad_to > buffer.len() {
        return Some(length);
    }
    let padding = pad_to - length - OPT_OVERHEAD;
    let [udp_high, udp_low] = 1232_u16.to_be_bytes();
    let [rdata_high, rdata_low] = u16::try_from(4 + padding).unwrap_or(0).to_be_bytes();
    let [pad_high, pad_low] = u16::try_from(padding).unwrap_or(0).to_be_bytes();
    let opt = [
        0, 0, 41, udp_high, udp_low, 0, 0, 0, 0, rdata_high, rdata_low, 0, 12, pad_high, pad_low,
    ];
    buffer[length..length + OPT_OVERHEAD].copy_from_slice(&opt);
    buffer[length + OPT_OVERHEAD..pad_to].fill(0);
    buffer[11] = 1;
    Some(pad_to)
}

fn serve(socket: &UdpSocket, pad_to: usize) -> ExitCode {
    let fd = socket.as_raw_fd();
    let mut receive = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut send = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut buffers = Box::new([[0u8; MAX_QUERY]; BATCH]);
    // Per buffer received: its length, and where its response goes.
    let mut lengths: Vec<usize> = Vec::with_capacity(BATCH);
    let mut destinations: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
    loop {
        lengths.clear();
        destinations.clear();
        {
            let mut slices = buffers.each_mut().map(|b| [IoSliceMut::new(&mut b[..])]);
            match nix::sys::socket::recvmmsg(
                fd,
                &mut receive,
                slices.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(messages) => {
                    for message in messages {
                        let whole = !message.flags.contains(MsgFlags::MSG_TRUNC);
                        lengths.push(if whole { message.bytes } else { 0 });
                        destinations.push(message.address);
                    }
                }
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(error) => {
                    eprintln!("udp-floor: receiving failed: {error}");
                    return ExitCode::FAILURE;
                }
            }
        }
        // A datagram too short or cut is not answered: length 0, no address.
        for (at, length) in lengths.iter_mut().enumerate() {
            match respond_in_place(&mut buffers[at], *length, pad_to) {
                Some(response) => *length = response,
                None => {
                    *length = 0;
                    destinations[at] = None;
                }
            }
        }
        let slices: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|at| {
            [IoSlice::new(
                &buffers[at][..lengths.get(at).copied().unwrap_or(0)],
            )]
        });
        let count = lengths.len();
        let mut from = 0;
        while from < count {
            if destinations[from].is_none() {
                from += 1;
                continue;
            }
            // Up to the next datagram not answered.
            let until = (from..count)
                .find(|&at| destinations[at].is_none())
                .unwrap_or(count);
            let none: [ControlMessage<'_>; 0] = [];
            match nix::sys::socket::sendmmsg(
                fd,
                &mut send,
                slices[from..until].iter(),
                &destinations[from..until],
                none,
                MsgFlags::empty(),
            ) {
                Ok(sent) => from += sent.count().max(1),
                Err(Errno::EINTR) => {}
                Err(_) => from += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::respond_in_place;

    /// ID 0xabcd, RD set, QDCOUNT 1, "a." A IN.
    const QUERY: [u8; 19] = [
        0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1,
    ];

    fn buffer() -> [u8; 4096] {
        let mut buffer = [0xee; 4096];
        buffer[..QUERY.len()].copy_from_slice(&QUERY);
        buffer
    }

    #[test]
    fn a_query_becomes_an_nxdomain_response_with_its_own_id_and_question() {
        let mut buffer = buffer();
        assert_eq!(respond_in_place(&mut buffer, QUERY.len(), 0), Some(19));
        assert_eq!(&buffer[..2], &[0xab, 0xcd]);
        assert_eq!(buffer[2], 0x81, "QR set, RD kept");
        assert_eq!(buffer[3], 0x03, "RCODE NXDOMAIN");
        assert_eq!(&buffer[4..19], &QUERY[4..]);
    }

    #[test]
    fn padding_adds_an_opt_record_with_a_padding_option_to_the_length_asked() {
        let mut buffer = buffer();
        assert_eq!(respond_in_place(&mut buffer, QUERY.len(), 120), Some(120));
        assert_eq!(&buffer[10..12], &[0, 1], "ARCOUNT 1");
        // Root owner, TYPE 41, class 1232, TTL 0, RDLENGTH 4 + 86.
        assert_eq!(&buffer[19..30], &[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 90]);
        // Option code 12 (Padding), length 86, zeros.
        assert_eq!(&buffer[30..34], &[0, 12, 0, 86]);
        assert!(buffer[34..120].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_query_with_an_additional_record_or_too_long_is_not_padded() {
        let mut with_opt = buffer();
        with_opt[11] = 1;
        assert_eq!(respond_in_place(&mut with_opt, QUERY.len(), 120), Some(19));
        let mut long = buffer();
        assert_eq!(respond_in_place(&mut long, QUERY.len(), 30), Some(19));
        assert_eq!(long[11], 0);
    }

    #[test]
    fn a_datagram_shorter_than_a_header_is_not_answered() {
        let mut short = [0u8; 4096];
        assert_eq!(respond_in_place(&mut short, 11, 120), None);
        assert!(short.iter().all(|&b| b == 0));
    }
}
