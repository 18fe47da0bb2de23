use std::collections::VecDeque;
use std::io;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_MULTIPART};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};

use super::*;
use crate::codec::{IpvsAttr, IpvsCmd, ServiceAttr};

const FAMILY: u16 = 0x20;

type Answer = Box<dyn FnMut(&Header) -> Vec<io::Result<Vec<u8>>>>;

/// A scripted kernel: answers each request datagram through `answer`, after resolving the family itself.
struct Fake {
    sent: Vec<Vec<u8>>,
    pending: VecDeque<io::Result<Vec<u8>>>,
    answer: Answer,
    family_errno: Option<i32>,
}

/// What the fake reads from a request.
#[derive(Debug)]
struct Header {
    message_type: u16,
    flags: u16,
    seq: u32,
    cmd: u8,
}

impl Transport for Fake {
    fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        self.sent.push(datagram.to_vec());
        let h = Header {
            message_type: u16::from_ne_bytes([datagram[4], datagram[5]]),
            flags: u16::from_ne_bytes([datagram[6], datagram[7]]),
            seq: u32::from_ne_bytes(datagram[8..12].try_into().unwrap()),
            cmd: datagram[16],
        };
        if h.message_type == netlink_packet_generic::constants::GENL_ID_CTRL {
            match self.family_errno {
                Some(errno) => self.pending.push_back(Ok(error(h.seq, -errno))),
                None => {
                    self.pending.push_back(Ok(ctrl_reply(h.seq)));
                    self.pending.push_back(Ok(error(h.seq, 0)));
                }
            }
        } else {
            let answers = (self.answer)(&h);
            self.pending.extend(answers);
        }
        Ok(())
    }

    fn recv(&mut self) -> io::Result<Vec<u8>> {
        self.pending.pop_front().unwrap_or_else(|| Err(io::Error::new(io::ErrorKind::WouldBlock, "nothing to receive")))
    }
}

fn fake(answer: impl FnMut(&Header) -> Vec<io::Result<Vec<u8>>> + 'static) -> Fake {
    Fake { sent: vec![], pending: VecDeque::new(), answer: Box::new(answer), family_errno: None }
}

fn nlmsg(message_type: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
    b.extend_from_slice(&message_type.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&1234u32.to_ne_bytes());
    b.extend_from_slice(payload);
    b
}

/// NLMSG_ERROR with this code (0 is an ack), capped: the payload holds only a request header.
fn error(seq: u32, code: i32) -> Vec<u8> {
    let mut payload = code.to_ne_bytes().to_vec();
    payload.extend_from_slice(&[0; 16]);
    nlmsg(2, 0x100, seq, &payload)
}

fn done(seq: u32, flags: u16) -> Vec<u8> {
    nlmsg(3, NLM_F_MULTIPART | flags, seq, &0i32.to_ne_bytes())
}

fn ctrl_reply(seq: u32) -> Vec<u8> {
    let mut genl = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::NewFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName("IPVS".into()), GenlCtrlAttrs::FamilyId(FAMILY)],
    });
    genl.finalize();
    let mut msg = NetlinkMessage::from(genl);
    msg.header.sequence_number = seq;
    msg.finalize();
    let mut b = vec![0; msg.buffer_len()];
    msg.serialize(&mut b);
    b
}

fn ipvs(seq: u32, flags: u16, msg: IpvsMessage) -> Vec<u8> {
    let mut b = request::Request { message: msg, kind: Kind::Ack }.to_bytes(FAMILY, seq);
    b[6..8].copy_from_slice(&flags.to_ne_bytes());
    b
}

fn service_entry(port: u16) -> IpvsMessage {
    IpvsMessage::new(
        IpvsCmd::NewService,
        vec![IpvsAttr::Service(Service::new(ServiceId::tcp("10.96.0.1".parse().unwrap(), port), "rr").to_attrs())],
    )
}

/// The client resolves the family first, then sends requests to it with NLM_F_REQUEST|NLM_F_ACK and
/// increasing sequence numbers, each laid out by the request builder.
#[test]
fn requests_go_to_the_resolved_family() {
    let mut c = Client::with_transport(fake(|h| vec![Ok(error(h.seq, 0))])).unwrap();
    assert_eq!(c.family_id(), FAMILY);
    let id = ServiceId::tcp("10.96.0.1".parse().unwrap(), 80);
    c.add_service(&Service::new(id, "rr")).unwrap();
    c.delete_service(&id).unwrap();
    let sent = &c.transport().sent;
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[1], request::new_service(&Service::new(id, "rr")).to_bytes(FAMILY, 2));
    assert_eq!(sent[2], request::del_service(&id).to_bytes(FAMILY, 3));
    assert_eq!(u16::from_ne_bytes([sent[2][6], sent[2][7]]), NLM_F_REQUEST | NLM_F_ACK);
}

/// Without an IPVS family the client says so instead of failing later.
#[test]
fn missing_family_is_its_own_error() {
    let mut f = fake(|_| vec![]);
    f.family_errno = Some(libc::ENOENT);
    let Err(e) = Client::with_transport(f) else { panic!("a client without the IPVS family") };
    assert!(matches!(e, Error::FamilyNotFound), "{e}");
    assert!(!e.is_retryable());
}

/// Kernel refusals keep their errno; ESRCH and ENOENT read as "not found", EEXIST as "exists", ENOMEM as
/// retryable, EINVAL as none of these.
#[test]
fn kernel_errors_are_classified() {
    for (errno, not_found, exists, retryable) in [
        (libc::ESRCH, true, false, false),
        (libc::ENOENT, true, false, false),
        (libc::EEXIST, false, true, false),
        (libc::ENOMEM, false, false, true),
        (libc::EINVAL, false, false, false),
    ] {
        let mut c = Client::with_transport(fake(move |h| vec![Ok(error(h.seq, -errno))])).unwrap();
        let e = c.delete_service(&ServiceId::fwmark(crate::Family::Ipv4, 1)).unwrap_err();
        assert_eq!(e.errno(), Some(errno));
        assert_eq!((e.is_not_found(), e.is_exists(), e.is_retryable()), (not_found, exists, retryable), "{e}");
        assert!(e.to_string().starts_with("the kernel refused IPVS_CMD_DEL_SERVICE"), "{e}");
    }
}

/// A dump spread over several datagrams, some holding several messages, is read to NLMSG_DONE; messages
/// of an older request (another sequence number) are skipped.
#[test]
fn dumps_are_read_to_done_skipping_stale_messages() {
    let mut c = Client::with_transport(fake(|h| {
        assert_eq!(h.flags, NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!((h.message_type, h.cmd), (FAMILY, 4));
        let multi = NLM_F_MULTIPART;
        let mut first = ipvs(h.seq - 1, 0, service_entry(1));
        first.extend(ipvs(h.seq, multi, service_entry(80)));
        first.extend(ipvs(h.seq, multi, service_entry(81)));
        vec![Ok(first), Ok(ipvs(h.seq, multi, service_entry(82))), Ok(done(h.seq, 0))]
    }))
    .unwrap();
    let ports: Vec<u16> = c
        .services()
        .unwrap()
        .iter()
        .map(|s| match s.id {
            ServiceId::Inet { port, .. } => port,
            _ => 0,
        })
        .collect();
    assert_eq!(ports, [80, 81, 82]);
}

/// A dump the kernel marks as interrupted is a retryable error, not a silently inconsistent list.
#[test]
fn interrupted_dumps_are_retryable_errors() {
    let mut c = Client::with_transport(fake(|h| {
        vec![Ok(ipvs(h.seq, NLM_F_MULTIPART | NLM_F_DUMP_INTR, service_entry(80))), Ok(done(h.seq, 0))]
    }))
    .unwrap();
    let e = c.services().unwrap_err();
    assert!(matches!(e, Error::DumpInterrupted { .. }) && e.is_retryable(), "{e}");
}

/// A failing socket is an I/O error naming the request, retryable; a garbled reply is a decode error.
#[test]
fn io_and_decode_failures() {
    let mut c = Client::with_transport(fake(|_| vec![Err(io::Error::from_raw_os_error(libc::ENOBUFS))])).unwrap();
    let e = c.flush().unwrap_err();
    assert!(matches!(e, Error::Io { .. }) && e.is_retryable(), "{e}");
    assert_eq!(e.errno(), Some(libc::ENOBUFS));

    let mut c = Client::with_transport(fake(|h| vec![Ok(nlmsg(FAMILY, 0, h.seq, &[14, 1, 0, 0, 8, 0]))])).unwrap();
    let e = c.info().unwrap_err();
    assert!(matches!(e, Error::Decode { .. }) && !e.is_retryable(), "{e}");
}

/// A reply without what was asked for is a reply error, not a panic.
#[test]
fn replies_missing_attributes_are_errors() {
    let mut c = Client::with_transport(fake(|h| {
        let empty = IpvsMessage::new(IpvsCmd::NewService, vec![IpvsAttr::Service(vec![ServiceAttr::AddressFamily(2)])]);
        vec![Ok(ipvs(h.seq, 0, empty)), Ok(error(h.seq, 0))]
    }))
    .unwrap();
    let e = c.service(&ServiceId::fwmark(crate::Family::Ipv4, 1)).unwrap_err();
    assert!(matches!(e, Error::Reply { .. }), "{e}");
}

/// An entry the kernel repeats within a dump (it does when another namespace's services change in the
/// middle) is returned once, where it first appeared, with its last copy.
#[test]
fn repeated_dump_entries_are_returned_once() {
    let mut c = Client::with_transport(fake(|h| {
        let multi = NLM_F_MULTIPART;
        let mut again = service_entry(80);
        let IpvsAttr::Service(attrs) = &mut again.attrs[0] else { unreachable!() };
        attrs.push(ServiceAttr::Timeout(7));
        vec![
            Ok(ipvs(h.seq, multi, service_entry(80))),
            Ok(ipvs(h.seq, multi, service_entry(81))),
            Ok(ipvs(h.seq, multi, again)),
            Ok(done(h.seq, 0)),
        ]
    }))
    .unwrap();
    let services = c.services().unwrap();
    let got: Vec<(String, u32)> = services.iter().map(|s| (s.id.to_string(), s.timeout)).collect();
    assert_eq!(got, [("TCP 10.96.0.1:80".to_string(), 7), ("TCP 10.96.0.1:81".to_string(), 0)]);
}
