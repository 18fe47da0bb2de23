use super::*;

fn entry() -> Entry {
    Entry {
        protocol: IPPROTO_UDP,
        orig: Tuple { src: ("10.244.0.5".parse().unwrap(), 40000), dst: ("10.96.0.10".parse().unwrap(), 53) },
        reply: Tuple { src: ("10.244.0.7".parse().unwrap(), 53), dst: ("10.244.0.5".parse().unwrap(), 40000) },
        zone: 0,
    }
}

/// A dump reply is the delete request's layout plus the reply tuple: build one and parse it back.
#[test]
fn entry_round_trip() {
    let e = entry();
    // An entry message as the kernel sends it: ctnetlink NEW with both tuples.
    let mut buf = Vec::new();
    header(&mut buf, 0, 0, 7, AF_INET);
    tuple_attrs(&mut buf, CTA_TUPLE_ORIG, e.protocol, &e.orig);
    tuple_attrs(&mut buf, CTA_TUPLE_REPLY, e.protocol, &e.reply);
    attr(&mut buf, 99, &[1, 2, 3]); // an attribute the parser does not know is skipped
    let mut two = finish(buf);
    let mut done = Vec::new();
    done.extend_from_slice(&16u32.to_ne_bytes());
    done.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    done.extend_from_slice(&[0; 10]);
    two.extend_from_slice(&done);
    assert_eq!(parse(&two).unwrap(), [Reply::Entry(e), Reply::Done]);
}

/// The delete request carries the original tuple, nested, with ports in network order.
#[test]
fn delete_request_layout() {
    let bytes = delete_request(&entry(), 1);
    assert_eq!(u32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize, bytes.len());
    assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), (1 << 8) | 2, "ctnetlink DELETE");
    assert_eq!(bytes[16], AF_INET);
    let parsed = parse_tuple(&bytes[24..]).expect("the nested tuple parses back");
    assert_eq!(parsed, (IPPROTO_UDP, entry().orig));
    assert!(bytes.windows(2).any(|w| w == 53u16.to_be_bytes()));
}

/// Errors and acks are told apart; truncated input is an error, not a panic.
#[test]
fn errors_and_truncation() {
    let mut err = Vec::new();
    err.extend_from_slice(&36u32.to_ne_bytes());
    err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    err.extend_from_slice(&[0; 10]);
    err.extend_from_slice(&(-2i32).to_ne_bytes());
    err.extend_from_slice(&[0; 16]);
    assert_eq!(parse(&err).unwrap(), [Reply::Error(2)]);
    err[16..20].copy_from_slice(&0i32.to_ne_bytes());
    assert_eq!(parse(&err).unwrap(), [Reply::Ack]);
    assert!(parse(&err[..20]).is_err());
}
